"""The bar book: every open and recently-final bar of one Kafka partition, with its watermark.

One book per partition, so a whole consumed batch is handled in one call (the flow's
throughput depends on this: per-event operator overhead would cost more than the bar
arithmetic itself).

Time is event time. The watermark is the newest event time seen in the partition (or,
when the partition is idle, advanced by wall-clock time, see `advance`). Given the same
messages in the same order, a book emits the same bars with the same revisions,
however the messages were batched; that is what makes restarts reproducible.

- A bar becomes final once the watermark passes its minute's end plus `close_delay_ms`.
- A trade for a final bar within `lateness_ms` of the minute's end revises it
  (`revision` + 1 per trade applied); one later than that is rejected as too late.
- A trade seen before (same symbol, exchange, trade id, TRF id) is counted once.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import msgspec

from flows.bars import MINUTE_MS, MinuteBar
from flows.conditions import ALL, ConditionRules, UnknownCondition
from schemas.bars import Bar
from schemas.polygon import MinuteAgg, Quote, SecondAgg, Trade

NEVER = 1 << 62
# Polygon tickers: BRK.A, BF.B, TEST/WS, ... Checked once per new bar, not per trade.
_valid_symbol = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-/:]{0,19}").fullmatch
SNAPSHOT_VERSION = 2

# Decoding into a union makes msgspec insist on the `ev` tag (a bare struct would not);
# the second member is there for that alone and is rejected below.
_trade_decoder = msgspec.json.Decoder(Trade | Quote)
_second_decoder = msgspec.json.Decoder(SecondAgg | MinuteAgg)
_DecodeErrors = (msgspec.ValidationError, msgspec.DecodeError)
_snapshot_encoder = msgspec.msgpack.Encoder()


class Reject(msgspec.Struct, frozen=True):
    """An input the book refused: `index` is its position in the batch given to `apply`."""

    index: int
    kind: str  # "malformed" | "too_late" | "unknown_condition"
    reason: str


class Counts(msgspec.Struct):
    """What the book did with its input, for metrics and tests."""

    events: int = 0
    duplicates: int = 0
    revisions: int = 0
    ignored: int = 0  # valid trades whose conditions update no bar field
    malformed: int = 0
    too_late: int = 0
    unknown_condition: int = 0
    bars_final: int = 0


class BarBook:
    """Builds 1-minute bars for the symbols of one partition."""

    def __init__(
        self,
        rules: ConditionRules,
        *,
        close_delay_ms: int = 2_000,
        lateness_ms: int = 900_000,
        source: str = "trades",
        on_trade: Callable[[str, float, int], None] | None = None,
    ) -> None:
        if source not in ("trades", "second_aggs"):
            raise ValueError(f"unknown bar source {source!r}")
        self.rules = rules
        self.close_delay_ms = close_delay_ms
        self.lateness_ms = lateness_ms
        self.source = source
        self.on_trade = on_trade  # told (symbol, price, time) of each new trade that set a new bar high/low
        self.watermark = 0
        self.counts = Counts()
        self._bars: dict[tuple[str, int], MinuteBar] = {}
        self._open: dict[int, list[MinuteBar]] = {}  # minute start -> bars not yet final
        self._final: dict[int, list[MinuteBar]] = {}  # minute start -> final bars still revisable
        self._next_close = NEVER  # watermark at which the oldest open minute closes
        self._next_expire = NEVER  # watermark at which the oldest final minute stops being revisable
        self._current: dict[str, MinuteBar] = {}  # each symbol's newest bar, the usual target
        self._live: dict[MinuteBar, None] = {}  # open bars changed since the last live update

    # ---- input -------------------------------------------------------------------------

    def apply(self, values: list[bytes]) -> tuple[list[Bar], list[Reject]]:
        """Apply a batch of raw events (wire JSON) in order.

        Returns the bars that became final or were revised by this batch, in the order that
        happened (a revision per late trade applied), and the inputs refused, with the reason.
        The order depends on the messages alone, not on how they were batched, so what is
        computed downstream from a symbol's bars (detection) is the same after a restart.
        """
        if self.source == "trades":
            return self._apply_trades(values)
        return self._apply_seconds(values)

    def _apply_trades(self, values: list[bytes]) -> tuple[list[Bar], list[Reject]]:
        # The hot loop: locals instead of attribute lookups, and the symbol's current bar
        # tried before building a (symbol, minute) key. Keep it lean; the rules it follows are
        # spelled out in the module docstring and tested in tests/test_book.py.
        finals: list[Bar] = []
        rejects: list[Reject] = []
        decode = _trade_decoder.decode
        known = self.rules.known.get
        bars = self._bars
        current = self._current
        live = self._live
        lateness = MINUTE_MS + self.lateness_ms
        counts = self.counts
        on_trade = self.on_trade
        watermark = self.watermark
        next_tick = min(self._next_close, self._next_expire)
        for index, raw in enumerate(values):
            try:
                trade = decode(raw)
            except _DecodeErrors as exc:
                rejects.append(Reject(index, "malformed", f"invalid trade event: {exc}"))
                continue
            if trade.__class__ is not Trade:
                rejects.append(Reject(index, "malformed", "a quote (Q) where a trade (T) was expected"))
                continue
            t = trade.timestamp
            start = t - t % MINUTE_MS
            if start + lateness < watermark:
                rejects.append(Reject(index, "too_late", _too_late(t, start, watermark, self.lateness_ms)))
                continue
            conditions = trade.conditions
            if not conditions:
                mask = ALL
            else:
                mask = known(tuple(conditions))  # the combinations met so far, without a call
                if mask is None:
                    try:
                        mask = self.rules.mask(conditions)
                    except UnknownCondition as exc:
                        rejects.append(Reject(index, "unknown_condition", str(exc)))
                        continue
            if mask:
                symbol = trade.symbol
                bar = current.get(symbol)
                if bar is None or bar.start != start:
                    bar = bars.get((symbol, start))
                    if bar is None:
                        if not _valid_symbol(symbol):
                            rejects.append(Reject(index, "malformed", f"invalid symbol {symbol!r}"))
                            continue
                        bar = self._new_bar(symbol, start)
                        next_tick = min(self._next_close, self._next_expire)
                trade_key = (trade.exchange, trade.trade_id, trade.trf_id)
                seen = bar.seen
                if trade_key in seen:
                    counts.duplicates += 1
                else:
                    seen.add(trade_key)
                    if bar.add_trade(trade.price, trade.size, t, trade.sequence, mask) and on_trade is not None:
                        on_trade(symbol, trade.price, t)
                    if bar.final:
                        bar.revision += 1
                        counts.revisions += 1
                        finals.append(bar.record("final"))
                    else:
                        live[bar] = None
            else:
                counts.ignored += 1
            if t > watermark:
                watermark = t
            if watermark >= next_tick:
                finals.extend(self.advance(watermark))
                next_tick = min(self._next_close, self._next_expire)
        self.watermark = watermark
        counts.events += len(values)
        for r in rejects:
            setattr(counts, r.kind, getattr(counts, r.kind) + 1)
        return finals, rejects

    def _apply_seconds(self, values: list[bytes]) -> tuple[list[Bar], list[Reject]]:
        finals: list[Bar] = []
        rejects: list[Reject] = []
        for index, raw in enumerate(values):
            try:
                agg = _second_decoder.decode(raw)
            except _DecodeErrors as exc:
                rejects.append(Reject(index, "malformed", f"invalid per-second aggregate: {exc}"))
                self.counts.malformed += 1
                continue
            if agg.__class__ is not SecondAgg:
                rejects.append(Reject(index, "malformed", "a minute aggregate (AM) where A was expected"))
                self.counts.malformed += 1
                continue
            start = agg.start - agg.start % MINUTE_MS
            if start + MINUTE_MS + self.lateness_ms < self.watermark:
                rejects.append(
                    Reject(index, "too_late", _too_late(agg.start, start, self.watermark, self.lateness_ms))
                )
                self.counts.too_late += 1
                continue
            bar = self._bars.get((agg.symbol, start))
            if bar is None:
                if not _valid_symbol(agg.symbol):
                    rejects.append(Reject(index, "malformed", f"invalid symbol {agg.symbol!r}"))
                    self.counts.malformed += 1
                    continue
                bar = self._new_bar(agg.symbol, start)
            if agg.start in bar.seen:
                self.counts.duplicates += 1
            else:
                bar.seen.add(agg.start)
                bar.add_second(agg)
                if self.on_trade is not None:  # per-second aggregates stand in for trades
                    self.on_trade(agg.symbol, agg.high, agg.start)
                    self.on_trade(agg.symbol, agg.low, agg.start)
                if bar.final:
                    bar.revision += 1
                    self.counts.revisions += 1
                    finals.append(bar.record("final"))
                else:
                    self._live[bar] = None
            finals.extend(self.advance(agg.end - 1))
        self.counts.events += len(values)
        return finals, rejects

    # ---- time --------------------------------------------------------------------------

    def advance(self, watermark: int) -> list[Bar]:
        """Move the watermark forward (never back); returns the bars that became final."""
        finals: list[Bar] = []
        if watermark > self.watermark:
            self.watermark = watermark
        if self.watermark >= self._next_close:
            finals = self._close()
        if self.watermark >= self._next_expire:
            self._expire()
        return finals

    def close_all(self) -> list[Bar]:
        """Finalise every open bar now (end of a finite input)."""
        if not self._open:
            return []
        latest = max(self._open)
        return self.advance(latest + MINUTE_MS + self.close_delay_ms)

    def _new_bar(self, symbol: str, start: int) -> MinuteBar:
        bar = self._bars[(symbol, start)] = MinuteBar(symbol, start)
        latest = self._current.get(symbol)
        if latest is None or latest.start < start:
            self._current[symbol] = bar
        minute = self._open.get(start)
        if minute is None:
            self._open[start] = [bar]
            closes_at = start + MINUTE_MS + self.close_delay_ms
            if closes_at < self._next_close:
                self._next_close = closes_at
        else:
            minute.append(bar)
        return bar

    def _close(self) -> list[Bar]:
        finals: list[Bar] = []
        cutoff = self.watermark - MINUTE_MS - self.close_delay_ms
        for start in sorted(s for s in self._open if s <= cutoff):
            closing = self._open.pop(start)
            for bar in closing:
                bar.final = True
                self._live.pop(bar, None)
                finals.append(bar.record("final"))
            self._final.setdefault(start, []).extend(closing)
            self._next_expire = min(self._next_expire, start + MINUTE_MS + self.lateness_ms + 1)
        self.counts.bars_final += len(finals)
        self._next_close = min(self._open, default=NEVER - MINUTE_MS - self.close_delay_ms)
        self._next_close += MINUTE_MS + self.close_delay_ms
        return finals

    def _expire(self) -> None:
        cutoff = self.watermark - MINUTE_MS - self.lateness_ms
        for start in [s for s in self._final if s < cutoff]:
            for bar in self._final.pop(start):
                del self._bars[(bar.symbol, start)]
                if self._current.get(bar.symbol) is bar:
                    del self._current[bar.symbol]
        oldest = min(self._final, default=None)
        self._next_expire = NEVER if oldest is None else oldest + MINUTE_MS + self.lateness_ms + 1

    # ---- output ------------------------------------------------------------------------

    def take_live(self) -> list[Bar]:
        """Forming bars changed since the last call, one update per bar."""
        if not self._live:
            return []
        updates = [bar.record("live") for bar in self._live]
        self._live.clear()
        return updates

    @property
    def open_bars(self) -> int:
        return sum(len(bars) for bars in self._open.values())

    # ---- recovery ----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole book as msgpack: several times faster than pickle for millions of trade ids."""
        counts = [getattr(self.counts, f) for f in self.counts.__struct_fields__]
        bars = [bar.to_row() for bar in self._bars.values()]
        live = [(bar.symbol, bar.start) for bar in self._live]
        return _snapshot_encoder.encode((SNAPSHOT_VERSION, self.watermark, counts, bars, live))

    @classmethod
    def restore(
        cls,
        snapshot: bytes,
        rules: ConditionRules,
        *,
        close_delay_ms: int,
        lateness_ms: int,
        source: str,
        on_trade: Callable[[str, float, int], None] | None = None,
    ) -> BarBook:
        version, watermark, counts, rows, live = msgspec.msgpack.decode(snapshot)
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"bar book snapshot version {version}, expected {SNAPSHOT_VERSION}")
        book = cls(rules, close_delay_ms=close_delay_ms, lateness_ms=lateness_ms, source=source, on_trade=on_trade)
        book.watermark = watermark
        book.counts = Counts(*counts)
        for row in rows:
            bar = MinuteBar.from_row(row)
            book._bars[(bar.symbol, bar.start)] = bar
            (book._final if bar.final else book._open).setdefault(bar.start, []).append(bar)
            latest = book._current.get(bar.symbol)
            if latest is None or latest.start < bar.start:
                book._current[bar.symbol] = bar
        book._live = {book._bars[(s, t)]: None for s, t in live if (s, t) in book._bars}
        book._next_close = min(book._open, default=NEVER - MINUTE_MS - close_delay_ms) + MINUTE_MS + close_delay_ms
        oldest = min(book._final, default=None)
        book._next_expire = NEVER if oldest is None else oldest + MINUTE_MS + lateness_ms + 1
        return book


def _too_late(t: int, start: int, watermark: int, lateness_ms: int) -> str:
    behind = (watermark - start - MINUTE_MS) / 1000
    return (
        f"trade at {t} ms is {behind:.0f} s past its minute's end, beyond the allowed lateness "
        f"of {lateness_ms / 1000:.0f} s (watermark {watermark} ms)"
    )
