"""Bar arithmetic: one symbol's 1-minute OHLCV bar, built from trades or per-second aggregates.

Pure and order-independent: open/close are chosen by (event time, sequence), never by
arrival order, so out-of-order trades land where they belong.

>>> bar = MinuteBar("AAPL", 1_700_000_040_000)
>>> bar.add_trade(10.0, 100, 1_700_000_041_000, 2, ALL)   # True: a new high (and low) of the bar
True
>>> bar.add_trade(9.5, 50, 1_700_000_040_500, 1, ALL)     # earlier, arrives later
True
>>> bar.add_trade(9.8, 10, 1_700_000_042_000, 3, ALL)     # inside the range so far
False
>>> (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades)
(9.5, 10.0, 9.5, 9.8, 160, 3)
"""

from __future__ import annotations

import msgspec

from flows.snapshots import array_header
from schemas.bars import Bar
from schemas.conditions import ALL, HIGH_LOW, OPEN_CLOSE, VOLUME
from schemas.polygon import SecondAgg

MINUTE_MS = 60_000
_encode = msgspec.msgpack.Encoder().encode
NOTHING_ENCODED: tuple[int, bytes] = (0, b"")  # `MinuteBar.encoded` of a bar none of whose ids were written

__all__ = ["ALL", "MINUTE_MS", "NOTHING_ENCODED", "MinuteBar"]


MAX_TRADES_PER_SECOND = 1 << 20
"""The most trades one per-second aggregate may add: 60 seconds of it stay far below the bar's
INTEGER `trades` column, whatever average size a feed claims (1e-300 would otherwise add 1e300)."""


def estimated_trades(agg: SecondAgg) -> int:
    """Trades in a per-second aggregate, from its volume and average size (`z`).

    No trade has less than one share, so the estimate never exceeds the volume; an absent, zero or
    negative average size gives no estimate.

    >>> from schemas.polygon import SecondAgg
    >>> a = dict(symbol="X", volume=300, open=1.0, close=1.0, high=1.0, low=1.0, start=0, end=1000)
    >>> estimated_trades(SecondAgg(**a, average_size=100.0)), estimated_trades(SecondAgg(**a, average_size=1e-300))
    (3, 300)
    >>> estimated_trades(SecondAgg(**a)), estimated_trades(SecondAgg(**a, average_size=-5.0))
    (0, 0)
    """
    size = agg.average_size
    if size is None or not size > 0:
        return 0
    return round(min(agg.volume / size, agg.volume, MAX_TRADES_PER_SECOND))


class MinuteBar:
    """Accumulates one bucket. `seen` holds the ids of what it already counted.

    `hashes` holds `hash()` of each key added to `seen` while the bar's minute is open, taken in the
    trade loop while the key is in the CPU's cache: compacting a minute's ids when it becomes final
    (`flows.trade_ids.MinuteIds.of_hashed`) then reads these ints instead of chasing every key's
    tuple and string through memory again, which cost more than decoding the trade had. Process
    specific, so never in a snapshot (`to_row`); `from_row` recomputes it.

    `arrived` holds the same keys in the order they came, and `encoded` the msgpack encoding of the
    first of them as the last snapshot wrote it: an open bar only ever gains ids, so its snapshot
    row (`snapshot_row`) encodes just the ids since. Every epoch encoded every open bar's ids anew
    before, a minute's worth at its end (~35 ms a partition of 1,000 symbols on a 2-core EPYC), in
    the flow's one thread, where an epoch that lands on a minute boundary holds the close.
    """

    __slots__ = (
        "symbol", "start", "open", "high", "low", "close",
        "open_t", "open_q", "close_t", "close_q",
        "volume", "notional", "trades", "revision", "final", "close_size", "seen", "hashes", "arrived", "encoded",
    )  # fmt: skip
    _ROW = __slots__[:-3]  # what a snapshot row holds

    def __init__(self, symbol: str, start: int) -> None:
        self.symbol = symbol
        self.start = start
        self.open: float | None = None
        self.high: float | None = None
        self.low: float | None = None
        self.close: float | None = None
        self.open_t = self.open_q = self.close_t = self.close_q = 0
        self.volume = 0
        self.notional = 0.0
        self.trades = 0
        self.revision = 0
        self.final = False
        self.close_size = 0  # size of the trade that set `close` (the last price, schemas.prices)
        self.seen: set | frozenset = set()  # exact ids; flows.trade_ids.NO_IDS once final and compacted
        self.hashes: list[int] | tuple[()] = []  # hash() of each key in `seen`; trade_ids.NO_HASHES once compacted
        self.arrived: list | tuple[()] = []  # the keys of `seen` in arrival order; NO_HASHES once compacted
        self.encoded = NOTHING_ENCODED  # (n, msgpack of the first n of `arrived`, without the array's header)

    def add_trade(self, price: float, size: int, t: int, q: int, mask: int) -> bool:
        """Apply one trade with the fields its conditions allow (`mask`).

        Returns whether it set a new high or low of the bar: only such a trade can be a new
        high or low of anything longer (the session), which spares the detectors the rest.
        """
        extreme = False
        if mask & HIGH_LOW:
            high = self.high
            if high is None:
                self.high = self.low = price
                extreme = True
            elif price > high:
                self.high = price
                extreme = True
            elif price < self.low:  # type: ignore[operator]  # set together with high: not None here
                self.low = price
                extreme = True
        if mask & OPEN_CLOSE:
            if self.open is None:
                self.open = self.close = price
                self.open_t = self.close_t = t
                self.open_q = self.close_q = q
                self.close_size = size
            else:
                if t < self.open_t or (t == self.open_t and q < self.open_q):
                    self.open, self.open_t, self.open_q = price, t, q
                if t > self.close_t or (t == self.close_t and q >= self.close_q):
                    self.close, self.close_t, self.close_q, self.close_size = price, t, q, size
        if mask & VOLUME:
            self.volume += size
            self.notional += price * size
            self.trades += 1
        return extreme

    def add_second(self, agg: SecondAgg) -> None:
        """Fold a per-second aggregate in (for feeds that carry `A` but not trades)."""
        s = agg.start
        if self.high is None:
            self.high, self.low = agg.high, agg.low
        else:
            if agg.high > self.high:
                self.high = agg.high
            if agg.low < self.low:  # type: ignore[operator]  # set together with high: not None here
                self.low = agg.low
        if self.open is None or s < self.open_t:
            self.open, self.open_t = agg.open, s
        if self.close is None or s >= self.close_t:
            self.close, self.close_t, self.close_size = agg.close, s, agg.volume  # the second's volume stands in
        self.volume += agg.volume
        self.notional += (agg.vwap if agg.vwap is not None else agg.close) * agg.volume
        self.trades += estimated_trades(agg)

    @property
    def vwap(self) -> float | None:
        return self.notional / self.volume if self.volume else None

    def record(self, status: str) -> Bar:
        """The bar as the record the sinks publish."""
        return Bar(
            symbol=self.symbol,
            timestamp=self.start,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=self.volume,
            vwap=self.vwap,
            trades=self.trades,
            revision=self.revision,
            status=status,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
        )

    def to_row(self) -> tuple:
        """Every field as a plain tuple, for compact recovery snapshots."""
        return (
            self.symbol, self.start, self.open, self.high, self.low, self.close,
            self.open_t, self.open_q, self.close_t, self.close_q,
            self.volume, self.notional, self.trades, self.revision, self.final, self.close_size, self.seen,
        )  # fmt: skip

    def snapshot_row(self) -> bytes:
        """`to_row` as msgpack, its ids in arrival order, encoding only the ids added since the last call.

        A bar whose ids did not all come through the trade loop (per-second aggregates, late trades
        of a final bar) has its set encoded whole, as `to_row` holds it.
        """
        seen, arrived = self.seen, self.arrived
        if len(arrived) != len(seen):
            return _encode(self.to_row())
        n, body = self.encoded
        if len(arrived) > n:
            added = arrived[n:]
            body += _encode(added)[len(array_header(len(added))) :]
            self.encoded = (len(arrived), body)
        return _ROW_HEAD + _encode(self.to_row()[:-1])[_FIELDS_HEAD:] + array_header(len(arrived)) + body

    @classmethod
    def from_row(cls, row: list) -> MinuteBar:
        bar = cls.__new__(cls)
        if len(row) == len(cls._ROW) - 1:  # written before `close_size`: unknown, 0
            row = [*row[:-1], 0, row[-1]]
        for name, value in zip(cls._ROW, row, strict=True):
            setattr(bar, name, value)
        bar.seen = {tuple(key) if isinstance(key, list) else key for key in row[-1]}
        bar.hashes = list(map(hash, bar.seen))
        bar.arrived = list(bar.seen)
        bar.encoded = NOTHING_ENCODED
        return bar


_ROW_HEAD = array_header(len(MinuteBar._ROW))  # a snapshot row: its fields, the ids last
_FIELDS_HEAD = len(array_header(len(MinuteBar._ROW) - 1))  # the header `snapshot_row` takes off the fields
