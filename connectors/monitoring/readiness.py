"""What `/readyz` and `/healthz` answer, from what the parts of one process report.

A process is *ready* when every condition holds: each reported condition is ok and fresh (a
condition reported with a time to live goes stale when its reporter stops reporting, e.g. a
Kafka source whose worker is stuck), and no dependency is failing (a retry loop of
`connectors.backoff.with_backoff`, or the bridge's feed, marks its dependency failing until
it succeeds again). Conditions that were never reported do not count: a part announces itself
(`set(..., ok=False)`) as soon as it exists if it must be ready before the process is.

A process is *alive* unless its work has stalled: heartbeats (a source partition's poll) older
than the stall limit while no dependency is failing. A flow waiting out a PostgreSQL outage
stops polling by design; restarting it would not help, so that is not ready, but alive.

>>> r = Readiness()
>>> r.set("kafka t#0", False, "not caught up yet")
>>> r.verdict(now=0.0)["ready"]
False
>>> r.set("kafka t#0", True, "lag 0")
>>> key = r.failing("postgresql", "upserting bars: OperationalError")
>>> v = r.verdict(now=0.0); v["ready"], v["failing"]
(False, {'postgresql': ['upserting bars: OperationalError']})
>>> r.recovered(key)
>>> r.verdict(now=0.0)["ready"]
True
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Condition:
    ok: bool
    detail: str
    at: float  # monotonic time of the report
    ttl_s: float | None  # stale (not ok) this long after the report


Probe = Callable[[], tuple[bool, str]]  # evaluated at request time, from the server's thread


class Readiness:
    """Conditions, dependency failures, probes and heartbeats of one process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conditions: dict[str, Condition] = {}
        self._failing: dict[int, tuple[str, str, float]] = {}  # key -> dependency, detail, since
        self._probes: dict[str, Probe] = {}
        self._heartbeats: dict[str, float] = {}
        self._keys = itertools.count(1)

    # ---- reports ------------------------------------------------------------------------
    def set(self, name: str, ok: bool, detail: str = "", *, ttl_s: float | None = None, now: float | None = None) -> None:
        at = time.monotonic() if now is None else now
        with self._lock:
            self._conditions[name] = Condition(ok, detail, at, ttl_s)

    def remove(self, name: str) -> None:
        with self._lock:
            self._conditions.pop(name, None)
            self._heartbeats.pop(name, None)

    def failing(self, dependency: str, detail: str) -> int:
        """`dependency` fails for one caller until `recovered(key)`; several callers may fail at once."""
        with self._lock:
            key = next(self._keys)
            self._failing[key] = (dependency, detail[:500], time.monotonic())
            return key

    def recovered(self, key: int) -> None:
        with self._lock:
            self._failing.pop(key, None)

    def probe(self, name: str, check: Probe) -> None:
        """A check run at each request (e.g. a metadata request to Kafka, with a short timeout)."""
        with self._lock:
            self._probes[name] = check

    def heartbeat(self, name: str, now: float | None = None) -> None:
        self._heartbeats[name] = time.monotonic() if now is None else now  # one dict store: no lock on the hot path

    def clear(self) -> None:
        with self._lock:
            self._conditions.clear()
            self._failing.clear()
            self._probes.clear()
            self._heartbeats.clear()

    # ---- verdicts -----------------------------------------------------------------------
    def verdict(self, now: float | None = None) -> dict:
        """`{ready, conditions: {name: {ok, detail, age_s}}, failing: {dependency: [details]}}`."""
        now = time.monotonic() if now is None else now
        with self._lock:
            conditions = dict(self._conditions)
            failing = list(self._failing.values())
            probes = dict(self._probes)
        report: dict[str, dict] = {}
        for name, c in sorted(conditions.items()):
            age = now - c.at
            ok, detail = c.ok, c.detail
            if ok and c.ttl_s is not None and age > c.ttl_s:
                ok, detail = False, f"no report for {age:.0f} s (last: {c.detail})"
            report[name] = {"ok": ok, "detail": detail, "age_s": round(age, 1)}
        for name, check in sorted(probes.items()):
            try:
                ok, detail = check()
            except Exception as exc:  # noqa: BLE001 - a probe that fails is a dependency that is not there
                ok, detail = False, f"{type(exc).__name__}: {exc}"[:300]
            report[name] = {"ok": ok, "detail": detail, "age_s": 0.0}
        down: dict[str, list[str]] = {}
        for dependency, detail, _ in failing:
            down.setdefault(dependency, []).append(detail)
        ready = not down and all(c["ok"] for c in report.values())
        return {"ready": ready, "conditions": report, "failing": down}

    def liveness(self, stall_s: float, now: float | None = None) -> dict:
        """`{alive, stalled: {name: seconds}}`: stalled heartbeats count only while no dependency fails."""
        now = time.monotonic() if now is None else now
        with self._lock:
            beats = dict(self._heartbeats)
            failing = bool(self._failing)
        stalled = {name: round(now - at, 1) for name, at in sorted(beats.items()) if now - at > stall_s}
        return {"alive": not stalled or failing, "stalled": stalled, "dependency_failing": failing}


READINESS = Readiness()
"""The process's one instance: sources, sinks, retry loops and the bridge report here."""
