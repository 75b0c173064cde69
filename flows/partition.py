"""One Kafka partition of ticks through its bar book: the bar flow's stateful step.

`partition_bars` is the step as an operator function: batches of raw records in, named typed
streams out (final bars, live bars, dead letters, status, session high/low events), the way
Bytewax's own Kafka operators return `oks` and `errs`. It is a plain function, not an
`@operator`, so its steps keep the ids recovery stores were written with ("bars", ...).

`PartitionLogic` drives one partition's `BarBook` (and its session high/low detector) from
batches, timers and end of input: live updates at most every `LIVE_UPDATE_INTERVAL_S`, a silent
partition's watermark following the wall clock while its source is caught up, health and metrics.
Beside the book, its `flows.timeframes.Rollup` builds the coarser bars (BAR_TIMEFRAMES) from the
final minutes the book emits, and its `flows.prices.LastPrices` the last price per symbol.

The rollup's clock is the watermark at which the book closed minutes (`ClosingBook` marks where in
the book's output that happened), not the watermark at the end of a batch: the book's output does
not depend on how its input was batched, and so the coarse bars and their revisions do not either,
which is what makes them the same after a restart. A silent partition's watermark (idle advance)
and the end of the input move the rollup's clock too. What the rollup can put off (folding the
minutes just closed into open buckets, settling) it does in a step that closes no minute, a second
after the boundary (`ROLLUP_WAITS_S`, `Rollup.settle`), so the boundary's bars leave sooner; when
is invisible in its output.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeGuard, cast

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Stream
from bytewax.operators import KeyedStream, StatefulBatchLogic
from prometheus_client import Counter, Gauge

from connectors.kafka.dead_letter import letter
from connectors.kafka.source import RawBatch
from connectors.postgres.history import BarHistory
from connectors.sinks import stages
from flows.book import BarBook, Counts, Reject
from flows.detect.highlow import SessionExtremes
from flows.detect.operators import history_gap_ms
from flows.detect.settings import DetectionSettings
from flows.event_time import Horizon
from flows.health import health_line, judge
from flows.prices import LastPrices
from flows.settings import Settings
from flows.timeframes import Rollup, first_complete
from schemas.bars import Bar
from schemas.conditions import ConditionRules
from schemas.events import HighLowEvent
from schemas.prices import Price
from schemas.status import FlowHealth

log = logging.getLogger("tickstock.ohlcv")

DEAD_LETTER_COUNTS = ("malformed", "too_large", "too_late", "future", "unknown_condition", "capacity")

EVENTS = Counter(
    "tickstock_bar_events_total", "Events in: received, and what the bar book did with them, by outcome", ["partition", "outcome"]
)
OUTPUT = Counter(
    "tickstock_bar_output_total",
    "Records out of the bar flow, by type (final, live, highlow, coarse_final, coarse_live, price)",
    ["partition", "type"],
)
WATERMARK_LAG = Gauge("tickstock_bar_watermark_lag_seconds", "Wall clock minus the partition's watermark", ["partition"])
OPEN_BARS = Gauge("tickstock_bar_open_bars", "Bars still forming", ["partition"])
SYMBOLS = Gauge("tickstock_bar_state_symbols", "Symbols with state in the partition, by holder", ["partition", "state"])
BUCKETS = Gauge("tickstock_bar_rollup_buckets", "Coarse buckets held (forming, or final and still revisable)", ["partition"])
OUTCOMES = (
    "duplicates",
    "revisions",
    "ignored",
    "malformed",
    "too_late",
    "unknown_condition",
    "future",
    "capacity",
    "too_large",
    "held",
)
CAUGHT_UP_FRESH_S = 3.0  # a caught-up marker older than this says nothing about the source now
# After a silent gap in the evidence (the broker was away), the producers upstream may still be
# reconnecting (librdkafka backs off up to 10 s) with what they buffered: idleness counts after that.
RECONNECT_GRACE_S = 10.0
# A step that closes minutes, when no such wait is on, starts one of this long: until it ends, the
# rollup's work that can wait (folding the new minutes into open buckets, settling: `Rollup.settle`)
# and its live updates (noting the live minutes folds first) are put off, so the boundary's bars,
# their upsert and their publishing have the bar flow's thread meanwhile (~25 ms a partition of
# 1,000 symbols: docs/benchmarks.md). The rollup's output does not depend on when it folds
# (tests/unit/test_timeframes.py); what waits is at most a wait's live minutes.
ROLLUP_WAITS_S = 1.0

Output = Bar | KafkaSinkMessage | HighLowEvent | FlowHealth | Price
# partition, bar book, session extremes (None when off), the cutoff for their database references,
# the timeframe rollup, the last prices (older stores: the first four alone)
BookState = tuple[str, bytes, bytes | None, int] | tuple[str, bytes, bytes | None, int, bytes, bytes]


class ClosingBook(BarBook):
    """A `BarBook` that notes the watermark at which each batch of minutes closed, by the last bar closed.

    The book emits the bars a watermark closed, in order, inside the final bars and revisions of a
    batch; `marks` maps the last of them (by identity, valid until the caller drops the batch's
    bars) to that watermark, so the caller can move event time at exactly that point of the output.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # BarBook's own parameters, passed through
        self.marks: dict[int, int] = {}

    def advance(self, watermark: int) -> list[Bar]:
        finals = super().advance(watermark)
        if finals:
            self.marks[id(finals[-1])] = self.watermark
        return finals


class PartitionLogic(StatefulBatchLogic[RawBatch, Output, BookState]):
    """Drives one partition's `BarBook` (and its session high/low detector) from batches, timers and end of input."""

    def __init__(self, settings: Settings, detection: DetectionSettings, resume: BookState | None) -> None:
        self.key = "?"  # the partition; bytewax gives builders the state, not the key
        self.topic, self.partition = "?", -1
        highlow = detection.highlow if detection.enabled and detection.highlow.enabled else None
        self.extremes: SessionExtremes | None = None
        self.cutoff_ms = 0  # kept in the snapshot for older recovery stores; references cut off per symbol now
        rollup_state: bytes | None = None
        prices_state: bytes | None = None
        if resume is not None:
            if len(resume) not in (4, 6):
                raise ValueError(
                    "the recovery directory holds state of an older version of this flow; start over with a fresh one "
                    "(python -m bytewax.recovery DIR N) and KAFKA_START=earliest to rebuild it"
                )
            self.key, snapshot, extremes, self.cutoff_ms = resume[:4]
            if len(resume) == 6:
                rollup_state, prices_state = resume[4], resume[5]
            self.topic, _, partition = self.key.rpartition("#")
            self.partition = int(partition)
            if highlow is not None:
                self.extremes = SessionExtremes.restore(extremes, highlow) if extremes else SessionExtremes(highlow)
        elif highlow is not None:
            self.extremes = SessionExtremes(highlow)
        self.history = BarHistory(settings.database_url, max_backoff_s=settings.sink_max_backoff_s) if highlow else None
        self.history_gap_ms = history_gap_ms(settings)
        options = {
            "close_delay_ms": int(settings.bar_close_delay_s * 1000),
            "lateness_ms": int(settings.allowed_lateness_s * 1000),
            "source": settings.bar_source,
            "on_trade": self.extremes.observe if self.extremes is not None else None,
            "horizon": Horizon(
                max_ahead_of_clock_ms=int(settings.event_max_ahead_s * 1000),
                max_jump_ms=settings.max_jump_ms(),
                confirm=settings.watermark_jump_confirm,
            ),
            "max_symbols": settings.max_symbols_per_partition,
        }
        self.book: ClosingBook
        if resume is not None:
            self.book = ClosingBook.restore(snapshot, ConditionRules.load(), **options)  # type: ignore[arg-type,assignment]  # the options dict mixes value types; each matches its keyword; restore builds the class it is called on
        else:
            self.book = ClosingBook(ConditionRules.load(), **options)
        timing = {"close_delay_ms": options["close_delay_ms"], "lateness_ms": options["lateness_ms"]}
        buckets = 2 * settings.max_symbols_per_partition  # per timeframe: a symbol's forming bucket and the last one
        if rollup_state is not None:
            self.rollup = Rollup.restore(rollup_state, settings.bar_timeframes, max_buckets=buckets, **timing)  # type: ignore[arg-type]  # two ints
        else:
            # An older store (no rollup in it): the minutes it already emitted are gone, so buckets
            # that had some are never published (the database's views have them).
            since = first_complete(self.book.watermark, timing["close_delay_ms"]) if resume is not None else 0  # type: ignore[arg-type]  # an int
            self.rollup = Rollup(settings.bar_timeframes, max_buckets=buckets, complete_from=since, **timing)  # type: ignore[arg-type]  # two ints
        limit = settings.max_symbols_per_partition
        self.prices = LastPrices.restore(prices_state, limit) if prices_state is not None else LastPrices(limit)
        self.next_forget_prices = 0
        # Per-symbol high/low state of symbols idle this long (event time) is dropped; never sooner
        # than the lateness allows, so a forgotten symbol's bars are in the database when it is back.
        self.idle_ms = max(int(settings.symbol_idle_s * 1000), 2 * self.history_gap_ms)
        self.next_forget = 0
        self.live_every = settings.live_update_interval_s
        self.coarse_live_every = settings.live_coarse_update_interval_s
        self.idle_after = settings.idle_advance_s
        self.health_every = settings.health_interval_s
        self.max_lag_s = settings.health_max_lag_s if settings.kafka_tail else None
        now = time.monotonic()
        self.last_input = now  # wall-clock time of the last data or idle advance
        self.caught_up_at = -1e9  # wall-clock time of the source's last caught-up marker
        self.idle_from = now  # idleness counts from here at the earliest (a new run of caught-up evidence)
        self.last_live = self.last_coarse_live = now
        self.rollup_waits_until = now  # see ROLLUP_WAITS_S
        self.unnoted_live: list[Bar] = []  # live minutes the rollup has not seen yet (see ROLLUP_WAITS_S)
        self.reported = Counts()
        self.last_health = now
        self.health_events = self.book.counts.events
        self.health_dropped = self.book.counts.refused

    def on_batch(self, batches: list[RawBatch]) -> tuple[list[Output], bool]:
        out: list[Output] = []
        first = batches[0]
        self.key, self.topic, self.partition = first.key, first.topic, first.partition
        now = time.monotonic()
        rollup_due = now >= self.rollup_waits_until
        data = closed = False
        for batch in batches:
            if not batch.values:
                if batch.caught_up:
                    self._caught_up(now)
                continue
            data = True
            finals, rejects = self.book.apply(batch.values, batch.offsets)
            if finals and stages.enabled():
                self._mark_closed(finals, now, len(batch.values))
            closed |= self._finals(finals, out)
            out.extend(self._letters(rejects))
            if self.extremes is not None:
                self._resolve_references()
                events = self.extremes.take()
                if events:
                    OUTPUT.labels(self.key, "highlow").inc(len(events))
                    out.extend(events)
        if data:
            self.last_input = now
            self._forget_idle_symbols()
        # A wait starts at a close unless the last one's work is still undone (every step since it
        # closed minutes too: a replay); then that work is done now, and the rollup waits no longer.
        waits = closed and rollup_due and not self.unnoted_live
        if waits:
            self.rollup_waits_until = now + ROLLUP_WAITS_S
        elif rollup_due and not closed:
            self.rollup.settle()
        self._tick(now, out, rollup_due=rollup_due and not waits)
        if stages.enabled():
            stages.mark("step_out", partition=self.key, batches=len(batches), out=len(out), took_s=time.monotonic() - now)
        return out, StatefulBatchLogic.RETAIN

    def _mark_closed(self, finals: list[Bar], began: float, values: int) -> None:
        """The stage log's mark of a batch that closed a minute: when the step began, and the book was done."""
        minute = stages.first_minute(finals)
        if minute is not None:
            stages.mark("closed", partition=self.key, minute=minute, finals=len(finals), values=values,
                        watermark=self.book.watermark, took_s=time.monotonic() - began)  # fmt: skip

    def _finals(self, finals: list[Bar], out: list[Output]) -> bool:
        """The book's final bars and revisions out, each followed by the coarse bars it causes, and the
        rollup's clock moved where the book closed minutes; their closes are last prices. Whether it
        closed any: the rollup settles in a step that closed none (`Rollup.close_through`)."""
        marks = self.book.marks
        if not marks and not finals:
            return False
        closed = bool(marks)
        rollup, prices, minute = self.rollup, self.prices, self.book.minute
        coarse = 0
        for bar in finals:
            out.append(bar)
            rolled = rollup.add(bar)
            watermark = marks.get(id(bar))
            if watermark is not None:
                rolled += rollup.close_through(watermark)
            if rolled:
                coarse += len(rolled)
                out.extend(rolled)
            if bar.close is not None:
                held = minute(bar.symbol, bar.timestamp)
                if held is not None:
                    prices.observe(bar.symbol, held.close, held.close_size, held.close_t, held.close_q, held.open)  # type: ignore[arg-type]  # its record's close is not None: neither is the bar's
        marks.clear()
        if coarse:
            OUTPUT.labels(self.key, "coarse_final").inc(coarse)
        return closed

    def _caught_up(self, now: float) -> None:
        """The source had read everything and the broker answered: evidence that silence is silence."""
        if now - self.caught_up_at > CAUGHT_UP_FRESH_S:  # a new run of evidence: idleness counts from here
            silent_gap = self.caught_up_at > 0 and self.last_input <= self.caught_up_at
            self.idle_from = now + (RECONNECT_GRACE_S if silent_gap else 0.0)
        self.caught_up_at = now

    def on_notify(self) -> tuple[list[Output], bool]:
        now = time.monotonic()
        out: list[Output] = []
        idle = now - max(self.last_input, self.idle_from)
        source_caught_up = now - self.caught_up_at <= CAUGHT_UP_FRESH_S
        if idle >= self.idle_after and self.book.watermark and source_caught_up:
            # A silent partition must still close its bars: let event time follow the wall clock.
            # Only for the time the source has been caught up with a broker that answers: an outage
            # is not silence, and trades buffered upstream meanwhile must still find their bars open.
            self._finals(self.book.advance(self.book.watermark + int(idle * 1000)), out)
            self._coarse(self.rollup.advance(self.book.watermark), out)  # buckets whose last minutes had no bars
            self.last_input = now
        self._tick(now, out, rollup_due=now >= self.rollup_waits_until)
        if stages.enabled():
            stages.mark("notify_out", partition=self.key, out=len(out), took_s=time.monotonic() - now)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Output], bool]:
        out: list[Output] = list(self._letters(self.book.drain_held()))
        self._finals(self.book.close_all(), out)
        self._coarse(self.rollup.close_all(), out)
        prices = self.prices.take()
        if prices:
            OUTPUT.labels(self.key, "price").inc(len(prices))
            out.extend(prices)
        self._report(time.monotonic(), out, force=True)
        return out, StatefulBatchLogic.RETAIN

    def _coarse(self, bars: list[Bar], out: list[Output]) -> None:
        if bars:
            OUTPUT.labels(self.key, "coarse_final").inc(len(bars))
            out.extend(bars)

    def _letters(self, rejects: list[Reject]) -> list[KafkaSinkMessage]:
        """Dead letters of refused input (bounded in size), keyed by this partition."""
        key = self.key.encode()
        return [
            letter(r.value, kind=r.kind, reason=r.reason, topic=self.topic, partition=self.partition, offset=r.index, key=key)
            for r in rejects
        ]

    def _forget_idle_symbols(self) -> None:
        """Per-symbol high/low state and last prices of long-idle symbols go (checked once per 1/10 of the idle time)."""
        watermark = self.book.watermark
        if watermark >= self.next_forget_prices:
            self.next_forget_prices = watermark + self.idle_ms // 10
            self.prices.forget_idle(watermark - self.idle_ms)
        if self.extremes is None or watermark < self.next_forget:
            return
        self.next_forget = watermark + self.idle_ms // 10
        forgotten = self.extremes.forget_idle(watermark - self.idle_ms)
        if forgotten:
            log.info("%s: forgot the high/low state of %d symbols idle for %.0f s", self.key, forgotten, self.idle_ms / 1000)

    def notify_at(self) -> datetime | None:
        """The next live update, or the idle advance when `on_notify` could make it.

        The idle advance is due only for a partition with a watermark whose source is caught up:
        asking for it otherwise (before the first trade, during a broker outage) would be "due now"
        after every activation, and Bytewax would call `on_notify` at every step of its 1 ms loop
        (a third of a core, measured on an idle flow). Bytewax asks again after each batch, so a
        caught-up marker reschedules it."""
        now = time.monotonic()
        due = self.last_live + self.live_every
        if self.book.watermark and now - self.caught_up_at <= CAUGHT_UP_FRESH_S:
            due = min(due, max(self.last_input, self.idle_from) + self.idle_after)
        return datetime.now(UTC) + timedelta(seconds=max(0.0, due - now))

    def _note_live(self) -> None:
        """The live minutes published since the rollup last saw them, to the rollup, in their order."""
        self.rollup.note_live(self.unnoted_live)
        self.unnoted_live = []

    def snapshot(self) -> BookState:
        clock = time.monotonic
        began = clock()
        self._note_live()  # the rollup's snapshot is what it would have been without the wait
        noted = clock()
        extremes = self.extremes.snapshot() if self.extremes is not None else None
        extremes_done = clock()
        book = self.book.snapshot()
        book_done = clock()
        rollup = self.rollup.snapshot()
        rollup_done = clock()
        prices = self.prices.snapshot()
        if stages.enabled():  # an epoch that lands on a minute boundary holds its close this long
            stages.mark("book_snapshot", partition=self.key, took_s=clock() - began, bytes=len(book),
                        note_live_s=noted - began, extremes_s=extremes_done - noted, book_s=book_done - extremes_done,
                        rollup_s=rollup_done - book_done, prices_s=clock() - rollup_done)  # fmt: skip
        return (self.key, book, extremes, self.cutoff_ms, rollup, prices)

    def _resolve_references(self) -> None:
        """Symbols starting a session cold wait for the database's view of it; fetch it for all at once."""
        assert self.extremes is not None and self.history is not None
        while waiting := self.extremes.waiting():
            references = self.history.session_references(waiting, self.history_gap_ms, self.extremes.cfg.n_days)
            self.extremes.resolve(references)

    def _tick(self, now: float, out: list[Output], rollup_due: bool) -> None:
        """Live updates when their interval has passed, and metrics. Unless `rollup_due`, the rollup
        does not see the live minutes yet (noting them folds it: `ROLLUP_WAITS_S`), nor sends its own."""
        if now - self.last_live >= self.live_every:
            live, forming = self.book.take_live_minutes()
            if live:
                OUTPUT.labels(self.key, "live").inc(len(live))
                out.extend(live)
            self.unnoted_live += live
            if rollup_due:
                self._note_live()
                if now - self.last_coarse_live >= self.coarse_live_every:
                    rolled = self.rollup.take_live()
                    if rolled:
                        OUTPUT.labels(self.key, "coarse_live").inc(len(rolled))
                        out.extend(rolled)
                    self.last_coarse_live = now
            observe = self.prices.observe
            for bar in forming:
                if bar.close is not None:
                    observe(bar.symbol, bar.close, bar.close_size, bar.close_t, bar.close_q, bar.open)
            prices = self.prices.take()
            if prices:
                OUTPUT.labels(self.key, "price").inc(len(prices))
                out.extend(prices)
            self.last_live = now
        self._report(now, out)

    def _report(self, now: float, out: list[Output], force: bool = False) -> None:
        counts, last = self.book.counts, self.reported
        for outcome in OUTCOMES:
            delta = getattr(counts, outcome) - getattr(last, outcome)
            if delta:
                EVENTS.labels(self.key, outcome).inc(delta)
        delta = counts.events - last.events
        if delta:
            EVENTS.labels(self.key, "received").inc(delta)
        delta = counts.bars_final - last.bars_final
        if delta:
            OUTPUT.labels(self.key, "final").inc(delta)
        self.reported = Counts(**{f: getattr(counts, f) for f in counts.__struct_fields__})
        if self.book.watermark:
            WATERMARK_LAG.labels(self.key).set(time.time() - self.book.watermark / 1000)
        OPEN_BARS.labels(self.key).set(self.book.open_bars)
        SYMBOLS.labels(self.key, "bars").set(self.book.symbols)
        SYMBOLS.labels(self.key, "prices").set(self.prices.symbols)
        BUCKETS.labels(self.key).set(self.rollup.buckets)
        if self.extremes is not None:
            SYMBOLS.labels(self.key, "highlow").set(self.extremes.symbols)
        if force or now - self.last_health >= self.health_every:
            out.append(self._health(now, counts))

    def _health(self, now: float, counts: Counts) -> FlowHealth:
        """The health line (log) and message (Redis) for the interval since the last one."""
        interval = max(now - self.last_health, 1e-9)
        received = counts.events - self.health_events
        dropped = counts.refused
        refused = dropped - self.health_dropped
        self.last_health, self.health_events, self.health_dropped = now, counts.events, dropped
        lag = time.time() - self.book.watermark / 1000 if self.book.watermark else None
        reason = judge(received=received, refused=refused, interval_s=interval, lag_s=lag, max_lag_s=self.max_lag_s)
        health = FlowHealth(
            partition=self.key,
            timestamp=int(time.time() * 1000),
            status="degraded" if reason else "healthy",
            reason=reason,
            received=counts.events,
            events_per_s=round(received / interval, 1),
            final_bars=counts.bars_final,
            open_bars=self.book.open_bars,
            dropped=dropped,
            duplicates=counts.duplicates,
            revisions=counts.revisions,
            watermark=self.book.watermark or None,
            watermark_lag_s=round(lag, 1) if lag is not None else None,
            dead_letters={k: getattr(counts, k) for k in DEAD_LETTER_COUNTS},
            held=len(self.book.horizon.held),
            symbols=self.book.symbols,
            highlow_symbols=self.extremes.symbols if self.extremes is not None else None,
        )
        log.info("%s", health_line(health))
        return health


def _is_bar(item: Output) -> TypeGuard[Bar]:
    return isinstance(item, Bar)


def _is_final(bar: Bar) -> bool:
    return bar.status == "final"


def _is_dead_letter(item: Output) -> TypeGuard[KafkaSinkMessage]:
    return isinstance(item, KafkaSinkMessage)


def _is_health(item: Output) -> TypeGuard[FlowHealth]:
    return isinstance(item, FlowHealth)


def _is_price(item: Output) -> TypeGuard[Price]:
    return isinstance(item, Price)


def _symbol(item: Bar | HighLowEvent) -> str:
    return item.symbol


@dataclass(frozen=True)
class PartitionOut:
    """The streams out of `partition_bars`."""

    final_bars: KeyedStream[Bar]  # final bars and revisions of every timeframe, keyed by symbol
    live_bars: Stream[Bar]  # forming bars of every timeframe, throttled
    prices: Stream[Price]  # last prices, throttled
    dead_letters: Stream[KafkaSinkMessage]  # refused input, one letter each
    health: Stream[FlowHealth]
    highs_and_lows: KeyedStream[HighLowEvent]  # session high/low events keyed by symbol (empty when off)


def partition_bars(batches: Stream[RawBatch], settings: Settings, detection: DetectionSettings) -> PartitionOut:
    """Batches of one input topic -> the bar flow's outputs, one `PartitionLogic` per Kafka partition."""
    keyed = op.key_on("by_partition", batches, lambda b: b.key)
    produced = op.stateful_batch("bars", keyed, lambda resume: PartitionLogic(settings, detection, resume))
    items = op.key_rm("unkey", produced)
    split = op.branch("bars_or_other", items, _is_bar)
    by_status = op.branch("final_or_live", split.trues, _is_final)
    letters = op.branch("dead_letters_or_other", split.falses, _is_dead_letter)
    health = op.branch("health_or_events", letters.falses, _is_health)
    prices = op.branch("prices_or_events", health.falses, _is_price)
    # What is left after bars, letters, health and prices is the session high/low events (a branch's
    # falses keep the input's type, hence the cast).
    events = cast(Stream[HighLowEvent], prices.falses)
    return PartitionOut(
        final_bars=op.key_on("by_symbol", by_status.trues, _symbol),
        live_bars=by_status.falses,
        prices=prices.trues,
        dead_letters=letters.trues,
        health=health.trues,
        highs_and_lows=op.key_on("events_by_symbol", events, _symbol),
    )
