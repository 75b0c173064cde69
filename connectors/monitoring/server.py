"""The ops server of a process: `GET /healthz`, `/readyz`, `/metrics` on a port of its own.

A thread of the process (a `ThreadingHTTPServer`), so it answers while the dataflow or the
bridge's event loop is busy, and it reads what the process reports (`connectors.monitoring.readiness`)
and prometheus_client's default registry (every metric of the process, Bytewax's Python ones
included; Bytewax's own Rust metrics are only on its API server, see docs/monitoring.md).

- `/healthz`: 200 `{"status": "alive", ...}` while the process works (or waits on a failing
  dependency); 503 when its work has stalled for `LIVENESS_STALL_S`. Liveness probes restart on it.
- `/readyz`: 200 `{"ready": true, ...}` when every dependency answers and the input is caught up,
  else 503 with each condition and why. Readiness probes and alerts use it.
- `/metrics`: Prometheus text format 0.0.4, plus `tickstock_ready` (1/0) and `tickstock_up_seconds`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from connectors.monitoring.readiness import READINESS, Readiness

log = logging.getLogger("tickstock.monitoring")
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes (and the gateway says)


class CannotServe(Exception):
    """The ops port cannot be bound; the message names the variable to change."""


class _ReadyCollector:
    """`tickstock_ready` at scrape time, from the same verdict /readyz gives."""

    def __init__(self, readiness: Readiness, started: float) -> None:
        self._readiness = readiness
        self._started = started

    def collect(self) -> Iterable[GaugeMetricFamily]:
        ready = self._readiness.verdict()["ready"]
        yield GaugeMetricFamily("tickstock_ready", "1 while the process is ready (what /readyz answers)", value=float(ready))
        yield GaugeMetricFamily(
            "tickstock_up_seconds", "Seconds since the process started serving", value=time.monotonic() - self._started
        )


class OpsServer:
    """`/healthz`, `/readyz`, `/metrics` of one service on `host:port` (port 0: any free one)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        service: str,
        variable: str,
        stall_s: float = 300.0,
        readiness: Readiness = READINESS,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.service = service
        self.readiness = readiness
        self.stall_s = stall_s
        self._started = time.monotonic()
        self._extra = CollectorRegistry(auto_describe=False)
        self._extra.register(_ReadyCollector(readiness, self._started))
        self._registry = registry
        handler = type("Handler", (_Handler,), {"ops": self})
        try:
            self._http = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise CannotServe(
                f"cannot serve /healthz, /readyz, /metrics on {host}:{port} ({exc.strerror or exc}); "
                f"set {variable} (0 turns the server off) or OPS_HOST"
            ) from None
        self._http.daemon_threads = True
        self.host, self.port = host, self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, name=f"{service}-ops", daemon=True)

    def start(self) -> OpsServer:
        self._thread.start()
        log.info("%s: /healthz, /readyz, /metrics on http://%s:%d", self.service, self.host, self.port)
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    # ---- answers ------------------------------------------------------------------------
    def healthz(self) -> tuple[int, dict]:
        live = self.readiness.liveness(self.stall_s)
        body = {"status": "alive" if live["alive"] else "stalled", "service": self.service,
                "uptime_s": round(time.monotonic() - self._started, 1), **live}  # fmt: skip
        return (200 if live["alive"] else 503), body

    def readyz(self) -> tuple[int, dict]:
        verdict = self.readiness.verdict()
        return (200 if verdict["ready"] else 503), {"service": self.service, **verdict}

    def metrics(self) -> bytes:
        return generate_latest(self._registry) + generate_latest(self._extra)


class _Handler(BaseHTTPRequestHandler):
    ops: OpsServer
    server_version = "tickstock-ops"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                self._json(*self.ops.healthz())
            elif path == "/readyz":
                self._json(*self.ops.readyz())
            elif path == "/metrics":
                self._send(200, self.ops.metrics(), TEXT_FORMAT)
            else:
                self._json(404, {"detail": "not found: GET /healthz, /readyz or /metrics"})
        except Exception:  # a bug of ours: answered 500 and logged, never a dead server thread
            log.exception("ops server: %s failed", path[:100])
            self._json(500, {"detail": "internal error (logged)"})

    def do_HEAD(self) -> None:
        self._send(405, b"", "text/plain", allow=True)

    def do_POST(self) -> None:
        self.close_connection = True  # a body, if any, is not read
        self._json(405, {"detail": "only GET"}, allow=True)

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _json(self, status: int, body: dict[str, Any], allow: bool = False) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", allow)

    def _send(self, status: int, body: bytes, content_type: str, allow: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", "GET")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("ops server: " + format, *args)
