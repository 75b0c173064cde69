"""Live bridge: Massive (Polygon) stocks WebSocket -> Kafka, one event per message, key = symbol.

Run it with ``python -m connectors.polygon_bridge`` (settings: `BridgeSettings` below, plus the
Kafka/topic variables of `flows.settings.Settings`).

Why it is built this way:
- The official `massive.WebSocketClient` speaks the protocol (auth, subscribe, resubscribe) in
  *raw* mode, so every frame reaches us unparsed, status messages included. Connect/auth statuses
  never reach a raw processor, so `_Client` taps `_log_server_statuses` to see them.
- Events are forwarded untouched: a frame is decoded as `list[msgspec.Raw]`, so each Kafka value
  is the exact byte slice of its object in the frame; only `ev`/`sym`/`t`/`e` are read.
- Nothing acknowledged is lost: the idempotent producer (`acks=all`) retries without a deadline,
  a failed delivery is produced again, and the producer queue is the bounded in-flight window:
  when it is full the bridge stops reading the socket until Kafka drains it.
- The client's own reconnect is switched off (`max_reconnects=0`) so every disconnect goes
  through one loop with exponential backoff + jitter, a fresh subscription and a logged gap.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import sys
import time
from collections import Counter, deque
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.settings import Settings

log = logging.getLogger("tickstock.bridge")

EXIT_KEY_REFUSED: Final = 2
EXIT_MAX_CONNECTIONS: Final = 3
FATAL_STATUSES: Final = {"auth_failed", "auth_timeout", "max_connections"}


class BridgeSettings(BaseSettings):
    """Where the feed is and how the bridge behaves (environment variables, no prefix)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True)

    api_key: str = Field(validation_alias=AliasChoices("massive_api_key", "polygon_api_key", "api_key"))
    massive_feed: str = Field("socket.massive.com", description="socket.massive.com (real time) or delayed.massive.com")
    massive_url: str | None = Field(None, description="full endpoint URL; overrides the feed (e.g. ws://127.0.0.1:8765/stocks)")
    massive_subscriptions: str = "T.*,Q.*,A.*,AM.*"
    bridge_max_in_flight: int = Field(100_000, ge=1, description="events handed to Kafka but not yet acknowledged")
    bridge_backoff_initial_s: float = Field(0.5, gt=0)
    bridge_backoff_max_s: float = Field(30.0, gt=0)
    bridge_health_interval_s: float = Field(10.0, gt=0)
    bridge_idempotence: bool = Field(True, description="false only for a broker that forgets producer state (in-memory Tansu restarts)")

    def url(self) -> str:
        return self.massive_url or f"wss://{self.massive_feed}/stocks"

    def subscriptions(self) -> list[str]:
        return [s.strip() for s in self.massive_subscriptions.split(",") if s.strip()]


class BridgeFatal(Exception):
    """The feed told us to stop (key refused, account slot taken): exit with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Head(msgspec.Struct, gc=False):
    """The few fields the bridge reads from an event; the rest stays in the raw bytes."""

    ev: str = ""
    sym: str = ""
    t: int = 0
    e: int = 0
    status: str = ""
    message: str = ""


_frame = msgspec.json.Decoder(list[msgspec.Raw])
_head = msgspec.json.Decoder(_Head)


def split_frame(frame: bytes) -> list[tuple[_Head, bytes]]:
    """A frame's events with their original JSON bytes (no re-encoding)."""
    return [(_head.decode(raw), bytes(raw)) for raw in _frame.decode(frame)]


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


class Stats:
    """Counters the health line reports."""

    def __init__(self) -> None:
        self.events_in: Counter[str] = Counter()
        self.events_out: Counter[str] = Counter()
        self.reconnects = 0
        self.delivery_errors = 0
        self.malformed_frames = 0
        self.gap_ms_max = 0
        self.gap_ms_sum = 0

    def line(self, in_flight: int) -> str:
        out = sum(self.events_out.values())
        mean = self.gap_ms_sum / out if out else 0.0
        return (
            f"health in={dict(self.events_in)} out={dict(self.events_out)} in_flight={in_flight} "
            f"reconnects={self.reconnects} delivery_errors={self.delivery_errors} malformed={self.malformed_frames} "
            f"event_to_publish_ms(mean={mean:.0f} max={self.gap_ms_max})"
        )


class Bridge:
    """Frames in, Kafka records out; owns the producer, the counters and the reconnect loop."""

    def __init__(self, bridge: BridgeSettings, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.cfg = bridge
        self.topics = {
            "T": settings.topic_trades,
            "Q": settings.topic_quotes,
            "A": settings.topic_second_aggs,
            "AM": settings.topic_minute_aggs,
        }
        self.producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "enable.idempotence": bridge.bridge_idempotence,
                "acks": "all",
                "message.timeout.ms": 0,  # no deadline: retry until Kafka is back
                "linger.ms": 5,
                "compression.type": "lz4",
                "queue.buffering.max.messages": bridge.bridge_max_in_flight,
                "error_cb": self._client_error,
            }
        )
        self.stats = Stats()
        self.retry: deque[tuple[str, bytes, bytes, int]] = deque()
        self.last_event_ms = 0
        self.gap_since: float | None = None  # wall time of the last disconnect, until data resumes

    # --- Kafka ---------------------------------------------------------------------------
    def _client_error(self, err: Any) -> None:
        log.warning("kafka: %s", err)

    def _delivered(self, topic: str, key: bytes, value: bytes, ev: str, t: int) -> Any:
        def report(err: Any, _msg: Any) -> None:
            if err is not None:
                self.stats.delivery_errors += 1
                self.retry.append((topic, key, value, t))
                return
            self.stats.events_out[ev] += 1
            if t:
                gap = int(time.time() * 1000) - t
                self.stats.gap_ms_sum += gap
                self.stats.gap_ms_max = max(self.stats.gap_ms_max, gap)

        return report

    async def _produce(self, topic: str, key: bytes, value: bytes, ev: str, t: int) -> None:
        """Hand one event to Kafka; while the in-flight window is full, wait (stop reading)."""
        callback = self._delivered(topic, key, value, ev, t)
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=callback)
                return
            except BufferError:
                self.producer.poll(0)
                await asyncio.sleep(0.05)

    async def _resend_failed(self) -> None:
        while self.retry:
            topic, key, value, t = self.retry.popleft()
            ev = next((e for e, tp in self.topics.items() if tp == topic), "?")
            await self._produce(topic, key, value, ev, t)

    async def pump(self) -> None:
        """Serve delivery reports, resend failures, log health, whether frames come or not."""
        next_health = time.monotonic() + self.cfg.bridge_health_interval_s
        while True:
            self.producer.poll(0)
            await self._resend_failed()
            if time.monotonic() >= next_health:
                log.info(self.stats.line(len(self.producer)))
                next_health += self.cfg.bridge_health_interval_s
            await asyncio.sleep(0.05)

    async def drain(self) -> None:
        """Stop only when Kafka acknowledged every event we read (no timeout: nothing is dropped)."""
        while len(self.producer) or self.retry:
            await self._resend_failed()
            self.producer.poll(0.1)
            await asyncio.sleep(0)

    # --- feed ----------------------------------------------------------------------------
    async def on_frame(self, frame: str | bytes) -> None:
        data = frame.encode() if isinstance(frame, str) else frame
        try:
            events = split_frame(data)
        except msgspec.DecodeError as exc:
            self.stats.malformed_frames += 1
            log.warning("malformed frame (%s): %.200r", exc, data)
            return
        for head, value in events:
            if head.ev == "status":
                self.on_status(head.status, head.message)
                continue
            topic = self.topics.get(head.ev)
            self.stats.events_in[head.ev] += 1
            if topic is None or not head.sym:
                continue  # not ours (e.g. LULD); counted in, never published
            t = head.t or head.e
            if self.gap_since is not None:
                log.warning(
                    "feed resumed after %.1f s; event time %d -> %d ms (gap %d ms)",
                    time.time() - self.gap_since, self.last_event_ms, t, t - self.last_event_ms if self.last_event_ms else 0,
                )
                self.gap_since = None
            self.last_event_ms = max(self.last_event_ms, t)
            await self._produce(topic, head.sym.encode(), value, head.ev, t)
        self.producer.poll(0)

    def on_status(self, status: str, message: str) -> None:
        fatal = fatal_for(status, message)
        if fatal is not None:
            raise fatal
        if status in ("connected", "auth_success", "success"):
            log.info("feed status %s: %s", status, message)
        else:
            log.warning("feed status %s: %s", status, message)

    def _client(self) -> Any:
        from massive import WebSocketClient

        bridge = self

        class _Client(WebSocketClient):  # type: ignore[misc]
            def _log_server_statuses(self, msgs: list[Any]) -> None:
                for m in msgs:
                    if m.get("ev") == "status":
                        bridge.on_status(str(m.get("status", "")), str(m.get("message", "")))
                super()._log_server_statuses(msgs)

        url = urlsplit(self.cfg.url())
        client = _Client(
            api_key=self.cfg.api_key,
            feed=url.netloc,
            market=url.path.strip("/") or "stocks",
            raw=True,
            subscriptions=self.cfg.subscriptions(),
            max_reconnects=0,
            secure=url.scheme == "wss",
        )
        client.url = self.cfg.url()
        return client

    async def run(self) -> None:
        """Connect, read until the feed drops, back off, reconnect; forever."""
        from massive.exceptions import AuthError
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        attempt = 0
        while True:
            before = sum(self.stats.events_in.values())
            log.info("connecting to %s (subscriptions %s)", self.cfg.url(), self.cfg.massive_subscriptions)
            try:
                await self._client().connect(self.on_frame)
                reason = "server closed the connection"
            except AuthError as exc:
                raise fatal_for("auth_failed", str(exc)) from None  # type: ignore[misc]
            except (ConnectionClosed, InvalidHandshake, OSError, asyncio.TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if sum(self.stats.events_in.values()) > before:
                attempt = 0  # a session that carried data resets the backoff
            delay = min(self.cfg.bridge_backoff_max_s, self.cfg.bridge_backoff_initial_s * 2**attempt)
            delay *= random.uniform(0.5, 1.0)
            attempt += 1
            self.stats.reconnects += 1
            if self.gap_since is None:
                self.gap_since = time.time()
            log.warning("disconnected (%s); last event time %d ms; reconnecting in %.2f s", reason, self.last_event_ms, delay)
            await asyncio.sleep(delay)


async def serve(bridge: Bridge) -> int:
    """Run until SIGTERM/SIGINT or a fatal status; always drain Kafka before returning."""
    loop = asyncio.get_running_loop()
    feed = asyncio.ensure_future(bridge.run())
    pump = asyncio.ensure_future(bridge.pump())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, feed.cancel)
    code = 0
    try:
        await feed
    except asyncio.CancelledError:
        log.info("stopping: draining Kafka")
    except BridgeFatal as exc:
        print(f"polygon_bridge: {exc}", file=sys.stderr)
        code = exc.code
    pump.cancel()
    await bridge.drain()
    log.info(bridge.stats.line(0))
    return code


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from pydantic import ValidationError

    from connectors.synthetic import check_kafka

    try:
        bridge_settings, settings = BridgeSettings(), Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        missing = "MASSIVE_API_KEY (or POLYGON_API_KEY) is not set; " if "api_key" in str(exc) else ""
        raise SystemExit(f"polygon_bridge: bad settings: {missing}{exc}") from None
    topics = [settings.topic_trades, settings.topic_quotes, settings.topic_second_aggs, settings.topic_minute_aggs]
    check_kafka(settings.kafka_bootstrap_servers, topics, False, settings.topic_partitions)
    return asyncio.run(serve(Bridge(bridge_settings, settings)))


if __name__ == "__main__":
    sys.exit(main())
