"""The bar flow: Kafka ticks -> bars of every timeframe -> PostgreSQL, Redis and the bars topic; bad input -> dead letters.

Run it with::

    python -m bytewax.run "flows.ohlcv:build_flow()"                    # one process
    python -m bytewax.run "flows.ohlcv:build_flow()" -r RECOVERY_DIR -s 5 -b 0   # restartable

Composition only: the partition's step is `flows.partition`, the bar logic `flows.book`, the
I/O `connectors`. Session highs and lows are detected on trades inside the partition's step (the
trades are decoded there once); final bars and revisions also go to Kafka (`TOPIC_BARS`), where
the detection flow (`flows.detection`) reads them. The coarser timeframes (BAR_TIMEFRAMES) are
rolled up from the final minutes in the same step (`flows.timeframes`) and go out on the same
streams (their `timeframe` field tells them apart); only the minutes are stored (the database
rolls up its own). Last prices (`flows.prices`) go to Redis.
"""

from __future__ import annotations

import gc

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from connectors.kafka.dead_letter import dead_letter_sink, error_record, letter_key
from connectors.kafka.sink import Record, TopicSink
from connectors.kafka.source import KafkaBatchSource
from connectors.sinks import stages
from connectors.sinks.records import event_sink, final_bar_sink, live_bar_sink, price_sink, status_sink
from flows import settings as flow_settings
from flows.detect import settings as detect_settings
from flows.detect.settings import DetectionSettings
from flows.monitoring import start_monitoring
from flows.partition import partition_bars
from flows.settings import Settings
from schemas.bars import Bar, encode_bar


def _bar_record(bar: Bar) -> Record:
    return bar.symbol, encode_bar(bar), None


def build_flow(settings: Settings | None = None, detection: DetectionSettings | None = None) -> Dataflow:
    """The dataflow, configured from the environment unless `settings` / `detection` are given."""
    s = settings if settings is not None else flow_settings.load_or_exit("ohlcv flow")
    d = detection if detection is not None else detect_settings.load_or_exit("ohlcv flow")
    # The books hold millions of small objects (trade ids) for the lateness window; the default
    # collector thresholds would rescan them constantly for cycles they never form.
    gc.set_threshold(100_000, 50, 100)
    start_monitoring(s, "ohlcv")
    if s.stage_log is not None:
        stages.open_log(s.stage_log)
    flow = Dataflow("ohlcv")
    source = KafkaBatchSource(
        s, [s.bar_input_topic()], start=s.kafka_start, tail=s.kafka_tail, batch_size=s.kafka_batch_size,
        ready_max_lag=s.ready_max_lag_messages,
    )  # fmt: skip
    # One sink partition per input partition: Bytewax spreads them over the workers, so in a
    # cluster every worker that reads input also writes (connectors.sinks.parts).
    parts = len(source.list_parts())
    out = partition_bars(op.input("ticks", flow, source), s, d)
    op.output("final_bars", out.final_bars, final_bar_sink(s, parts))
    op.output("live_bars", out.live_bars, live_bar_sink(s))
    op.output("prices", out.prices, price_sink(s))
    op.output("bars_topic", out.final_bars, TopicSink(s, s.topic_bars, _bar_record, parts))
    letters = op.key_on("dead_letters_by_partition", out.dead_letters, letter_key)
    op.output("dead_letters", letters, dead_letter_sink(s, s.topic_dead_letter, parts))
    status = op.merge("health_and_errors", out.health, op.map("errors", out.dead_letters, error_record))
    op.output("status", status, status_sink(s))
    if d.enabled and d.highlow.enabled:
        op.output("highs_and_lows", out.highs_and_lows, event_sink(s, parts=parts))
    return flow
