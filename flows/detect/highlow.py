"""New session highs and lows, and N-session highs and lows, detected on trades as they arrive.

Per symbol it keeps the session's (US/Eastern trading day's) high and low and the extremes of
the previous sessions. A trade that updates high/low under the sale-condition rules (the bar
book decides) and sets a new high fires `session_high` when it clears the last reported high
by the price tier's minimum move and the side's cooldown (event time) has passed; it fires
`n_day_high` once per session when it clears the high of the previous `n_days` sessions. Lows
mirror highs. The first trade of a session only sets the extremes.

What a symbol's first session needs from before the flow saw it (that session's earlier
bars, the previous sessions' extremes) comes from the database through `resolve`; until then
its trades wait in order, so the events are the same however the input was batched.

>>> from flows.detect.settings import HighLowSettings
>>> x = SessionExtremes(HighLowSettings(n_days=0))
>>> t0 = 1_764_253_800_000                          # 2025-11-27 09:30 EST
>>> x.observe("AAPL", 190.0, t0)
>>> x.resolve({"AAPL": Reference(None, None, [])})
>>> x.observe("AAPL", 190.5, t0 + 2_000); x.observe("AAPL", 190.52, t0 + 2_500)
>>> [(e.type, e.price, e.previous) for e in x.take()]
[('session_high', 190.5, 190.0)]
"""

from __future__ import annotations

from operator import attrgetter

import msgspec

from flows.detect.settings import HighLowSettings
from schemas.events import HighLowEvent, ParamValue, stable_id
from schemas.sessions import Reference, session_of

SNAPSHOT_VERSION = 2  # 2: each symbol's last trade time (for forgetting idle symbols)
_TICK = 1e-9  # binary floating point: 50.05 - 50.0 is 0.0499999..., which must count as $0.05


class _Symbol:
    __slots__ = ("day", "start", "end", "high", "low", "reported_high", "reported_low",
                 "high_at", "low_at", "prior", "n_day_high_done", "n_day_low_done", "last")  # fmt: skip

    def __init__(self, day: str, start: int, end: int, prior: list[tuple[str, float, float]]) -> None:
        self.day, self.start, self.end = day, start, end
        self.last = start  # event time of the newest trade seen
        self.high: float | None = None
        self.low: float | None = None
        self.reported_high = self.reported_low = 0.0
        self.high_at = self.low_at = -(1 << 62)
        self.prior = prior  # previous sessions (day, high, low), newest first, at most n_days
        self.n_day_high_done = self.n_day_low_done = False


_row_of = attrgetter(*_Symbol.__slots__)  # a symbol's snapshot row, every field in one call


class SessionExtremes:
    """Session and N-session highs/lows of the symbols of one partition."""

    def __init__(self, cfg: HighLowSettings) -> None:
        self.cfg = cfg
        self._cooldown_ms = int(cfg.cooldown_s * 1000)
        self._tiers = [(t.min_price, t.min_move, t.min_move_pct / 100) for t in reversed(cfg.tiers)]
        self._symbols: dict[str, _Symbol] = {}
        self._waiting: dict[str, int] = {}  # symbol -> time of its first waiting trade
        self._queue: list[tuple[str, float, int]] = []  # waiting trades, in arrival order
        self._events: list[HighLowEvent] = []
        self._params: dict[str, ParamValue] = {"cooldown_s": cfg.cooldown_s, "n_days": cfg.n_days}

    # ---- the hot path ------------------------------------------------------------------

    def observe(self, symbol: str, price: float, t: int) -> None:
        """One new trade that may set high/low (duplicates and volume-only trades never get here)."""
        if self._waiting and symbol in self._waiting:
            self._queue.append((symbol, price, t))
            return
        s = self._symbols.get(symbol)
        if s is None:
            self._waiting[symbol] = t
            self._queue.append((symbol, price, t))
            return
        if t >= s.end:
            s = self._roll(symbol, s, t)
        elif t < s.start:
            return  # a late trade of an earlier session: that session is over
        if t > s.last:
            s.last = t
        high = s.high
        if high is None:
            s.high = s.low = s.reported_high = s.reported_low = price
            return
        if price > high:
            s.high = price
            self._broke_high(symbol, s, price, t)
        elif price < s.low:  # type: ignore[operator]  # set together with high: not None here
            s.low = price
            self._broke_low(symbol, s, price, t)

    def _broke_high(self, symbol: str, s: _Symbol, price: float, t: int) -> None:
        move = self.min_move(s.reported_high)
        if price - s.reported_high >= move - _TICK and t - s.high_at >= self._cooldown_ms:
            self._emit("session_high", symbol, s, price, s.reported_high, t, move, "up")
            s.reported_high, s.high_at = price, t
        if not s.n_day_high_done and len(s.prior) >= self.cfg.n_days > 0:
            prior = max(h for _, h, _ in s.prior)
            if price > prior:
                self._emit("n_day_high", symbol, s, price, prior, t, move, "up")
                s.n_day_high_done = True

    def _broke_low(self, symbol: str, s: _Symbol, price: float, t: int) -> None:
        move = self.min_move(s.reported_low)
        if s.reported_low - price >= move - _TICK and t - s.low_at >= self._cooldown_ms:
            self._emit("session_low", symbol, s, price, s.reported_low, t, move, "down")
            s.reported_low, s.low_at = price, t
        if not s.n_day_low_done and len(s.prior) >= self.cfg.n_days > 0:
            prior = min(low for _, _, low in s.prior)
            if price < prior:
                self._emit("n_day_low", symbol, s, price, prior, t, move, "down")
                s.n_day_low_done = True

    def min_move(self, price: float) -> float:
        """The tier's minimum move at `price`: the smaller of its dollar and percent minimums.

        >>> from flows.detect.settings import HighLowSettings
        >>> x = SessionExtremes(HighLowSettings())
        >>> x.min_move(250.0), x.min_move(50.0), round(x.min_move(2.0), 4)
        (0.1, 0.05, 0.01)
        """
        for floor, dollars, share in self._tiers:
            if price >= floor:
                return min(dollars, share * price)
        return 0.0

    def _emit(self, kind: str, symbol: str, s: _Symbol, price: float, previous: float, t: int, move: float, way: str) -> None:
        confidence = max(0.5, min(1.0, 0.5 * abs(price - previous) / move)) if move else 1.0
        self._events.append(
            HighLowEvent(
                id=stable_id("highlow", symbol, kind, t, price),
                type=kind,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                symbol=symbol,
                timestamp=t,
                confidence=round(confidence, 4),
                direction=way,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                params=self._params | {"min_move": move},
                price=price,
                previous=previous,
                session=s.day,
            )
        )

    def _roll(self, symbol: str, s: _Symbol, t: int) -> _Symbol:
        """A new session begins: the finished one joins the previous sessions."""
        prior = s.prior
        if s.high is not None:
            prior = ([(s.day, s.high, s.low if s.low is not None else s.high), *prior])[: self.cfg.n_days]
        day, start, end = session_of(t)
        fresh = self._symbols[symbol] = _Symbol(day, start, end, prior)
        return fresh

    # ---- references ----------------------------------------------------------------------

    def waiting(self) -> dict[str, int]:
        """Symbols whose trades wait for a `Reference`, with the time of the first one waiting."""
        return dict(self._waiting)

    def resolve(self, references: dict[str, Reference]) -> None:
        """Start the waiting symbols' sessions from their references, then apply their trades in order."""
        for symbol, first in self._waiting.items():
            ref = references[symbol]
            day, start, end = session_of(first)
            s = self._symbols[symbol] = _Symbol(day, start, end, list(ref.sessions[: self.cfg.n_days]))
            if ref.today_high is not None:
                s.high = s.reported_high = ref.today_high
                s.low = s.reported_low = ref.today_low if ref.today_low is not None else ref.today_high
        queue, self._queue, self._waiting = self._queue, [], {}
        for trade in queue:
            self.observe(*trade)

    def forget_idle(self, before_ms: int) -> int:
        """Drop the state of symbols whose newest trade is older than `before_ms` (event time).

        Bounds memory under a flood of distinct symbols. A forgotten symbol that trades again
        waits for its references like a new one, and gets them from the database, which by
        then holds its bars (callers keep `before_ms` well behind the allowed lateness).
        """
        idle = [symbol for symbol, s in self._symbols.items() if s.last < before_ms]
        for symbol in idle:
            del self._symbols[symbol]
        return len(idle)

    @property
    def symbols(self) -> int:
        """Symbols with state here (for the flow's health and metrics)."""
        return len(self._symbols)

    def take(self) -> list[HighLowEvent]:
        events, self._events = self._events, []
        return events

    # ---- recovery ------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        if self._waiting:
            raise RuntimeError("snapshot with trades still waiting for their references")
        return msgspec.msgpack.encode((SNAPSHOT_VERSION, {k: _row_of(s) for k, s in self._symbols.items()}))

    @classmethod
    def restore(cls, raw: bytes, cfg: HighLowSettings) -> SessionExtremes:
        version, rows = msgspec.msgpack.decode(raw)
        if version not in (1, SNAPSHOT_VERSION):
            raise ValueError(f"session extremes snapshot version {version}, expected {SNAPSHOT_VERSION}")
        extremes = cls(cfg)
        for symbol, row in rows.items():
            if version == 1:
                row.append(max(row[1], row[7], row[8]))  # last: the newest time it knew of
            s = _Symbol.__new__(_Symbol)
            for name, value in zip(_Symbol.__slots__, row, strict=True):
                setattr(s, name, value)
            s.prior = [(p[0], p[1], p[2]) for p in s.prior]
            extremes._symbols[symbol] = s
        return extremes
