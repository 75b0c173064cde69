"""The bridge's `/healthz`, `/readyz` and `/metrics` (`BRIDGE_OPS_PORT`, default 9401).

Ready when the feed session is subscribed (connected, authenticated, subscriptions sent) and
Kafka answers a metadata request (checked at most every `KAFKA_CHECK_EVERY_S`, from the ops
server's thread, with a short timeout) without refusing the bridge. Alive while the event loop
turns: a heartbeat task beats every second, and a loop stuck for `STALL_S` is not alive.

The hot path keeps plain counters (`Stats`); this collector turns them into metrics at scrape
time, so forwarding an event costs no metric call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from confluent_kafka import KafkaException
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from connectors.monitoring.readiness import READINESS
from connectors.monitoring.server import OpsServer

if TYPE_CHECKING:
    from connectors.feeds.bridge.relay import Bridge

FEED: Final = "polygon feed"
KAFKA: Final = "kafka"
LOOP: Final = "bridge event loop"
KAFKA_CHECK_EVERY_S: Final = 5.0
STALL_S: Final = 60.0


class _Collector:
    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        b, s = self._bridge, self._bridge.stats
        for _ in range(3):  # the event loop may add a type while we copy: copy again
            try:
                events_in, events_out = dict(s.events_in), s.events_out()
                break
            except RuntimeError:
                continue
        else:
            events_in, events_out = {}, {}
        received = CounterMetricFamily("tickstock_bridge_events_received", "Events the feed sent, by type", labels=["type"])
        for ev, n in sorted(events_in.items()):
            if ev != "status":
                received.add_metric([ev], n)
        yield received
        forwarded = CounterMetricFamily(
            "tickstock_bridge_events_forwarded", "Events handed to their Kafka topic, by type", labels=["type"]
        )
        for ev, n in sorted(events_out.items()):
            if ev != "dead_letter":
                forwarded.add_metric([ev], n)
        yield forwarded
        yield CounterMetricFamily("tickstock_bridge_ignored_events", "Valid events of a type with no topic", value=s.ignored)
        yield CounterMetricFamily(
            "tickstock_bridge_delivery_errors",
            "Deliveries Kafka failed (produced again or dead-lettered)",
            value=s.delivery_errors,
        )
        yield GaugeMetricFamily(
            "tickstock_bridge_in_flight_records", "Records handed to Kafka, not yet acknowledged", value=b.in_flight()
        )
        yield GaugeMetricFamily("tickstock_bridge_retry_records", "Records waiting to be produced again", value=len(b.retry))
        yield GaugeMetricFamily(
            "tickstock_bridge_feed_connected", "1 while the feed session is subscribed", value=float(b.subscribed)
        )
        age = time.time() - b.last_event_ms / 1000 if b.last_event_ms else 0.0
        yield GaugeMetricFamily(
            "tickstock_bridge_event_age_seconds",
            "Wall clock minus the newest event time forwarded (0 before the first)",
            value=age,
        )


class _KafkaCheck:
    """Kafka answers a metadata request and has not refused the bridge (cached a few seconds)."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge
        self._lock = threading.Lock()
        self._at = -1e9
        self._last: tuple[bool, str] = (False, "not checked yet")

    def __call__(self) -> tuple[bool, str]:
        b = self._bridge
        if b.kafka_refused:
            return False, f"Kafka refuses the bridge: {b.kafka_refused}"
        with self._lock:
            if time.monotonic() - self._at >= KAFKA_CHECK_EVERY_S:
                try:
                    b.producer.list_topics(timeout=2)
                    self._last = (True, f"answers at {b.bootstrap}")
                except KafkaException as exc:
                    self._last = (False, f"no answer from {b.bootstrap}: {exc.args[0] if exc.args else exc}")
                self._at = time.monotonic()
            return self._last


def start_ops_server(bridge: Bridge, host: str, port: int) -> OpsServer | None:
    """The bridge's ops server (None when `BRIDGE_OPS_PORT=0`); raises CannotServe naming the variable."""
    READINESS.set(FEED, False, "not connected yet")
    READINESS.probe(KAFKA, _KafkaCheck(bridge))
    if port == 0:
        return None
    server = OpsServer(host, port, service="bridge", variable="BRIDGE_OPS_PORT", stall_s=STALL_S)
    REGISTRY.register(_Collector(bridge))
    return server.start()


async def beat() -> None:
    """The event loop's heartbeat for /healthz."""
    while True:
        READINESS.heartbeat(LOOP)
        await asyncio.sleep(1.0)
