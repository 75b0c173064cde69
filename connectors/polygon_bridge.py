"""Live bridge: Massive (Polygon) stocks WebSocket -> Kafka, one event per message, key = symbol.

Run it with ``python -m connectors.polygon_bridge`` (settings: `BridgeSettings` below, plus the
Kafka/topic variables of `flows.settings.Settings`).

Why it is built this way:
- The official `massive.WebSocketClient` speaks the protocol (auth, subscribe, resubscribe) in
  *raw* mode, so every frame reaches us unparsed, status messages included. Connect/auth statuses
  never reach a raw processor, so `_Client` taps `_log_server_statuses` to see them.
- Events are forwarded untouched: each frame is decoded twice, each time in one C call, as
  `list[msgspec.Raw]` (so each Kafka value is the exact byte slice of its object in the frame)
  and as the list of the few fields the bridge reads (`ev`/`sym`/`t`/`e`). Per event there is
  one `produce` call and no Python callback: only failed deliveries call back
  (`delivery.report.only.error`), acknowledged counts come from the producer's queue length,
  and the event-time gap is sampled once per frame.
- Nothing acknowledged is lost: the idempotent producer (`acks=all`) retries without a deadline,
  a failed delivery is produced again, and the producer queue is the bounded in-flight window:
  when it is full the bridge stops reading the socket until Kafka drains it. Input the bridge
  cannot route (no `ev`, no `sym`, not JSON) goes to the dead-letter topic with the reason.
- The client's own reconnect is switched off (`max_reconnects=0`) so every disconnect goes
  through one loop with exponential backoff + jitter, a fresh subscription and a logged gap.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import signal
import sys
import time
from collections import Counter, deque
from operator import attrgetter
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.dead_letter import KIND, REASON, SOURCE_TOPIC
from flows.settings import Settings

log = logging.getLogger("tickstock.bridge")

EXIT_KEY_REFUSED: Final = 2
EXIT_MAX_CONNECTIONS: Final = 3


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


# A frame is decoded twice, each in one C call: once as the heads, once as the raw byte slices
# of its events. Cheaper than one decode call per event (the bridge's former hot spot).
_heads = msgspec.json.Decoder(list[_Head])
_raws = msgspec.json.Decoder(list[msgspec.Raw])
_head = msgspec.json.Decoder(_Head)
_DecodeErrors = (msgspec.DecodeError, msgspec.ValidationError)
_ev = attrgetter("ev")


def split_frame(frame: bytes | str) -> list[tuple[_Head, bytes]]:
    """A frame's events with their original JSON bytes (no re-encoding)."""
    return [(head, bytes(raw)) for head, raw in zip(_heads.decode(frame), _raws.decode(frame), strict=True)]


def _power_of_two(n: int) -> bool:
    """For logging the 1st, 2nd, 4th, 8th ... occurrence, not every one."""
    return n & (n - 1) == 0


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
    """Counters the health line reports.

    `events_in` counts what the feed sent per event type (statuses aside), `out` what went to its
    topic; `acked`/`in_flight` come from the producer (Kafka reports failures only, so a
    successful delivery costs no Python call). The event-time gap is sampled once per frame.
    """

    def __init__(self) -> None:
        self.events_in: Counter[str] = Counter()
        self.not_forwarded: Counter[str] = Counter()  # ignored types and dead-lettered events, by `ev`
        self.handed = 0  # records handed to the producer (events and dead letters)
        self.reconnects = 0
        self.delivery_errors = 0
        self.malformed = 0  # events or frames dead-lettered
        self.ignored = 0  # valid events of a type with no topic (e.g. LULD)
        self.gap_samples = 0
        self.gap_ms_sum = 0
        self.gap_ms_max = 0

    def count_frame(self, heads: list[_Head]) -> None:
        self.events_in.update(map(_ev, heads))  # one C loop per frame
        self.events_in.pop("status", None)

    def sample_gap(self, event_ms: int) -> None:
        gap = time.time_ns() // 1_000_000 - event_ms
        self.gap_samples += 1
        self.gap_ms_sum += gap
        if gap > self.gap_ms_max:
            self.gap_ms_max = gap

    def events_out(self) -> dict[str, int]:
        out = {ev: n - self.not_forwarded[ev] for ev, n in self.events_in.items() if n > self.not_forwarded[ev]}
        if self.malformed:
            out["dead_letter"] = self.malformed
        return out

    def line(self, in_flight: int) -> str:
        """One health line; the gap figures cover the frames since the previous line."""
        mean = self.gap_ms_sum / self.gap_samples if self.gap_samples else 0.0
        line = (
            f"health in={dict(self.events_in)} out={self.events_out()} acked={self.handed - in_flight} "
            f"in_flight={in_flight} reconnects={self.reconnects} delivery_errors={self.delivery_errors} "
            f"malformed={self.malformed} ignored={self.ignored} "
            f"event_to_publish_ms(mean={mean:.0f} max={self.gap_ms_max})"
        )
        self.gap_samples = self.gap_ms_sum = self.gap_ms_max = 0
        return line


class Bridge:
    """Frames in, Kafka records out; owns the producer, the counters and the reconnect loop."""

    def __init__(self, bridge: BridgeSettings, settings: Settings) -> None:
        self.cfg = bridge
        self.topics = {
            "T": settings.topic_trades,
            "Q": settings.topic_quotes,
            "A": settings.topic_second_aggs,
            "AM": settings.topic_minute_aggs,
        }
        self.dead_letter_topic = settings.topic_dead_letter
        self.bootstrap = settings.kafka_bootstrap_servers
        self.stats = Stats()
        self.retry: deque[tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]] = deque()  # to produce again
        self.fatal_error: str | None = None  # the producer is unusable (e.g. idempotence state lost)
        self.producer = self._make_producer()
        self.last_event_ms = 0
        self.gap_since: float | None = None  # wall time of the last disconnect, until data resumes
        self._ignored_types: set[str] = set()
        self.produce_errors = 0  # produce() calls refused outright (e.g. a fatal producer error)

    # --- Kafka ---------------------------------------------------------------------------
    def _make_producer(self) -> Producer:
        return Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": self.cfg.bridge_idempotence,
                "acks": "all",
                "message.timeout.ms": 0,  # no deadline: retry until Kafka is back
                "linger.ms": 5,
                "compression.type": "lz4",
                "queue.buffering.max.messages": self.cfg.bridge_max_in_flight,
                "queue.buffering.max.kbytes": 2_097_151,  # the window is counted in events, not bytes
                "delivery.report.only.error": True,  # successes cost no Python call; failures come back
                "on_delivery": self._failed,
                "error_cb": self._client_error,
            }
        )

    def _client_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal_error = str(err)
            log.error("kafka producer fatal error: %s", err)
        else:
            log.warning("kafka: %s", err)

    def _failed(self, err: KafkaError, msg: Message, headers: list[tuple[str, bytes]] | None = None) -> None:
        """A record Kafka did not take: keep it and produce it again (pump/drain).

        A delivery report carries no headers, so a dead letter passes its own along.
        """
        self.stats.delivery_errors += 1
        if _power_of_two(self.stats.delivery_errors):  # 1, 2, 4, 8, ...: not a line per record
            log.warning("delivery failed (%s), retrying; %d failures so far", err, self.stats.delivery_errors)
        self.retry.append((msg.topic(), msg.value(), msg.key(), headers))

    def in_flight(self) -> int:
        """Events read and handed on but not yet acknowledged by Kafka."""
        return len(self.producer) + len(self.retry)

    def _resend_failed(self) -> bool:
        """Produce failed records again; False while the window is full."""
        if self.fatal_error is not None:
            self._replace_producer()
        while self.retry:
            topic, value, key, headers = self.retry[0]
            try:
                self.producer.produce(topic, value, key, headers=headers)
            except BufferError:
                return False
            self.retry.popleft()
        return True

    def _replace_producer(self) -> None:
        """After a fatal producer error: fail over every record it held to a fresh producer.

        Records the broker may already have written go out again (at-least-once for this
        rare case; the flow counts a duplicated trade once), but none is dropped.
        """
        old, self.producer = self.producer, self._make_producer()
        old.purge(in_queue=True, in_flight=True, blocking=False)  # their failure reports land in self.retry
        while len(old):
            old.poll(0.1)
        log.error("kafka producer replaced after fatal error (%s); producing %d records again",
                  self.fatal_error, len(self.retry))  # fmt: skip
        self.fatal_error = None

    async def _wait_for_room(self) -> None:
        """The in-flight window is full (or Kafka refuses records): stop reading until that changes."""
        self.producer.poll(0)
        self._resend_failed()
        await asyncio.sleep(0.005)

    async def pump(self) -> None:
        """Serve failure reports, resend failures, log health, whether frames come or not."""
        next_health = time.monotonic() + self.cfg.bridge_health_interval_s
        while True:
            self.producer.poll(0)
            self._resend_failed()
            if time.monotonic() >= next_health:
                log.info(self.stats.line(self.in_flight()))
                next_health += self.cfg.bridge_health_interval_s
            await asyncio.sleep(min(0.05, self.cfg.bridge_health_interval_s))

    async def drain(self) -> None:
        """Stop only when Kafka acknowledged every event we read (no timeout: nothing is dropped)."""
        next_log = time.monotonic() + 5
        while self.in_flight():
            self._resend_failed()
            self.producer.poll(0.1)
            if time.monotonic() >= next_log:
                log.warning("stopping: waiting for Kafka to acknowledge %d events", self.in_flight())
                next_log += 5
            await asyncio.sleep(0)

    # --- feed ----------------------------------------------------------------------------
    async def on_frame(self, frame: str | bytes) -> None:
        """Hand every event of a frame to Kafka; returns (lets the client read on) only then."""
        try:
            heads = _heads.decode(frame)
            raws = _raws.decode(frame)
        except _DecodeErrors:
            await self._on_odd_frame(frame)
            return
        if self.gap_since is not None:
            self._resumed(heads)
        done = self._forward(heads, raws, 0)
        while done < len(heads):
            await self._wait_for_room()
            done = self._forward(heads, raws, done)
        self.stats.count_frame(heads)
        for head in reversed(heads):  # the frame's last event samples the gap
            t = head.t or head.e
            if t and head.ev in self.topics:
                self.stats.sample_gap(t)
                if t > self.last_event_ms:
                    self.last_event_ms = t
                break

    def _forward(self, heads: list[_Head], raws: list[msgspec.Raw], start: int) -> int:
        """Produce events `start:`; returns how far it got (less than all when the window filled)."""
        produce = self.producer.produce
        topics = self.topics
        i = start
        other = 0  # statuses, ignored types, dead letters (which count themselves)
        try:
            for i in range(start, len(heads)):  # noqa: B007 - `i` is where to resume
                head = heads[i]
                topic = topics.get(head.ev)
                if topic is not None and head.sym:
                    produce(topic, raws[i], head.sym)
                else:
                    self._other(head, raws[i])
                    other += 1
            i = len(heads)
        except BufferError:
            pass  # the window is full: on_frame waits for room, then resumes at `i`
        except KafkaException as exc:
            self._cannot_produce(exc)  # resumes at `i` too: stop reading rather than drop the event
        finally:
            self.stats.handed += i - start - other
        return i

    def _cannot_produce(self, exc: KafkaException) -> None:
        self.produce_errors += 1
        if _power_of_two(self.produce_errors):
            log.error("kafka refuses new records (%s); not reading the feed until it takes them (%d tries)",
                      exc, self.produce_errors)  # fmt: skip

    def _other(self, head: _Head, raw: msgspec.Raw) -> None:
        if head.ev == "status":
            self.on_status(head.status, head.message)
        else:
            self._not_forwarded(head, bytes(raw))

    def _not_forwarded(self, head: _Head, raw: bytes) -> None:
        """An event of a type we have no topic for is counted; one of ours without a symbol is dead-lettered."""
        if head.ev in self.topics:
            self._dead_letter(raw, f"{head.ev} event without a symbol (sym)", self.topics[head.ev], head.sym)
        elif head.ev:
            self.stats.ignored += 1
            if head.ev not in self._ignored_types:
                self._ignored_types.add(head.ev)
                log.warning("feed sends %r events, which have no topic; counting them, not forwarding", head.ev)
        else:
            self._dead_letter(raw, "event without an event type (ev)", "", head.sym)
        self.stats.not_forwarded[head.ev] += 1

    def _dead_letter(self, raw: bytes, reason: str, topic: str, key: str) -> None:
        """Bad input goes to the dead-letter topic with the reason, like the flow's (never dropped)."""
        headers = [(KIND, b"malformed"), (REASON, reason.encode()), (SOURCE_TOPIC, topic.encode())]
        resend = functools.partial(self._failed, headers=headers)
        self.producer.produce(self.dead_letter_topic, raw, key or None, headers=headers, on_delivery=resend)
        self.stats.malformed += 1
        self.stats.handed += 1
        if _power_of_two(self.stats.malformed):
            log.warning("dead-lettered %s (%d so far): %.200r", reason, self.stats.malformed, raw)

    async def _on_odd_frame(self, frame: str | bytes) -> None:
        """Slow path for a frame the fast decode refused: each event on its own, bad ones dead-lettered."""
        data = frame.encode() if isinstance(frame, str) else bytes(frame)
        try:
            raws = _raws.decode(data)
        except _DecodeErrors as exc:
            await self._dead_letter_when_room(data, f"frame is not a JSON array: {exc}")
            return
        for raw in raws:
            try:
                head = _head.decode(raw)
            except _DecodeErrors as exc:
                await self._dead_letter_when_room(bytes(raw), f"unreadable event: {exc}")
                continue
            if self.gap_since is not None:
                self._resumed([head])
            while not self._forward([head], [raw], 0):
                await self._wait_for_room()
            self.stats.count_frame([head])

    async def _dead_letter_when_room(self, raw: bytes, reason: str) -> None:
        while True:
            try:
                self._dead_letter(raw, reason, "", "")
                return
            except BufferError:
                pass
            except KafkaException as exc:
                self._cannot_produce(exc)
            await self._wait_for_room()

    def _resumed(self, heads: list[_Head]) -> None:
        t = next((h.t or h.e for h in heads if h.ev in self.topics and (h.t or h.e)), 0)
        if not t:
            return
        assert self.gap_since is not None
        log.warning(
            "feed resumed after %.1f s; event time %d -> %d ms (gap %d ms)",
            time.time() - self.gap_since, self.last_event_ms, t, t - self.last_event_ms if self.last_event_ms else 0,
        )
        self.gap_since = None

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
    log.info(bridge.stats.line(bridge.in_flight()))
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
    topics = [settings.topic_trades, settings.topic_quotes, settings.topic_second_aggs, settings.topic_minute_aggs,
              settings.topic_dead_letter]  # fmt: skip
    check_kafka(settings.kafka_bootstrap_servers, topics, False, settings.topic_partitions)
    return asyncio.run(serve(Bridge(bridge_settings, settings)))


if __name__ == "__main__":
    sys.exit(main())
