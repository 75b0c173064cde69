"""The detection flow: final bars from Kafka -> per-symbol and timeframe indicators, alerts, patterns, trends and surges.

Run it beside the bar flow (`flows.ohlcv`), which publishes every final bar and revision on
`TOPIC_BARS` (1m bars, and the coarser timeframes it rolls up; `DETECT_TIMEFRAMES` says which
are detected)::

    python -m bytewax.run "flows.detection:build_flow()"
    python -m bytewax.run "flows.detection:build_flow()" -r RECOVERY_DIR -s 5 -b 0   # restartable

Why a flow of its own: detecting costs more per bar than building the bar did, so in its own
process it runs on another core, and however slow it gets (a slow database for the indicator
rows, a backlog after a restart), bars reach analysts and dashboards on time. Kafka between the
two keeps each bar's revisions in order (key = symbol) and lets either flow restart on its own.

Composition only: the detectors live in `flows.detect`, the I/O in `connectors`.
"""

from __future__ import annotations

import gc
import logging
import time

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from connectors.kafka.dead_letter import dead_letter_sink, letter_key
from connectors.kafka.source import KafkaBatchSource
from connectors.sinks.records import event_sink
from flows import settings as flow_settings
from flows.boundary import wait_after_boundary
from flows.detect import settings as detect_settings
from flows.detect.operators import detect_on_bars, gate_bars
from flows.detect.settings import DetectionSettings
from flows.monitoring import start_monitoring
from flows.settings import Settings

log = logging.getLogger("tickstock.detection")


def build_flow(settings: Settings | None = None, detection: DetectionSettings | None = None) -> Dataflow:
    """The detection dataflow, configured from the environment unless `settings` / `detection` are given."""
    s = settings if settings is not None else flow_settings.load_or_exit("detection flow")
    if detection is None:
        detection = detect_settings.load_or_exit("detection flow")
    if not detection.bar_detection_on():
        raise SystemExit(
            "detection flow: every detector on bars is off (DETECT_*) or DETECT_TIMEFRAMES is empty, so it has nothing to do"
        )
    # Every detector keeps its recent bars' states and decisions (millions of small objects at
    # thousands of symbols, none in a cycle); the default collector thresholds rescanned them
    # for cycles a full quarter of the flow's CPU (2.7 of 10.3 s in `bench.detection flow`).
    gc.set_threshold(100_000, 50, 100)
    start_monitoring(s, "detection")
    flow = Dataflow("detection")

    # Bars read just after a minute closes wait out DETECTION_BOUNDARY_HOLD_S: their detection (this
    # flow, and the PostgreSQL, Redis and broker work it causes) then comes after the bar flow's sink
    # has written them, not beside it on the same cores (flows.boundary; docs/benchmarks.md, 2026-12-04).
    def hold() -> float:
        return wait_after_boundary(time.time(), close_delay_s=s.bar_close_delay_s, hold_s=s.detection_boundary_hold_s)

    source = KafkaBatchSource(
        s, [s.topic_bars], start=s.kafka_start, tail=s.kafka_tail, batch_size=s.kafka_batch_size,
        ready_max_lag=s.ready_max_lag_messages, hold=hold if s.detection_boundary_hold_s > 0 else None,
    )  # fmt: skip
    parts = len(source.list_parts())  # a sink partition per input partition, spread over the workers
    gate = gate_bars("gate", op.input("bars", flow, source), s)
    # The bars topic carries every timeframe (`timeframe`); each (symbol, timeframe) has its detector.
    events = detect_on_bars("detect", gate.bars, s, detection)
    op.output("detection", events, event_sink(s, parts=parts))
    letters = op.key_on("dead_letters_by_partition", gate.dead_letters, letter_key)
    op.output("dead_letters", letters, dead_letter_sink(s, s.topic_dead_letter, parts))
    return flow
