"""Each symbol's last trade price and its change over the US/Eastern trading day: `tickstock.market.prices`.

Pure. The partition step tells it the close of every bar that changed (a bar's close is the
latest trade of its minute, by event time and sequence, whose conditions may set a close): the
newest one in event time is the symbol's last price. `take` returns one `Price` per symbol whose
last price changed since the last call, which the step calls once per LIVE_UPDATE_INTERVAL_S.

The session open is the first price of the session the flow saw (a bar's open when the bar that
brought the symbol into a new session has one). Memory: one small entry per symbol, at most
`max_symbols`, and symbols idle for long are forgotten (`forget_idle`).
"""

from __future__ import annotations

import msgspec

from schemas.prices import Price
from schemas.sessions import session_of

STATE_VERSION = 1


class _Last(msgspec.Struct, array_like=True, gc=False):
    t: int
    q: int
    price: float
    size: int
    day: str
    open: float


class LastPrices:
    """The last price per symbol of one partition."""

    def __init__(self, max_symbols: int = 100_000) -> None:
        self.max_symbols = max_symbols
        self.refused = 0  # new symbols not tracked: max_symbols reached
        self._last: dict[str, _Last] = {}
        self._changed: dict[str, None] = {}

    def observe(self, symbol: str, price: float, size: int, t: int, q: int, first: float | None = None) -> None:
        """A close (price, size, time, sequence) of `symbol`; `first`: its bar's open (a session's first price)."""
        last = self._last.get(symbol)
        if last is not None and (t < last.t or (t == last.t and q <= last.q)):
            return  # not newer in event time (a late trade, or the same close again)
        day = session_of(t).day
        if last is None:
            if len(self._last) >= self.max_symbols:
                self.refused += 1
                return
            self._last[symbol] = _Last(t, q, price, size, day, first if first is not None else price)
        else:
            if day != last.day:
                last.day, last.open = day, first if first is not None else price
            last.t, last.q, last.price, last.size = t, q, price, size
        self._changed[symbol] = None

    def take(self) -> list[Price]:
        """One price per symbol changed since the last call."""
        out = []
        for symbol in self._changed:
            last = self._last.get(symbol)
            if last is None:
                continue
            change = last.price - last.open
            out.append(Price(symbol=symbol, price=last.price, size=last.size, timestamp=last.t, session=last.day,
                             open=last.open, change=change, change_pct=100.0 * change / last.open))  # fmt: skip
        self._changed.clear()
        return out

    def forget_idle(self, before_ms: int) -> int:
        """Symbols whose last price is older than `before_ms` go; returns how many."""
        idle = [s for s, last in self._last.items() if last.t < before_ms]
        for symbol in idle:
            del self._last[symbol]
            self._changed.pop(symbol, None)
        return len(idle)

    @property
    def symbols(self) -> int:
        return len(self._last)

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode((STATE_VERSION, self.refused, self._last, list(self._changed)))

    @classmethod
    def restore(cls, snapshot: bytes, max_symbols: int = 100_000) -> LastPrices:
        try:
            version, refused, last, changed = msgspec.msgpack.decode(snapshot, type=tuple[int, int, dict[str, _Last], list[str]])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"unreadable last-price snapshot: {exc}") from exc
        if version != STATE_VERSION:
            raise ValueError(f"last-price snapshot version {version}; this flow restores {STATE_VERSION}")
        prices = cls(max_symbols)
        prices.refused, prices._last, prices._changed = refused, last, dict.fromkeys(changed)
        return prices
