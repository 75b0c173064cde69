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
- An event too far ahead of the wall clock or of the watermark moves no watermark: it is
  refused as `future` or held until the jump is confirmed (`flows.event_time`).
- State stays bounded whatever the input: at most `max_symbols` symbols hold bars at once
  (more are refused as `capacity`), and every field of an event is bounded (`schemas.polygon`).

Over 400 lines on purpose: the two hot loops (`_apply_trades`, `_apply_seconds`) read the book's
state through local names inside one function each, which is what keeps a trade near a
microsecond; the rules they share with the snapshot and the timers sit beside them so one file
holds the whole state machine. `make core` (`infra/core.py`) compiles this module and
`flows.bars` with Cython, which makes the trade loop's locals C values (see `_apply_trades`); the
source is the same either way. The arithmetic of one bar is `flows.bars`, event time
`flows.event_time`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cython
import msgspec

from flows.bars import MINUTE_MS, NOTHING_ENCODED, MinuteBar
from flows.event_time import NEVER, Horizon
from flows.snapshots import spliced_array
from flows.trade_ids import NO_HASHES, NO_IDS, MinuteIds
from schemas.bars import Bar
from schemas.conditions import ALL, HIGH_LOW, OPEN_CLOSE, VOLUME, ConditionRules, UnknownCondition
from schemas.polygon import DECODE_ERRORS, MinuteAgg, Quote, SecondAgg, Trade
from schemas.symbols import RULE as SYMBOL_RULE
from schemas.symbols import is_symbol

SNAPSHOT_VERSION = 4  # 4: final minutes' trade ids apart from their bars (flows.trade_ids); 3: the horizon's held events
RESTORES = (2, 3, SNAPSHOT_VERSION)  # 2 restores with none held; 2 and 3: final bars' ids are compacted on restore
# A final minute's trade ids are compacted (flows.trade_ids) this long after it closed, in event time,
# not as it closes: hashing and packing a minute's ids took ~35 of the ~50 ms a partition's close of
# 1,000 bars took, and a flow's partitions close one after another in its one thread, so at a minute
# boundary the last partition's bars waited for the compactions before them. Until then the bars
# keep their exact sets, which de-duplicate late trades as well.
COMPACT_AFTER_MS = 5_000

# Decoding into a union makes msgspec insist on the `ev` tag (a bare struct would not);
# the second member is there for that alone and is rejected below.
_trade_decoder = msgspec.json.Decoder(Trade | Quote)
_second_decoder = msgspec.json.Decoder(SecondAgg | MinuteAgg)
_snapshot_encoder = msgspec.msgpack.Encoder()


class Reject(msgspec.Struct, frozen=True):
    """An input the book refused, with its bytes.

    `index` is the input's position as the caller gave it to `apply` (`positions`, e.g. Kafka
    offsets), or its index in the batch; a held event refused later keeps the position it came with.
    """

    index: int
    kind: str  # schemas.status.DEAD_LETTER_KINDS
    reason: str
    value: bytes | None = None


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
    future: int = 0
    capacity: int = 0
    held: int = 0  # events held for a watermark jump (then applied, or refused as `future`)
    too_large: int = 0

    @property
    def refused(self) -> int:
        return self.malformed + self.too_late + self.unknown_condition + self.future + self.capacity + self.too_large


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
        horizon: Horizon | None = None,
        max_symbols: int = 100_000,
    ) -> None:
        if source not in ("trades", "second_aggs"):
            raise ValueError(f"unknown bar source {source!r}")
        self.rules = rules
        self.close_delay_ms = close_delay_ms
        self.lateness_ms = lateness_ms
        self.source = source
        self.on_trade = on_trade  # told (symbol, price, time) of each new trade that set a new bar high/low
        # The flows pass the deployment's horizon (flows.settings); a bare book (tests, bar checks) allows an hour.
        self.horizon = horizon or Horizon(max_ahead_of_clock_ms=60_000, max_jump_ms=3_600_000, confirm=20)
        self.max_symbols = max_symbols
        self.watermark = 0
        self.counts = Counts()
        self._bars: dict[tuple[str, int], MinuteBar] = {}
        self._open: dict[int, list[MinuteBar]] = {}  # minute start -> bars not yet final
        self._final: dict[int, list[MinuteBar]] = {}  # minute start -> final bars still revisable
        self._ids: dict[int, MinuteIds] = {}  # minute start -> the ids its trades had when it first became final
        self._next_close = NEVER  # watermark at which the oldest open minute closes
        self._next_expire = NEVER  # watermark at which a final minute is compacted or stops being revisable
        self._uncompacted: dict[int, None] = {}  # final minutes whose ids are still in their bars' exact sets
        self._current: dict[str, MinuteBar] = {}  # each symbol's newest bar, the usual target
        self._live: dict[MinuteBar, None] = {}  # open bars changed since the last live update
        # final minute start -> (its bar count, their snapshot rows encoded and joined), kept until one of
        # them changes (a late trade, the compaction) or the minute goes: most of a snapshot is final
        # bars that did not change since the last one (ALLOWED_LATENESS_S of them per symbol), and
        # building their rows again every epoch took most of the snapshot's time. Encoded, not as row
        # tuples: a tuple and its int and float objects held ~500 bytes a bar, its encoding ~90
        # (flows.snapshots; docs/benchmarks.md, 2026-12-03 tenth session).
        self._final_rows: dict[int, tuple[int, bytes]] = {}

    # ---- input -------------------------------------------------------------------------

    def apply(self, values: Sequence[bytes | None], positions: Sequence[int] | None = None) -> tuple[list[Bar], list[Reject]]:
        """Apply a batch of raw events (wire JSON; None for a Kafka tombstone) in order.

        Returns the bars that became final or were revised by this batch, in the order that
        happened (a revision per late trade applied), and the inputs refused, with the reason.
        The order depends on the messages alone, not on how they were batched, so what is
        computed downstream from a symbol's bars (detection) is the same after a restart.
        `positions` (e.g. Kafka offsets) identify the inputs in the rejects; default: the index.
        """
        if positions is None:
            positions = range(len(values))
        if values and _longest(values) > MAX_EVENT_BYTES:  # rare
            values, positions, oversized = _without_oversized(values, positions)
        else:
            oversized = []
        if self.source == "trades":
            finals, rejects = self._apply_trades(values, positions, jump=False)
        else:
            finals, rejects = self._apply_seconds(values, positions, jump=False)
        self.counts.events += len(values) + len(oversized)
        return finals, self._count(oversized) + rejects if oversized else rejects

    def drain_held(self) -> list[Reject]:
        """End of a finite input: events still held for an unconfirmed jump are refused as `future`."""
        why = "the input ended before later events confirmed the jump"
        return self._count([
            Reject(h.position, "future", self.horizon.unconfirmed(h, self.watermark, why), h.value)
            for h in self.horizon.drain()
        ])  # fmt: skip

    def _count(self, rejects: list[Reject]) -> list[Reject]:
        counts = self.counts
        for r in rejects:
            setattr(counts, r.kind, getattr(counts, r.kind) + 1)
        return rejects

    def _release(self, held: list, jump_done: bool, finals: list[Bar], rejects: list[Reject]) -> None:
        """Held events leave the horizon: applied when their jump was confirmed, else refused as outliers."""
        if jump_done:
            apply = self._apply_trades if self.source == "trades" else self._apply_seconds
            more, refused = apply([h.value for h in held], [h.position for h in held], jump=True)
            finals.extend(more)
            rejects.extend(refused)  # counted by that call
        else:
            why = f"{self.horizon.confirm} ordinary events came after it first (an outlier)"
            rejects.extend(self._count([
                Reject(h.position, "future", self.horizon.unconfirmed(h, self.watermark, why), h.value) for h in held
            ]))  # fmt: skip

    # Compiled (infra/core.py), these locals are C values and `bar` a MinuteBar extension type
    # (flows/bars.pxd): the loop's arithmetic and field updates run without objects. Uncompiled,
    # the decorator does nothing and the same code runs as Python; tests/unit/test_core.py checks
    # that both give the same bars.
    @cython.locals(
        bar=MinuteBar,
        price=cython.double,
        t=cython.longlong,
        q=cython.longlong,
        start=cython.longlong,
        watermark=cython.longlong,
        limit=cython.longlong,
        wall_limit=cython.longlong,
        lateness=cython.longlong,
        max_jump=cython.longlong,
        next_tick=cython.longlong,
        minute_ms=cython.longlong,
        size=cython.longlong,
        bits=cython.long,
        all_bits=cython.long,
        high_low=cython.long,
        open_close=cython.long,
        volume=cython.long,
        extreme=cython.bint,
        holding=cython.bint,
        new=cython.bint,
        held=cython.Py_ssize_t,
        seen=set,
    )
    def _apply_trades(
        self, values: Sequence[bytes | None], positions: Sequence[int], *, jump: bool
    ) -> tuple[list[Bar], list[Reject]]:
        # The hot loop: locals instead of attribute lookups, and the symbol's current bar
        # tried before building a (symbol, minute) key. Keep it lean; the rules it follows are
        # spelled out in the module docstring and tested in tests/unit/test_book.py. `jump`: these are
        # held events whose watermark jump was confirmed (the jump limit does not apply).
        finals: list[Bar] = []
        rejects: list[Reject] = []
        released: list[Reject] = []  # rejects of held events applied or refused meanwhile (counted there)
        decode = _trade_decoder.decode
        known = self.rules.known.get
        bars = self._bars
        current = self._current
        live = self._live
        lateness = MINUTE_MS + self.lateness_ms
        counts = self.counts
        on_trade = self.on_trade
        horizon = self.horizon
        max_jump = horizon.max_jump_ms
        key_hash = hash
        watermark = self.watermark
        wall_limit = horizon.wall_limit()
        limit = wall_limit if jump else horizon.limit(watermark, wall_limit)
        holding = bool(horizon.held) and not jump
        next_tick = min(self._next_close, self._next_expire)
        # The rule constants as typed locals: compiled, they are C integers, not module objects.
        minute_ms, all_bits, high_low, open_close, volume = MINUTE_MS, ALL, HIGH_LOW, OPEN_CLOSE, VOLUME
        for index, raw in enumerate(values):
            try:
                trade = decode(raw)  # type: ignore[arg-type]  # a None (tombstone) raises TypeError, handled below
            except DECODE_ERRORS as exc:
                rejects.append(Reject(positions[index], "malformed", f"invalid trade event: {exc}", raw))
                continue
            except TypeError:
                rejects.append(Reject(positions[index], "malformed", _NULL, raw))
                continue
            if trade.__class__ is not Trade:
                rejects.append(Reject(positions[index], "malformed", "a quote (Q) where a trade (T) was expected", raw))
                continue
            t = trade.timestamp
            if t > limit:
                if t > wall_limit:
                    rejects.append(Reject(positions[index], "future", horizon.ahead_of_clock(t, wall_limit), raw))
                    continue
                counts.held += 1
                confirmed = horizon.hold(t, raw, positions[index])  # type: ignore[arg-type]  # `raw` is bytes here: a None was refused as malformed above
                holding = True
                if confirmed is not None:
                    self.watermark = watermark
                    self._release(confirmed, True, finals, released)
                    watermark, holding = self.watermark, False
                    limit = horizon.limit(watermark, wall_limit)
                    next_tick = min(self._next_close, self._next_expire)
                continue
            if holding and t >= watermark:
                outliers = horizon.normal()
                if outliers is not None:
                    self._release(outliers, False, finals, released)
                    holding = False
            start = t - t % minute_ms
            if start + lateness < watermark:
                rejects.append(Reject(positions[index], "too_late", _too_late(t, start, watermark, self.lateness_ms), raw))
                continue
            conditions = trade.conditions
            if not conditions:
                bits = all_bits
            else:
                mask = known(tuple(conditions))  # the combinations met so far, without a call
                if mask is None:
                    try:
                        mask = self.rules.mask(conditions)
                    except UnknownCondition as exc:
                        rejects.append(Reject(positions[index], "unknown_condition", str(exc), raw))
                        continue
                bits = mask
            if bits:
                symbol = trade.symbol
                bar = current.get(symbol)
                if bar is None or bar.start != start:
                    bar = bars.get((symbol, start))
                    if bar is None:
                        refusal = self._refuse_new_bar(symbol)
                        if refusal is not None:
                            rejects.append(Reject(positions[index], refusal[0], refusal[1], raw))
                            continue
                        bar = self._new_bar(symbol, start)
                        next_tick = min(self._next_close, self._next_expire)
                trade_key = (trade.exchange, trade.trade_id, trade.trf_id)
                if bar.final:  # a late trade (rare): its minute's compact ids may hold it too
                    self._final_rows.pop(start, None)  # its snapshot rows are built again
                    new = not (trade_key in bar.seen or self._counted_when_final(bar, trade_key))
                    if new:
                        bar.seen.add(trade_key)  # type: ignore[union-attr]  # a set: NO_IDS was replaced just above
                else:  # one probe of the open bar's set: adding a key it holds leaves its size as it was
                    seen = bar.seen
                    held = len(seen)
                    seen.add(trade_key)  # type: ignore[union-attr]  # an open bar's ids are a set
                    new = len(seen) != held
                if not new:
                    counts.duplicates += 1
                else:
                    # MinuteBar.add_trade, inlined (a call per trade cost more than its arithmetic);
                    # tests/unit/test_trade_ids.py checks the two agree on every field.
                    price = trade.price
                    extreme = False
                    if bits & high_low:
                        high = bar.high
                        if high is None:
                            bar.high = bar.low = price
                            extreme = True
                        elif price > high:
                            bar.high = price
                            extreme = True
                        elif price < bar.low:  # type: ignore[operator]  # set together with high: not None here
                            bar.low = price
                            extreme = True
                    if bits & open_close:
                        q = trade.sequence
                        if bar.open is None:
                            bar.open = bar.close = price
                            bar.open_t = bar.close_t = t
                            bar.open_q = bar.close_q = q
                            bar.close_size = trade.size
                        else:
                            if t < bar.open_t or (t == bar.open_t and q < bar.open_q):
                                bar.open, bar.open_t, bar.open_q = price, t, q
                            if t > bar.close_t or (t == bar.close_t and q >= bar.close_q):
                                bar.close, bar.close_t, bar.close_q, bar.close_size = price, t, q, trade.size
                    if bits & volume:
                        size = trade.size
                        bar.volume += size
                        bar.notional += price * size
                        bar.trades += 1
                    if extreme and on_trade is not None:
                        on_trade(symbol, price, t)
                    if bar.final:
                        bar.revision += 1
                        counts.revisions += 1
                        finals.append(bar.record("final"))
                    else:
                        live[bar] = None
                        bar.hashes.append(key_hash(trade_key))  # type: ignore[union-attr]  # open: a list (MinuteBar.hashes)
                        bar.arrived.append(trade_key)  # type: ignore[union-attr]  # open: a list (MinuteBar.arrived)
            else:
                counts.ignored += 1
            if t > watermark:
                watermark = t
                if not jump:  # limit = min(wall_limit, t + max_jump), without the call
                    limit = t + max_jump
                    if limit > wall_limit:
                        limit = wall_limit
            if watermark >= next_tick:
                finals.extend(self.advance(watermark))
                next_tick = min(self._next_close, self._next_expire)
        self.watermark = watermark
        self._count(rejects)
        return finals, rejects + released if released else rejects

    def _counted_when_final(self, bar: MinuteBar, key: tuple) -> bool:
        """Whether a final bar counted `key` before it became final (a late trade; rare). If not, the
        bar gets an exact set for the trades it takes from now on, in place of the shared empty one."""
        ids = self._ids.get(bar.start)
        if ids is not None and ids.counted(bar.symbol, key):
            return True
        if bar.seen is NO_IDS:
            bar.seen = set()
        return False

    def _refuse_new_bar(self, symbol: str) -> tuple[str, str] | None:
        """Why a bar for `symbol` may not be opened (checked once per new bar, not per trade)."""
        if not is_symbol(symbol):
            return "malformed", f"invalid symbol {symbol!r}: {SYMBOL_RULE}"
        if symbol not in self._current and len(self._current) >= self.max_symbols:
            return "capacity", (
                f"the partition already holds bars of {len(self._current)} symbols, the most it may "
                f"(MAX_SYMBOLS_PER_PARTITION={self.max_symbols}); a new symbol waits until older ones expire"
            )
        return None

    def _apply_seconds(
        self, values: Sequence[bytes | None], positions: Sequence[int], *, jump: bool
    ) -> tuple[list[Bar], list[Reject]]:
        finals: list[Bar] = []
        rejects: list[Reject] = []
        released: list[Reject] = []
        horizon = self.horizon
        wall_limit = horizon.wall_limit()
        for index, raw in enumerate(values):
            position = positions[index]
            try:
                agg = _second_decoder.decode(raw)  # type: ignore[arg-type]  # a None (tombstone) raises TypeError, handled below
            except DECODE_ERRORS as exc:
                rejects.append(Reject(position, "malformed", f"invalid per-second aggregate: {exc}", raw))
                continue
            except TypeError:
                rejects.append(Reject(position, "malformed", _NULL, raw))
                continue
            if agg.__class__ is not SecondAgg:
                rejects.append(Reject(position, "malformed", "a minute aggregate (AM) where A was expected", raw))
                continue
            t = agg.end - 1
            if agg.start > t or t - agg.start >= MINUTE_MS:
                rejects.append(Reject(position, "malformed", f"window start {agg.start} / end {agg.end} is not a second", raw))
                continue
            if t > (wall_limit if jump else horizon.limit(self.watermark, wall_limit)):
                if t > wall_limit:
                    rejects.append(Reject(position, "future", horizon.ahead_of_clock(t, wall_limit), raw))
                    continue
                self.counts.held += 1
                confirmed = horizon.hold(t, raw, position)  # type: ignore[arg-type]  # `raw` is bytes here: a None was refused as malformed above
                if confirmed is not None:
                    self._release(confirmed, True, finals, released)
                continue
            if horizon.held and not jump and t >= self.watermark:
                outliers = horizon.normal()
                if outliers is not None:
                    self._release(outliers, False, finals, released)
            start = agg.start - agg.start % MINUTE_MS
            if start + MINUTE_MS + self.lateness_ms < self.watermark:
                rejects.append(Reject(position, "too_late", _too_late(agg.start, start, self.watermark, self.lateness_ms), raw))
                continue
            bar = self._bars.get((agg.symbol, start))
            if bar is None:
                refusal = self._refuse_new_bar(agg.symbol)
                if refusal is not None:
                    rejects.append(Reject(position, refusal[0], refusal[1], raw))
                    continue
                bar = self._new_bar(agg.symbol, start)
            if bar.final:
                self._final_rows.pop(start, None)  # its snapshot rows are built again
            if agg.start in bar.seen:
                self.counts.duplicates += 1
            else:
                bar.seen.add(agg.start)  # type: ignore[union-attr]  # per-second bars are never compacted
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
            finals.extend(self.advance(t))
        self._count(rejects)
        return finals, rejects + released if released else rejects

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
            self._final_rows.pop(start, None)
            if self.source == "trades" and start not in self._ids:
                self._uncompacted[start] = None
            self._next_expire = min(self._next_expire, self._due(start))
        self.counts.bars_final += len(finals)
        self._next_close = min(self._open, default=NEVER - MINUTE_MS - self.close_delay_ms)
        self._next_close += MINUTE_MS + self.close_delay_ms
        return finals

    def _due(self, start: int) -> int:
        """The watermark at which final minute `start` is next due: compacted (COMPACT_AFTER_MS after its
        close), or no longer revisable (ALLOWED_LATENESS_S after its end)."""
        expires = start + MINUTE_MS + self.lateness_ms + 1
        if start in self._uncompacted:
            return min(expires, start + MINUTE_MS + self.close_delay_ms + COMPACT_AFTER_MS)
        return expires

    def _expire(self) -> None:
        """Final minutes due: compacted, or gone from the book once no trade can revise them."""
        compact_by = self.watermark - MINUTE_MS - self.close_delay_ms - COMPACT_AFTER_MS
        for start in [s for s in self._uncompacted if s <= compact_by]:
            del self._uncompacted[start]
            self._compact(start, self._final.get(start, []))
        cutoff = self.watermark - MINUTE_MS - self.lateness_ms
        for start in [s for s in self._final if s < cutoff]:
            self._ids.pop(start, None)
            self._uncompacted.pop(start, None)
            self._final_rows.pop(start, None)
            for bar in self._final.pop(start):
                del self._bars[(bar.symbol, start)]
                if self._current.get(bar.symbol) is bar:
                    del self._current[bar.symbol]
        self._next_expire = min(map(self._due, self._final), default=NEVER)

    def _compact(self, start: int, closing: list[MinuteBar]) -> None:
        """The exact ids of a minute's bars go into its array of 64-bit hashes, once (`COMPACT_AFTER_MS`
        after it first became final). Bars opened for it later (late trades of symbols it had none of)
        are few: they keep exact sets."""
        if start in self._ids:
            return
        self._ids[start] = MinuteIds.of_hashed([
            (bar.symbol, bar.seen, bar.hashes if len(bar.hashes) == len(bar.seen) else list(map(hash, bar.seen)))
            for bar in closing
        ])  # fmt: skip
        for bar in closing:
            bar.seen = NO_IDS
            bar.hashes = bar.arrived = NO_HASHES
            bar.encoded = NOTHING_ENCODED
        self._final_rows.pop(start, None)

    # ---- output ------------------------------------------------------------------------

    def take_live(self) -> list[Bar]:
        """Forming bars changed since the last call, one update per bar."""
        if not self._live:
            return []
        updates = [bar.record("live") for bar in self._live]
        self._live.clear()
        return updates

    def take_live_minutes(self) -> tuple[list[Bar], list[MinuteBar]]:
        """`take_live`, with the forming bars it came from (their closes are the last prices)."""
        changed = list(self._live)
        return self.take_live(), changed

    def minute(self, symbol: str, start: int) -> MinuteBar | None:
        """The symbol's bar of the minute starting at `start`, while the book holds it."""
        return self._bars.get((symbol, start))

    @property
    def symbols(self) -> int:
        """Symbols holding open or still revisable bars (what `max_symbols` bounds)."""
        return len(self._current)

    @property
    def open_bars(self) -> int:
        return sum(len(bars) for bars in self._open.values())

    # ---- recovery ----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole book as msgpack: several times faster than pickle for millions of trade ids."""
        counts = [getattr(self.counts, f) for f in self.counts.__struct_fields__]
        encode = _snapshot_encoder.encode
        count, parts = 0, []
        for minute in self._open.values():
            count += len(minute)
            parts += [bar.snapshot_row() for bar in minute]  # spliced below: one copy
        cached = self._final_rows
        for start, minute in self._final.items():
            rows = cached.get(start)
            if rows is None:
                rows = cached[start] = (len(minute), b"".join([bar.snapshot_row() for bar in minute]))
            count += rows[0]
            parts.append(rows[1])
        bars = spliced_array(count, parts)  # the bytes of a list of every bar's row
        live = [(bar.symbol, bar.start) for bar in self._live]
        ids = [(start, minute.exact) for start, minute in self._ids.items()]
        return encode((SNAPSHOT_VERSION, self.watermark, counts, bars, live, self.horizon.snapshot(), ids))

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
        horizon: Horizon | None = None,
        max_symbols: int = 100_000,
    ) -> BarBook:
        version, watermark, counts, rows, live, *rest = msgspec.msgpack.decode(snapshot)
        if version not in RESTORES:
            raise ValueError(
                f"bar book snapshot version {version!r}; this version of the flow restores versions "
                f"{', '.join(map(str, RESTORES))} (a newer flow wrote it? run that version, or start from an empty recovery store)"
            )
        book = cls(rules, close_delay_ms=close_delay_ms, lateness_ms=lateness_ms, source=source, on_trade=on_trade,
                   horizon=horizon, max_symbols=max_symbols)  # fmt: skip
        if rest:
            book.horizon.restore(rest[0])
        if len(rest) > 1:
            try:
                book._ids = {start: MinuteIds.restore(exact) for start, exact in rest[1]}
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
                raise ValueError(f"bar book snapshot version {version}: unreadable trade ids of a final minute: {exc}") from exc
        book.watermark = watermark
        book.counts = Counts(*counts)
        for row in rows:
            bar = MinuteBar.from_row(row)
            book._bars[(bar.symbol, bar.start)] = bar
            (book._final if bar.final else book._open).setdefault(bar.start, []).append(bar)
            latest = book._current.get(bar.symbol)
            if latest is None or latest.start < bar.start:
                book._current[bar.symbol] = bar
        if source == "trades":
            for start, final in book._final.items():
                if version < 4:  # an older store: its final bars' exact ids are hashed now, as closing would have
                    book._compact(start, final)
                elif start not in book._ids:  # closed less than COMPACT_AFTER_MS before the snapshot
                    book._uncompacted[start] = None
                else:
                    for bar in final:
                        if not bar.seen:
                            bar.seen = NO_IDS
        book._live = {book._bars[(s, t)]: None for s, t in live if (s, t) in book._bars}
        book._next_close = min(book._open, default=NEVER - MINUTE_MS - close_delay_ms) + MINUTE_MS + close_delay_ms
        book._next_expire = min(map(book._due, book._final), default=NEVER)
        return book


_NULL = "null value (a Kafka tombstone): an event is a JSON object"
MAX_EVENT_BYTES = 16 * 1024  # a Polygon event is ~150 bytes; every field it may carry is bounded


def _longest(values: Sequence[bytes | None]) -> int:
    """The longest value's size, in one C pass when there is no tombstone (the usual batch)."""
    try:
        return max(map(len, values))  # type: ignore[arg-type]  # a None raises TypeError: handled below
    except TypeError:
        return max(map(len, filter(None, values)), default=0)


def _without_oversized(
    values: Sequence[bytes | None], positions: Sequence[int]
) -> tuple[list[bytes | None], list[int], list[Reject]]:
    """The batch without events over MAX_EVENT_BYTES (refused as `too_large`), in order."""
    kept, where, refused = [], [], []
    for value, position in zip(values, positions, strict=True):
        if value is not None and len(value) > MAX_EVENT_BYTES:
            refused.append(
                Reject(position, "too_large", f"{len(value)} bytes; an event may have at most {MAX_EVENT_BYTES}", value)
            )
        else:
            kept.append(value)
            where.append(position)
    return kept, where, refused


def _too_late(t: int, start: int, watermark: int, lateness_ms: int) -> str:
    behind = (watermark - start - MINUTE_MS) / 1000
    return (
        f"trade at {t} ms is {behind:.0f} s past its minute's end, beyond the allowed lateness "
        f"of {lateness_ms / 1000:.0f} s (watermark {watermark} ms)"
    )
