"""Counters the gateway keeps, its health verdict, and their Prometheus exposition.

The hot path bumps plain integers on `Stats` (a prometheus_client `Counter.inc` per message per
client would cost more than the delivery itself); a custom collector reads them at scrape time.

>>> s = Stats()
>>> s.redis_connected, s.redis_lag_s = True, 0.002
>>> health(s, database_ok=True, now=s.last_probe_at)["status"]
'healthy'
>>> s.redis_connected = False
>>> health(s, database_ok=True, now=0)["reason"]
'redis subscription down: live delivery stopped'

Every background task runs under a supervisor that records it here (`TaskState`): a task that
died is logged, restarted with backoff and counted, and /healthz says so while it is down.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest

DEGRADED_LAG_S = 1.0  # Redis messages reach the gateway later than this: degraded
ESSENTIAL_TASKS = frozenset({"redis-reader", "flusher"})  # without these nothing is delivered


@dataclass
class TaskState:
    """One supervised background task: whether it runs, how often it died, the last error's type."""

    running: bool = False
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None

    def report(self) -> dict:
        return {
            "running": self.running,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


@dataclass
class Stats:
    received: int = 0  # messages from Redis
    relayed: int = 0  # of those, wanted by at least one client
    delivered: int = 0  # messages written to clients (one per client per message)
    frames: int = 0  # WebSocket frames written
    replaced: int = 0  # unsent messages superseded by a newer one (batching replacement)
    connections: int = 0
    connections_total: int = 0
    rejected: Counter = field(default_factory=Counter)  # handshake refusals by status
    dropped: Counter = field(default_factory=Counter)  # clients cut, by reason
    client_errors: int = 0  # invalid client messages
    resumes: int = 0  # channels caught up from history
    resets: int = 0  # channels whose history was gone
    redis_connected: bool = False
    redis_reconnects: int = 0
    redis_lag_s: float = 0.0  # last probe's publish-to-receipt time
    last_probe_at: float = field(default_factory=time.time)
    started_at: float = field(default_factory=time.time)
    ignored: Counter = field(default_factory=Counter)  # Redis messages not relayed, by reason
    rate_limited: int = 0  # client messages refused by the per-connection rate limit
    internal_errors: int = 0  # client messages the gateway failed on (logged with a reference)
    redis_errors: int = 0  # Redis commands that failed on a client's behalf (retried, then refused)
    database_errors: int = 0  # REST requests answered 503 because PostgreSQL failed
    channels_forgotten: int = 0  # channel positions dropped from the bounded recovery map
    watchlist_changes: int = 0  # watchlist changes applied to a session following the list
    watchlist_unannounced: int = 0  # watchlist changes stored whose notice could not be published
    tasks: dict[str, TaskState] = field(default_factory=dict)
    dev_mode: bool = False

    def counters(self) -> dict[str, int]:
        return {
            "received": self.received,
            "relayed": self.relayed,
            "delivered": self.delivered,
            "frames": self.frames,
            "replaced": self.replaced,
            "connections": self.connections,
            "connections_total": self.connections_total,
            "dropped": sum(self.dropped.values()),
            "client_errors": self.client_errors,
            "resumes": self.resumes,
            "resets": self.resets,
            "redis_reconnects": self.redis_reconnects,
            "ignored": sum(self.ignored.values()),
            "rate_limited": self.rate_limited,
            "internal_errors": self.internal_errors,
            "redis_errors": self.redis_errors,
            "database_errors": self.database_errors,
            "channels_forgotten": self.channels_forgotten,
            "watchlist_changes": self.watchlist_changes,
            "watchlist_unannounced": self.watchlist_unannounced,
            "task_restarts": sum(t.restarts for t in self.tasks.values()),
        }

    def task(self, name: str) -> TaskState:
        return self.tasks.setdefault(name, TaskState())


def health(stats: Stats, *, database_ok: bool, now: float, probe_interval_s: float = 1.0) -> dict:
    """healthy / degraded / error, with the reason and the counters (the old system's shape)."""
    silent_s = now - stats.last_probe_at
    down = sorted(name for name, t in stats.tasks.items() if not t.running)
    essential = [name for name in down if name in ESSENTIAL_TASKS]
    if essential or down:
        name = (essential or down)[0]
        t = stats.tasks[name]
        status = "error" if essential else "degraded"
        reason = f"background task {name} is restarting after {t.last_error or 'an exit'} ({t.restarts} restarts)"
    elif not stats.redis_connected:
        status, reason = "error", "redis subscription down: live delivery stopped"
    elif silent_s > max(5.0, 5 * probe_interval_s):
        status, reason = "error", f"no Redis probe received for {silent_s:.1f} s"
    elif stats.redis_lag_s > DEGRADED_LAG_S:
        status, reason = "degraded", f"Redis messages arrive {stats.redis_lag_s:.2f} s late"
    elif not database_ok:
        status, reason = "degraded", "PostgreSQL unreachable: REST endpoints failing, live delivery fine"
    else:
        status, reason = "healthy", "ok"
    return {
        "status": status,
        "reason": reason,
        "redis_lag_ms": round(stats.redis_lag_s * 1000, 3),
        "uptime_s": round(now - stats.started_at, 1),
        "dev_mode": stats.dev_mode,
        "database": "ok" if database_ok else "unreachable",
        "counters": stats.counters(),
        "dropped_by_reason": dict(stats.dropped),
        "ignored_by_reason": dict(stats.ignored),
        "tasks": {name: t.report() for name, t in sorted(stats.tasks.items())},
    }


def readiness(stats: Stats, *, database_ok: bool, now: float, probe_interval_s: float = 1.0) -> dict:
    """`/readyz`: ready to take clients when Redis delivers (subscribed, probe fresh), PostgreSQL answers and the tasks run.

    The same shape as the other services' `/readyz` (`connectors.monitoring.readiness`): a
    late Redis (degraded in `/healthz`) is still ready, a Redis that delivers nothing is not.

    >>> s = Stats(redis_connected=True)
    >>> s.task("flusher").running = True
    >>> readiness(s, database_ok=True, now=s.last_probe_at)["ready"]
    True
    >>> readiness(s, database_ok=False, now=s.last_probe_at)["conditions"]["postgresql"]
    {'ok': False, 'detail': 'unreachable: REST answers 503'}
    """
    silent_s = now - stats.last_probe_at
    quiet = silent_s > max(5.0, 5 * probe_interval_s)
    if not stats.redis_connected:
        redis_ok, redis_detail = False, "subscription down"
    elif quiet:
        redis_ok, redis_detail = False, f"no probe received for {silent_s:.1f} s"
    else:
        redis_ok, redis_detail = True, f"subscribed, probe lag {stats.redis_lag_s * 1000:.1f} ms"
    conditions: dict[str, dict[str, Any]] = {
        "redis": {"ok": redis_ok, "detail": redis_detail},
        "postgresql": {"ok": database_ok, "detail": "answers" if database_ok else "unreachable: REST answers 503"},
    }
    for name, t in sorted(stats.tasks.items()):
        conditions[f"task {name}"] = {"ok": t.running, "detail": "running" if t.running else f"restarting ({t.last_error})"}
    return {
        "service": "gateway",
        "ready": all(c["ok"] for c in conditions.values()),
        "conditions": conditions,
        "failing": {},
    }


@dataclass
class QueueDepths:
    pending_total: int
    pending_max: int
    buffered_bytes: int


class _Collector:
    def __init__(self, stats: Stats, depths: Callable[[], QueueDepths], ready: Callable[[], bool] | None) -> None:
        self._stats = stats
        self._depths = depths
        self._ready = ready

    def collect(self) -> Iterable:
        s = self._stats
        counters = [
            ("tickstock_gateway_redis_messages", "messages received from Redis", s.received),
            ("tickstock_gateway_relayed_messages", "Redis messages wanted by at least one client", s.relayed),
            ("tickstock_gateway_delivered_messages", "messages written to clients", s.delivered),
            ("tickstock_gateway_frames", "WebSocket batch frames written", s.frames),
            ("tickstock_gateway_replaced_messages", "unsent messages replaced by a newer one", s.replaced),
            ("tickstock_gateway_connections", "WebSocket connections accepted", s.connections_total),
            ("tickstock_gateway_client_errors", "invalid client messages", s.client_errors),
            ("tickstock_gateway_resumed_channels", "channels caught up from history", s.resumes),
            ("tickstock_gateway_reset_channels", "channels whose history was gone (client told to reset)", s.resets),
            ("tickstock_gateway_redis_reconnects", "Redis subscription reconnects", s.redis_reconnects),
            ("tickstock_gateway_rate_limited_messages", "client messages refused by the rate limit", s.rate_limited),
            ("tickstock_gateway_internal_errors", "client messages the gateway failed on", s.internal_errors),
            ("tickstock_gateway_redis_errors", "Redis commands failed on a client's behalf", s.redis_errors),
            ("tickstock_gateway_database_errors", "REST requests answered 503 (PostgreSQL failed)", s.database_errors),
            ("tickstock_gateway_watchlist_changes", "watchlist changes applied to following sessions", s.watchlist_changes),
            (
                "tickstock_gateway_watchlist_unannounced",
                "watchlist changes stored but not announced (Redis failed)",
                s.watchlist_unannounced,
            ),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        dropped = CounterMetricFamily(
            "tickstock_gateway_dropped_clients", "clients disconnected by the gateway", labels=["reason"]
        )
        for reason, n in sorted(s.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        rejected = CounterMetricFamily("tickstock_gateway_rejected_handshakes", "refused connections", labels=["status"])
        for status, n in sorted(s.rejected.items()):
            rejected.add_metric([str(status)], n)
        yield rejected
        ignored = CounterMetricFamily("tickstock_gateway_ignored_messages", "Redis messages not relayed", labels=["reason"])
        for reason, n in sorted(s.ignored.items()):
            ignored.add_metric([reason], n)
        yield ignored
        restarts = CounterMetricFamily("tickstock_gateway_task_restarts", "background task restarts", labels=["task"])
        for name, t in sorted(s.tasks.items()):
            restarts.add_metric([name], t.restarts)
        yield restarts
        d = self._depths()
        yield GaugeMetricFamily("tickstock_gateway_open_connections", "connected clients", value=s.connections)
        yield GaugeMetricFamily("tickstock_gateway_queue_messages", "unsent messages, all clients", value=d.pending_total)
        yield GaugeMetricFamily(
            "tickstock_gateway_queue_messages_max", "unsent messages of the fullest client", value=d.pending_max
        )
        yield GaugeMetricFamily("tickstock_gateway_socket_buffer_bytes", "bytes in socket write buffers", value=d.buffered_bytes)
        yield GaugeMetricFamily(
            "tickstock_gateway_redis_lag_seconds", "Redis publish to gateway receipt (probe)", value=s.redis_lag_s
        )
        yield GaugeMetricFamily(
            "tickstock_gateway_redis_up", "1 while the Redis subscription is connected", value=float(s.redis_connected)
        )
        yield GaugeMetricFamily(
            "tickstock_gateway_dev_mode", "1 in development mode (no authentication)", value=float(s.dev_mode)
        )
        if self._ready is not None:
            yield GaugeMetricFamily(
                "tickstock_ready", "1 while the gateway is ready (what /readyz answers)", value=float(self._ready())
            )


def exposition(stats: Stats, depths: Callable[[], QueueDepths], ready: Callable[[], bool] | None = None) -> bytes:
    """The gateway's metrics, then the process-wide ones (PostgreSQL/Redis retries, reconnects) of prometheus_client's registry."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, depths, ready))
    return generate_latest(registry) + generate_latest(REGISTRY)
