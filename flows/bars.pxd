# Cython declarations for flows/bars.py (infra/core.py compiles it; the .py stays the source and
# runs as it is without the build). MinuteBar becomes an extension type whose fields are C values
# where their range allows (times, sequences and counts are bounded by schemas.polygon), so the
# trade loop in flows/book.py reads and writes them without boxing. open/high/low/close stay
# objects (None until a trade sets them) and volume a Python int (a sum of sizes has no bound).
cdef class MinuteBar:
    cdef public str symbol
    cdef public long long start
    cdef public object open, high, low, close
    cdef public long long open_t, open_q, close_t, close_q
    cdef public object volume
    cdef public double notional
    cdef public long long trades, revision
    cdef public bint final
    cdef public long long close_size
    cdef public object seen, hashes, arrived, encoded
