"""The ids of the trades a final minute already counted, compact: ~30 bytes each instead of ~150.

A bar's trades are de-duplicated by (symbol, exchange, trade id, TRF id). While a bar is open its
ids sit in an exact Python set (the hot path: a tuple and a set probe per trade). When a minute
first becomes final, the ids of all its bars leave their sets for two compact forms:

- `hashes`: one sorted int64 numpy array per minute, `hash(symbol) * K + hash(key)` (mod 2**64)
  with Python's own hash (SipHash-1-3 of the strings, under a secret key drawn per process), for
  the membership test of late trades (8 bytes per id);
- `exact`: the same keys, exact, as one msgpack blob per minute (~20 bytes per id), which is what
  recovery snapshots store, so a restarted flow (another hash key) rebuilds its `hashes` and the
  snapshot never depends on a hash.

A later trade for that minute that is in neither its bar's exact set (trades added after the
minute became final) nor `hashes` is new. A false duplicate would lose a good trade: it happens
only if a late trade's 64-bit id equals one of the N ids of its minute (all symbols of the
partition), probability about N / 2**64: 7e-15 for N = 128,000 (a whole US market's minute in one
partition), i.e. one lost trade in ~400,000 years at a million late trades a day. The hash key is
secret and new per process, so crafted trade ids cannot aim at collisions either.

>>> ids = MinuteIds.of([("AAPL", {(4, "52983525029461", None)}), ("MSFT", set())])
>>> ids.counted("AAPL", (4, "52983525029461", None)), ids.counted("MSFT", (4, "52983525029461", None))
(True, False)
>>> MinuteIds.restore(ids.exact).counted("AAPL", (4, "52983525029461", None)), len(ids)
(True, 1)
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from itertools import chain

import msgspec
import numpy as np

NO_IDS: frozenset = frozenset()  # a final bar's exact set until a late trade arrives (shared: no set per bar)
NO_HASHES: tuple[()] = ()  # a compacted bar's `MinuteBar.hashes` (shared; only open bars append to theirs)

Key = tuple[int, str, int | None]  # (exchange, trade id, TRF id), as an open bar's set holds it

_K = 0x9E3779B97F4A7C15  # odd: symbol * K is a bijection mod 2**64
_MASK = (1 << 64) - 1
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[tuple[str, list[tuple[int, str, int | None]]]])


def key_id(symbol: str, key: Key) -> int:
    """A trade's 64-bit id in this process, as a signed int64 (what `MinuteIds.hashes` holds)."""
    h = ((hash(symbol) & _MASK) * _K + (hash(key) & _MASK)) & _MASK
    return h - (1 << 64) if h >> 63 else h


class MinuteIds:
    """One final minute's trade ids: sorted 64-bit hashes to test, the exact keys to snapshot."""

    __slots__ = ("exact", "hashes")

    def __init__(self, hashes: np.ndarray, exact: bytes) -> None:
        self.hashes = hashes
        self.exact = exact

    @classmethod
    def of(cls, bars: Iterable[tuple[str, Collection[Key]]]) -> MinuteIds:
        """The ids of (symbol, exact keys) pairs, gathered and hashed in C: a Python loop per id
        would cost as much as the trade itself did."""
        bars = [(symbol, keys) for symbol, keys in bars if keys]
        return cls(_hashes(bars), _encoder.encode(bars))

    @classmethod
    def of_hashed(cls, bars: Iterable[tuple[str, Collection[Key], Sequence[int]]]) -> MinuteIds:
        """As `of`, with each bar's `hash()` of its keys already taken (`MinuteBar.hashes`, one per key,
        any order): the ids then come from those ints, never from the keys' objects scattered in memory."""
        bars = [bar for bar in bars if bar[1]]
        return cls(_ids(bars, chain.from_iterable(hashes for _, _, hashes in bars)), _encoder.encode([b[:2] for b in bars]))

    @classmethod
    def restore(cls, exact: bytes) -> MinuteIds:
        """From a snapshot's exact keys (raises msgspec.ValidationError on a blob of another shape)."""
        return cls(_hashes(_decoder.decode(exact)), exact)

    def counted(self, symbol: str, key: Key) -> bool:
        h = key_id(symbol, key)
        hashes = self.hashes
        i = int(hashes.searchsorted(h))
        return i < len(hashes) and int(hashes[i]) == h

    def __len__(self) -> int:
        return len(self.hashes)


def _hashes(bars: Sequence[tuple[str, Collection[Key]]]) -> np.ndarray:
    return _ids(bars, map(hash, chain.from_iterable(keys for _, keys in bars)))


def _ids(
    bars: Sequence[tuple[str, Collection[Key]] | tuple[str, Collection[Key], Sequence[int]]], key_hashes: Iterable[int]
) -> np.ndarray:
    """The sorted ids of `bars` (symbol, keys, ...) given `hash()` of every key, bar by bar."""
    n = len(bars)
    counts = np.fromiter(map(len, (bar[1] for bar in bars)), dtype=np.int64, count=n)
    total = int(counts.sum())
    keys = np.fromiter(key_hashes, dtype=np.int64, count=total)
    symbols = np.fromiter(map(hash, (bar[0] for bar in bars)), dtype=np.int64, count=n)
    with np.errstate(over="ignore"):
        ids = (np.repeat(symbols, counts).view(np.uint64) * np.uint64(_K) + keys.view(np.uint64)).view(np.int64)
    ids.sort()
    return ids
