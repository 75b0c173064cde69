"""Metrics more than one part of the project updates, declared once (prometheus_client's default registry).

Names follow Prometheus' conventions: the `tickstock_` prefix, the unit in the name
(`_seconds`, `_messages`, `_bytes`), `_total` on counters. The full list, per service, is in
docs/monitoring.md; `tests/unit/test_monitoring.py` checks the example alert rules and the
Grafana dashboard against what the services expose.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

RETRIES = Counter(
    "tickstock_dependency_retries_total",
    "Operations retried after a dependency failed (PostgreSQL, Redis), by dependency",
    ["dependency"],
)
RECONNECTS = Counter(
    "tickstock_reconnects_total",
    "Connections re-opened after they broke: polygon (the bridge's WebSocket), postgresql, redis",
    ["dependency"],
)
DEAD_LETTERS = Counter(
    "tickstock_dead_letters_total",
    "Dead letters made, by the source they came from (a topic, a table, or `feed` for the bridge) and kind",
    ["source", "kind"],
)
SINK_BATCH_SECONDS = Histogram(
    "tickstock_sink_batch_duration_seconds",
    "Time to write one batch, retries included: sink postgresql, redis or kafka; target the table, channel group or topic",
    ["sink", "target"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
SINK_RECORDS = Counter("tickstock_sink_records_total", "Records written by a sink, by sink and target", ["sink", "target"])
LIVE_SUPERSEDED = Counter(
    "tickstock_live_superseded_total",
    "Live records (forming bars, last prices, health) replaced by a newer one of the same key before they were published",
    ["target"],
)


@contextmanager
def timed_batch(sink: str, target: str, records: int) -> Iterator[None]:
    """Observe one batch's duration and count its records (after it was written)."""
    start = time.perf_counter()
    yield
    SINK_BATCH_SECONDS.labels(sink, target).observe(time.perf_counter() - start)
    if records:
        SINK_RECORDS.labels(sink, target).inc(records)
