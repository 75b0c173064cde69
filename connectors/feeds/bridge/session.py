"""The bridge's side of the feed: one WebSocket session at a time, reconnected forever.

The official `massive.WebSocketClient` keeps the protocol's pieces (URL, TLS, subscription
messages), but a session is our own single connection with a timeout on every handshake step
(connect, greeting, auth), so every failure (refused, hung, odd replies, dropped) reaches one
loop with capped exponential backoff + jitter, a fresh subscription and a logged gap. The
client's own `connect` retries connection failures with its own hidden backoff and waits for
the first message without a timeout.

A status that means the feed will not serve us (key refused, account slot taken) is a
`BridgeFatal` with the exit code; anything else is logged (bounded) and the session goes on.
`Session` is one half of `connectors.feeds.bridge.relay.Bridge`; the relay hands it `on_frame`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Final
from urllib.parse import urlsplit

from connectors.backoff import backoff_s
from connectors.feeds.bridge.frames import Head, event_ms
from connectors.feeds.bridge.frames import split_frame as _split
from connectors.feeds.bridge.health import Stats, bounded, power_of_two
from connectors.feeds.bridge.settings import BridgeSettings
from connectors.monitoring.metrics import RECONNECTS
from connectors.monitoring.readiness import READINESS

FEED_CONDITION: Final = "polygon feed"  # /readyz: subscribed to the feed

log = logging.getLogger("tickstock.bridge")

EXIT_KEY_REFUSED: Final = 2
EXIT_MAX_CONNECTIONS: Final = 3


class BridgeFatal(Exception):
    """The feed told us to stop (key refused, account slot taken): exit with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class FeedProtocolError(Exception):
    """The feed answered a handshake step with something other than the protocol's reply."""


def fatal_for(status: str, message: str) -> BridgeFatal | None:
    if status in ("auth_failed", "auth_timeout"):
        return BridgeFatal(EXIT_KEY_REFUSED, f"Massive refused the API key ({status}: {message}); check MASSIVE_API_KEY")
    if status == "max_connections":
        return BridgeFatal(
            EXIT_MAX_CONNECTIONS,
            f"max_connections: another connection holds this account's WebSocket slot ({message}); "
            "stop the other client or use a key with more connections",
        )
    return None


class Session:
    """Connect, greet, authenticate, subscribe, read frames; when the feed drops, back off and again."""

    cfg: BridgeSettings
    stats: Stats
    topics: dict[str, str]  # event type -> Kafka topic

    def __init__(self) -> None:
        self.last_event_ms = 0
        self.gap_since: float | None = None  # wall time of the last disconnect, until data resumes
        self.reconnect_attempt = 0
        self.fatal_status: BridgeFatal | None = None  # a fatal status inside a data frame
        self.status_lines = 0
        self.subscribed = False  # connected, authenticated, subscriptions sent (/readyz)

    async def on_frame(self, frame: str | bytes) -> None:
        """Every data frame of a session; the relay forwards its events."""
        raise NotImplementedError

    def _status(self, status: Any, message: Any) -> None:
        """A status inside a data frame: logged (bounded); a fatal one ends the bridge after the frame."""
        fatal = self.on_status(bounded(status, 100), bounded(message, 500))
        if fatal is not None and self.fatal_status is None:
            self.fatal_status = fatal

    def on_status(self, status: str, message: str) -> BridgeFatal | None:
        """Log a status (the first ones of each connection, then 1 in 2**n); return it when fatal."""
        self.status_lines += 1
        if self.status_lines <= 100 or power_of_two(self.status_lines):
            if status in ("connected", "auth_success", "success"):
                log.info("feed status %s: %s", status, message)
            else:
                log.warning("feed status %s: %s", status, message)
        return fatal_for(status, message)

    def on_handshake(self, frame: str | bytes, step: str) -> None:
        """The greeting or the reply to auth: a fatal status raises; auth must be answered by auth_success."""
        statuses = [(bounded(h.status, 100), bounded(h.message, 500)) for h in _split(frame).heads if h.ev == "status"]
        for status, message in statuses:
            fatal = self.on_status(status, message)
            if fatal is not None:
                raise fatal
        if step == "auth" and not any(status == "auth_success" for status, _ in statuses):
            raise FeedProtocolError(f"the reply to auth has no auth_success: {bounded(frame, 200)}")
        if step == "greeting" and not statuses:
            log.warning("the feed's greeting is not a status: %s", bounded(frame, 200))

    def _resumed(self, heads: list[Head]) -> None:
        t = next((event_ms(h) for h in heads if h.ev in self.topics and event_ms(h)), 0)
        if not t:
            return
        assert self.gap_since is not None
        log.warning(
            "feed resumed after %.1f s; event time %d -> %d ms (gap %d ms)",
            time.time() - self.gap_since,
            self.last_event_ms,
            t,
            t - self.last_event_ms if self.last_event_ms else 0,
        )
        self.gap_since = None

    def _client(self) -> Any:
        from massive import WebSocketClient

        bridge = self
        cfg = self.cfg

        class _Client(WebSocketClient):
            async def session(self) -> None:
                """One connection: greeting, auth, subscribe, then frames until it closes.

                Every step has a timeout and every failure raises to `Bridge.run` (no retry here).
                """
                from websockets.asyncio.client import connect

                timeout = cfg.bridge_handshake_timeout_s
                async with connect(self.url, ssl=self._ssl_context(), max_size=cfg.bridge_max_frame_mb * 1024 * 1024,
                                   open_timeout=timeout, close_timeout=1) as ws:  # fmt: skip
                    self.websocket = ws
                    bridge.on_handshake(await asyncio.wait_for(ws.recv(), timeout), "greeting")
                    await ws.send(json.dumps({"action": "auth", "params": self.api_key}))
                    bridge.on_handshake(await asyncio.wait_for(ws.recv(), timeout), "auth")
                    await self._subscribe(self.scheduled_subs)
                    self.subs = set(self.scheduled_subs)
                    bridge.subscribed = True
                    READINESS.set(FEED_CONDITION, True, f"subscribed at {cfg.url()}")
                    async for frame in ws:
                        await bridge.on_frame(frame)

        url = urlsplit(cfg.url())
        client = _Client(
            api_key=cfg.api_key,
            feed=url.netloc,
            market="stocks",
            raw=True,
            subscriptions=cfg.subscriptions(),
            max_reconnects=0,
            secure=url.scheme == "wss",
        )
        client.url = cfg.url()
        return client

    async def run(self) -> None:
        """Connect, read until the feed drops, back off, reconnect; forever."""
        from websockets.exceptions import ConnectionClosed, WebSocketException

        while True:
            before = self.stats.events_total()
            log.info("connecting to %s (subscriptions %s)", self.cfg.url(), self.cfg.massive_subscriptions[:200])
            try:
                await self._client().session()
                reason = "server closed the connection"
            except ConnectionClosed as exc:
                reason = self._closed(exc)
            except (WebSocketException, OSError, TimeoutError, FeedProtocolError) as exc:
                reason = f"{type(exc).__name__}: {bounded(str(exc), 300)}"
            self.subscribed = False
            READINESS.set(FEED_CONDITION, False, f"disconnected: {reason}")
            RECONNECTS.labels("polygon").inc()
            if self.stats.events_total() > before:
                self.reconnect_attempt = 0  # a session that carried data resets the backoff
            delay = backoff_s(self.reconnect_attempt, self.cfg.bridge_backoff_initial_s, self.cfg.bridge_backoff_max_s)
            self.reconnect_attempt += 1
            self.stats.reconnects += 1
            self.status_lines = 0
            if self.gap_since is None:
                self.gap_since = time.time()
            log.warning("disconnected (%s); last event time %d ms; reconnecting in %.2f s (attempt %d)",
                        reason, self.last_event_ms, delay, self.reconnect_attempt)  # fmt: skip
            await asyncio.sleep(delay)

    def _closed(self, exc: Any) -> str:
        sent = getattr(exc, "sent", None)
        if sent is not None and sent.code == 1009:
            return (f"the feed sent a frame larger than BRIDGE_MAX_FRAME_MB={self.cfg.bridge_max_frame_mb}; "
                    "the connection was closed and that frame is lost")  # fmt: skip
        return f"{type(exc).__name__}: {bounded(str(exc), 300)}"
