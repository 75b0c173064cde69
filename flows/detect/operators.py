"""Detection as Bytewax steps: warm start from the database, then one stateful detector per symbol and timeframe.

`detect_on_bars` turns the keyed stream of final bars into a keyed stream of detection records.
Each (symbol, timeframe)'s `BarDetector` is Bytewax state under `detector_key` (the symbol
itself for 1m, as before there were other timeframes, so older recovery stores resume),
snapshotted at every epoch, so a restart resumes exactly where the last epoch ended and emits
the same records with the same ids. A detector the flow has no state for starts from its last
bars in `ohlcv_1min` or the timeframe's view, fetched for a whole batch at once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import bytewax.operators as op
import msgspec
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Stream
from bytewax.operators import KeyedStream, StatefulBatchLogic
from prometheus_client import Counter, Gauge

from connectors.kafka.dead_letter import letter
from connectors.kafka.source import RawBatch
from connectors.postgres.history import BarHistory, BarRow
from flows.bars import MINUTE_MS
from flows.book import MAX_EVENT_BYTES
from flows.detect.bar_detector import BarDetector, DetectionParams
from flows.detect.settings import DetectionSettings
from flows.event_time import Horizon
from flows.settings import Settings
from schemas.bars import Bar
from schemas.events import Event
from schemas.polygon import DECODE_ERRORS
from schemas.symbols import RULE, is_symbol
from schemas.timeframes import TIMEFRAMES, TimeframeName

DETECTORS = Gauge("tickstock_detection_state_symbols", "Symbols with detector state in this process")
BARS_IN = Counter(
    "tickstock_detection_bars_total", "Bars-topic records in, by outcome (received; final: passed to the detectors)",
    ["partition", "outcome"],
)  # fmt: skip
EVENTS_OUT = Counter("tickstock_detection_events_total", "Detection records out, by kind", ["kind"])
WATERMARK_LAG = Gauge(
    "tickstock_detection_watermark_lag_seconds", "Wall clock minus the newest bar start of the partition", ["partition"]
)

Warmed = tuple[Bar, list[BarRow] | None]  # a bar, with the history to start from on a symbol's first
Gated = tuple[str, Bar] | KafkaSinkMessage  # a bar for its symbol's detector, or a dead letter
GateBatch = tuple[list[tuple[str, Bar]], list[KafkaSinkMessage]]  # a batch's bars by symbol, and its letters
# the partition key, the watermark (newest bar start seen) and the horizon's held bars
GateState = tuple[str, int, tuple[list, int]]

_bar_decoder = msgspec.json.Decoder(Bar)
_BAR_MS = {name: t.ms for name, t in TIMEFRAMES.items()}


def idle_s_of(symbol_idle_s: float, timeframe: str) -> float:
    """How long a detector of `timeframe` may go without a bar before its state is dropped: SYMBOL_IDLE_S,
    or two of its bars if longer (a daily detector keeps its state from one trading day to the next).

    >>> idle_s_of(86_400, "1m"), idle_s_of(86_400, "1d"), idle_s_of(3_600, "1h")
    (86400, 172800.0, 7200.0)
    """
    return max(symbol_idle_s, 2 * _BAR_MS[timeframe] / 1000)


def detector_key(symbol: str, timeframe: str) -> str:
    """The state key of a symbol's detector of one timeframe: `AAPL` (1m), `AAPL/5m` (a symbol has no `/`)."""
    return symbol if timeframe == "1m" else f"{symbol}/{timeframe}"


class BarGate(StatefulBatchLogic[RawBatch, Gated, GateState]):
    """One partition of the bars topic: decodes its records and keeps their event time honest.

    Anyone can write to the bars topic. An undecodable or null record, a bar whose symbol is
    not one (it names the detector's state) or whose start is not on its timeframe's grid
    (UTC-epoch aligned) becomes a `malformed` dead letter;
    a bar further ahead of the wall clock than allowed, or beyond the partition's jump limit
    without confirmation (`flows.event_time`), is dead-lettered as `future`: one bar stamped
    in 2099 would otherwise make every later bar of its symbol look old, and silence its
    patterns, trends, surges and alerts for good. Revisions of older bars are ordinary.
    """

    def __init__(self, settings: Settings, resume: GateState | None) -> None:
        self.horizon = Horizon(
            max_ahead_of_clock_ms=int(settings.event_max_ahead_s * 1000) + MINUTE_MS,  # a bar is stamped with its start
            # bars trail the present by up to the lateness and their minute: never a jump among themselves
            max_jump_ms=settings.max_jump_ms() + 2 * MINUTE_MS,
            confirm=settings.watermark_jump_confirm,
        )
        self.key, self.watermark = "?", 0
        if resume is not None:
            self.key, self.watermark, held = resume
            self.horizon.restore(held)

    def on_batch(self, batches: list[RawBatch]) -> tuple[list[Gated], bool]:
        out: list[Gated] = []
        received = 0
        for batch in batches:
            self.key = batch.key
            if batch.values:
                received += len(batch.values)
                self._gate(batch.topic, batch.partition, batch.offsets, batch.values, out, jump=False)
        if received:
            BARS_IN.labels(self.key, "received").inc(received)
            BARS_IN.labels(self.key, "final").inc(sum(1 for item in out if isinstance(item, tuple)))
        if self.watermark:
            WATERMARK_LAG.labels(self.key).set(time.time() - self.watermark / 1000)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Gated], bool]:
        topic, _, partition = self.key.rpartition("#")
        why = "the input ended before later bars confirmed the jump"
        out: list[Gated] = [self._letter(topic, partition, h.position, h.value, "future",
                                         self.horizon.unconfirmed(h, self.watermark, why))
                            for h in self.horizon.drain()]  # fmt: skip
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> GateState:
        return (self.key, self.watermark, self.horizon.snapshot())

    def _letter(
        self, topic: str, partition: object, offset: int, value: bytes | None, kind: str, reason: str
    ) -> KafkaSinkMessage:
        return letter(value, kind=kind, reason=reason, topic=topic, partition=int(partition), offset=offset,  # type: ignore[call-overload]  # value is bytes or None, both accepted by letter's overloads at runtime
                      key=self.key.encode())  # fmt: skip

    def _gate(self, topic: str, partition: int, offsets: Sequence[int], values: Sequence[bytes | None],
              out: list[Gated], *, jump: bool) -> None:  # fmt: skip
        horizon = self.horizon
        wall_limit = horizon.wall_limit()
        decode = _bar_decoder.decode
        for offset, raw in zip(offsets, values, strict=True):
            if raw is None:
                out.append(
                    self._letter(
                        topic, partition, offset, raw, "malformed", "null value (a Kafka tombstone): a bar is a JSON object"
                    )
                )
                continue
            if len(raw) > MAX_EVENT_BYTES:
                out.append(self._letter(topic, partition, offset, raw, "too_large",
                                        f"{len(raw)} bytes; a bar may have at most {MAX_EVENT_BYTES}"))  # fmt: skip
                continue
            try:
                bar = decode(raw)
            except DECODE_ERRORS as exc:
                out.append(self._letter(topic, partition, offset, raw, "malformed", f"invalid bar: {exc}"))
                continue
            t = bar.timestamp
            if t % _BAR_MS[bar.timeframe] or not is_symbol(bar.symbol):
                why = (f"invalid bar: symbol {bar.symbol[:40]!r} is not {RULE}" if not is_symbol(bar.symbol) else
                       f"invalid bar: a {bar.timeframe} bar starts on a multiple of {_BAR_MS[bar.timeframe]} ms, not at {t}")  # fmt: skip
                out.append(self._letter(topic, partition, offset, raw, "malformed", why))
                continue
            if t > (wall_limit if jump else horizon.limit(self.watermark, wall_limit)):
                if t > wall_limit:
                    out.append(self._letter(topic, partition, offset, raw, "future", horizon.ahead_of_clock(t, wall_limit)))
                    continue
                confirmed = horizon.hold(t, raw, offset)
                if confirmed is not None:
                    self._gate(topic, partition, [h.position for h in confirmed], [h.value for h in confirmed], out, jump=True)
                continue
            if horizon.held and not jump and t >= self.watermark:
                outliers = horizon.normal()
                if outliers is not None:
                    why = f"{horizon.confirm} ordinary bars came after it first (an outlier)"
                    out.extend(self._letter(topic, partition, h.position, h.value, "future",
                                            horizon.unconfirmed(h, self.watermark, why)) for h in outliers)  # fmt: skip
            if t > self.watermark:
                self.watermark = t
            if bar.status == "final":  # forming bars have no place on this topic: nothing to decide on
                out.append((bar.symbol, bar))


class WarmStart:
    """Keys each bar by its detector (`detector_key`), drops the timeframes not detected, and
    attaches database history to the first bar of every detector this process has not seen lately.

    History is fetched for the detectors that have no state here; after a restart the
    detectors that resumed from a snapshot ignore it. It stops `history_gap_ms` before the
    first bar: bars after that may come from this flow's own input (late trades can still open
    an earlier minute, and so revise the coarser bar holding it), and a replay or restart must
    see the history the first run saw, or it would decide different events. Keys not seen for
    `idle_s_of` their timeframe are forgotten here (their detectors drop their state after the same time, see
    DetectLogic), so the set stays bounded; a detector that still has its state just ignores
    the history.
    """

    def __init__(self, settings: Settings, limit: int, timeframes: tuple[TimeframeName, ...] = get_args(TimeframeName)) -> None:
        self._settings = settings
        self._limit = limit
        self._timeframes = frozenset(timeframes)
        self._gap_ms = history_gap_ms(settings)
        self._idle_s = settings.symbol_idle_s
        self._history: BarHistory | None = None
        self._idle_of = {tf: idle_s_of(self._idle_s, tf) for tf in TIMEFRAMES}
        self._seen: dict[str, float] = {}  # detector key -> when it is idle (monotonic clock) unless a bar comes
        self._next_prune = time.monotonic() + self._idle_s

    def _db(self) -> BarHistory:
        if self._history is None:
            s = self._settings
            self._history = BarHistory(s.database_url, max_backoff_s=s.sink_max_backoff_s)
        return self._history

    def history(self, symbol: str, timeframe: TimeframeName, first_ms: int) -> list[BarRow]:
        """One symbol's history of `timeframe` before its bar at `first_ms` (a detector that lost its state)."""
        return self._db().recent_bars({symbol: first_ms - self._gap_ms}, self._limit, timeframe).get(symbol, [])

    def __call__(self, batches: list[GateBatch]) -> list[tuple[str, Warmed]]:
        now = time.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + self._idle_s / 10
            self._seen = {k: until for k, until in self._seen.items() if now < until}
        first: dict[str, dict[str, int]] = {}  # timeframe -> symbol -> history before (ms)
        seen = self._seen
        timeframes = self._timeframes
        keyed: list[tuple[str, Bar]] = []
        for bars, _ in batches:
            for symbol, bar in bars:
                tf = bar.timeframe
                if tf not in timeframes:
                    continue  # not detected here (DETECT_TIMEFRAMES)
                key = symbol if tf == "1m" else f"{symbol}/{tf}"  # = detector_key(symbol, tf)
                keyed.append((key, bar))
                if key not in seen:
                    first.setdefault(tf, {}).setdefault(symbol, bar.timestamp - self._gap_ms)
        found = {tf: self._db().recent_bars(before, self._limit, tf) for tf, before in first.items()}
        out: list[tuple[str, Warmed]] = []
        idle_of = self._idle_of
        for key, bar in keyed:
            seen[key] = now + idle_of[bar.timeframe]
            waiting = first.get(bar.timeframe) if first else None
            if waiting and bar.symbol in waiting:
                out.append((key, (bar, found[bar.timeframe].get(bar.symbol, []))))
                del waiting[bar.symbol]
            else:
                out.append((key, (bar, None)))
        return out


def history_gap_ms(settings: Settings) -> int:
    """How far before its first event a flow's own input can still reach: the allowed lateness and a minute."""
    return int(settings.allowed_lateness_s * 1000) + 60_000


class DetectLogic(StatefulBatchLogic[Warmed, Event, bytes]):
    """One (symbol, timeframe)'s detector; its snapshot is the detector's compact state.

    A detector that gets no bar for `idle_s_of` its timeframe (wall clock) loses its state (memory stays bounded
    however many symbols ever appear); when it has a bar again, it starts from its history in
    the database, like a symbol seen for the first time.
    """

    def __init__(self, params: DetectionParams, warm: WarmStart, idle_s: float, resume: bytes | None) -> None:
        DETECTORS.inc()
        self._params = params
        self._warm = warm
        self._idle = timedelta(seconds=idle_s)
        self._resume = resume
        self._detector: BarDetector | None = None
        self._due = datetime.now(UTC) + self._idle  # when the state is dropped unless a bar comes

    def on_batch(self, items: list[Warmed]) -> tuple[list[Event], bool]:
        out: list[Event] = []
        now = datetime.now(UTC)
        for bar, history in items:
            detector = self._detector
            if detector is None:
                tf = bar.timeframe
                if self._resume is not None:
                    detector = BarDetector.restore(bar.symbol, self._resume, self._params, tf)
                else:
                    detector = BarDetector(bar.symbol, self._params, tf)
                    detector.warm(history if history is not None else self._warm.history(bar.symbol, tf, bar.timestamp))
                self._detector, self._resume = detector, None
                self._idle = timedelta(seconds=idle_s_of(self._idle.total_seconds(), tf))
            out.extend(detector.on_bar(bar))
        self._due = now + self._idle  # Bytewax asks after every batch: computed once here
        if out:
            _count_out(out)
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return self._due

    def on_notify(self) -> tuple[list[Event], bool]:
        DETECTORS.dec()
        return [], StatefulBatchLogic.DISCARD

    def snapshot(self) -> bytes:
        if self._detector is None:  # restored but not woken since: hand the state on unchanged
            assert self._resume is not None
            return self._resume
        return self._detector.snapshot()


_EVENTS_OUT_OF: dict[type, Any] = {}  # record class -> its EVENTS_OUT child (labels() costs ~1 us a call)


def _count_out(records: list[Event]) -> None:
    """EVENTS_OUT by kind, one increment per kind of the batch (most batches: indicator values only)."""
    counts: dict[type, int] = {}
    for r in records:
        cls = r.__class__
        counts[cls] = counts.get(cls, 0) + 1
    for cls, n in counts.items():
        child = _EVENTS_OUT_OF.get(cls)
        if child is None:
            child = _EVENTS_OUT_OF[cls] = EVENTS_OUT.labels(cls.__struct_config__.tag)
        child.inc(n)


class _BatchedGate(StatefulBatchLogic[RawBatch, GateBatch, GateState]):
    """`BarGate` emitting what it let through and what it refused of each batch as one item
    (`GateBatch`): the steps after it then cost Bytewax one item per batch, not one per bar (taking
    the partition key off and branching bars from letters item by item was ~5 % of the flow's CPU).
    Its state is the gate's."""

    def __init__(self, settings: Settings, resume: GateState | None) -> None:
        self._gate = BarGate(settings, resume)

    def on_batch(self, batches: list[RawBatch]) -> tuple[list[GateBatch], bool]:
        out, retain = self._gate.on_batch(batches)
        return ([_split(out)] if out else []), retain

    def on_eof(self) -> tuple[list[GateBatch], bool]:
        out, retain = self._gate.on_eof()
        return ([_split(out)] if out else []), retain

    def snapshot(self) -> GateState:
        return self._gate.snapshot()


def _split(out: list[Gated]) -> GateBatch:
    bars: list[tuple[str, Bar]] = []
    letters: list[KafkaSinkMessage] = []
    for item in out:
        (bars if item.__class__ is tuple else letters).append(item)  # type: ignore[arg-type]  # a tuple is a (symbol, bar) pair, anything else a letter
    return bars, letters


@dataclass(frozen=True)
class GateOut:
    """The streams out of `gate_bars`."""

    bars: Stream[GateBatch]  # final bars by symbol, in event time that cannot be poisoned (and a batch's letters)
    dead_letters: Stream[KafkaSinkMessage]  # refused records of the bars topic


def gate_bars(step_id: str, batches: Stream[RawBatch], settings: Settings) -> GateOut:
    """Batches of the bars topic -> final bars by symbol, batch by batch, and dead letters."""
    keyed = op.key_on(f"{step_id}_by_partition", batches, lambda b: b.key)
    gated = op.key_rm(f"{step_id}_unkey", op.stateful_batch(step_id, keyed, lambda resume: _BatchedGate(settings, resume)))
    letters = op.flat_map(f"{step_id}_letters", gated, _letters_of)
    return GateOut(bars=gated, dead_letters=letters)


def _letters_of(batch: GateBatch) -> list[KafkaSinkMessage]:
    return batch[1]


def detect_on_bars(step_id: str, bars: Stream[GateBatch], settings: Settings, detection: DetectionSettings) -> KeyedStream[Event]:
    """Final bars by symbol (`gate_bars`) -> detection records keyed by detector (`detector_key`), for
    the timeframes `detection.timeframes` names."""
    params = DetectionParams(detection)
    warm = WarmStart(settings, detection.indicators.window, detection.timeframes)
    warmed: Stream = op.flat_map_batch(f"{step_id}_warm_start", bars, warm)
    idle_s = settings.symbol_idle_s
    records = op.stateful_batch(f"{step_id}_per_symbol", warmed, lambda resume: DetectLogic(params, warm, idle_s, resume))
    return records
