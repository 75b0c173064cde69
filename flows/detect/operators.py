"""Detection as Bytewax steps: warm start from the database, then one stateful detector per symbol.

`detect_on_bars` turns the keyed stream of final bars into a keyed stream of detection records.
Each symbol's `BarDetector` is Bytewax state, snapshotted at every epoch, so a restart resumes
exactly where the last epoch ended and emits the same records with the same ids. A symbol the
flow has no state for starts from its last bars in `ohlcv_1min`, fetched for a whole batch of
such symbols at once.
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import KeyedStream, StatefulBatchLogic

from connectors.bar_history import BarHistory, BarRow
from flows.detect.bar_detector import BarDetector, DetectionParams
from flows.detect.settings import DetectionSettings
from flows.settings import Settings
from schemas.bars import Bar
from schemas.events import Event

Warmed = tuple[Bar, list[BarRow] | None]  # a bar, with the history to start from on a symbol's first


class WarmStart:
    """Attaches database history to the first bar of every symbol this process has not seen yet.

    History is fetched for the symbols that have no detector state here; after a restart the
    detectors that resumed from a snapshot ignore it. It stops `history_gap_ms` before the
    symbol's first bar: bars after that may come from this flow's own input (late trades can
    still open an earlier minute), and a replay or restart must see the history the first
    run saw, or it would decide different events.
    """

    def __init__(self, settings: Settings, limit: int) -> None:
        self._settings = settings
        self._limit = limit
        self._gap_ms = history_gap_ms(settings)
        self._history: BarHistory | None = None
        self._seen: set[str] = set()

    def __call__(self, items: list[tuple[str, Bar]]) -> list[tuple[str, Warmed]]:
        first: dict[str, int] = {}
        for symbol, bar in items:
            if symbol not in self._seen and symbol not in first:
                first[symbol] = bar.timestamp - self._gap_ms
        if not first:
            return [(symbol, (bar, None)) for symbol, bar in items]
        if self._history is None:
            s = self._settings
            self._history = BarHistory(s.database_url, max_backoff_s=s.sink_max_backoff_s)
        found = self._history.recent_bars(first, self._limit)
        self._seen.update(first)
        out: list[tuple[str, Warmed]] = []
        for symbol, bar in items:
            if symbol in first:
                out.append((symbol, (bar, found.get(symbol, []))))
                del first[symbol]
            else:
                out.append((symbol, (bar, None)))
        return out


def history_gap_ms(settings: Settings) -> int:
    """How far before its first event a flow's own input can still reach: the allowed lateness and a minute."""
    return int(settings.allowed_lateness_s * 1000) + 60_000


class DetectLogic(StatefulBatchLogic[Warmed, Event, bytes]):
    """One symbol's detector; its snapshot is the detector's compact state."""

    def __init__(self, params: DetectionParams, resume: bytes | None) -> None:
        self._params = params
        self._resume = resume
        self._detector: BarDetector | None = None

    def on_batch(self, items: list[Warmed]) -> tuple[list[Event], bool]:
        out: list[Event] = []
        for bar, history in items:
            detector = self._detector
            if detector is None:
                if self._resume is not None:
                    detector = BarDetector.restore(bar.symbol, self._resume, self._params)
                else:
                    detector = BarDetector(bar.symbol, self._params)
                    detector.warm(history or [])
                self._detector, self._resume = detector, None
            out.extend(detector.on_bar(bar))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        if self._detector is None:  # restored but not woken since: hand the state on unchanged
            assert self._resume is not None
            return self._resume
        return self._detector.snapshot()


def detect_on_bars(step_id: str, bars: KeyedStream[Bar], settings: Settings, detection: DetectionSettings) -> KeyedStream[Event]:
    """Final bars keyed by symbol -> detection records keyed by symbol."""
    params = DetectionParams(detection)
    warmed: Stream = op.flat_map_batch(f"{step_id}_warm_start", bars, WarmStart(settings, detection.indicators.window))
    records = op.stateful_batch(f"{step_id}_per_symbol", warmed, lambda resume: DetectLogic(params, resume))  # type: ignore[arg-type]
    return records
