"""Live bridge: Massive (Polygon) stocks WebSocket -> Kafka, one event per message, key = symbol.

Run it with ``python -m connectors.polygon_bridge`` (settings: `BridgeSettings` below, plus the
Kafka/topic variables of `flows.settings.Settings`).

Why it is built this way:
- Events are forwarded untouched: a frame is split by `connectors.feed_frames` (two C calls for
  a well-formed frame) into each event's exact byte slice and the few fields the bridge reads
  (`ev`/`sym`/`t`/`e`). Per event there is one `produce` call and no Python callback: only
  failed deliveries call back (`delivery.report.only.error`), acknowledged counts come from
  the producer's queue length, and the event-time gap is sampled once per frame.
- Any frame is survived: what is not an event (not JSON, not UTF-8, no `ev`, a `sym` that is
  not a symbol, too large for Kafka) goes to the dead-letter topic with the reason, built by
  `connectors.kafka.dead_letter.letter` (bounded: a prefix, the size and a hash), and every good
  event of the same frame is still forwarded, once.
- Nothing read is lost: the idempotent producer (`acks=all`) retries without a deadline, and
  the producer queue is the bounded in-flight window (events and bytes): when it is full the
  bridge stops reading the socket until Kafka drains it. A failed delivery is judged
  (`connectors.kafka.errors`): transient ones are produced again after a capped, jittered
  backoff; a record Kafka will never take is dead-lettered; an error that refuses the bridge
  itself (authorization, unknown topic) stops it with exit code 4. A stop waits at most
  BRIDGE_STOP_TIMEOUT_S for Kafka, then writes what is still in flight to the spool
  (`connectors.bridge_spool`), which the next start produces first.
- One connection loop: the official `massive.WebSocketClient` keeps the protocol's pieces (URL,
  TLS, subscription messages), but a session is our own single connection with a timeout on
  every handshake step, so every failure (refused, hung, odd replies, dropped) reaches one
  loop with capped exponential backoff + jitter, a fresh subscription and a logged gap. The
  client's own `connect` retries connection failures with its own hidden backoff and waits
  for the first message without a timeout.
- Memory is bounded whatever the feed sends: the window, the retry queues (they hold only
  records that left the window), the frame size, the remembered symbols and the counters by
  event type (a feed of a million distinct `ev` values folds them into `(other)`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import random
import re
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from operator import attrgetter
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.bridge_spool import Record, Spool, SpoolError
from connectors.feed_frames import Head
from connectors.feed_frames import split_frame as _split
from connectors.kafka.dead_letter import SHA256, TRUNCATED, letter
from connectors.kafka.errors import DEAD_LETTER, RENEW, STOP, TAKEN_BACK, judge
from flows.settings import Settings
from schemas.symbols import RULE, SYMBOL_PATTERN, is_symbol

log = logging.getLogger("tickstock.bridge")

EXIT_BAD_SETTINGS: Final = 2
EXIT_KEY_REFUSED: Final = 2
EXIT_MAX_CONNECTIONS: Final = 3
EXIT_KAFKA_REFUSED: Final = 4
EXIT_NOT_SPOOLED: Final = 5  # records were read that neither Kafka nor the spool took: loud

MAX_SYMBOLS_REMEMBERED: Final = 100_000  # valid symbols seen (US equities: ~12k); beyond, checked each time
MAX_EVENT_TYPES: Final = 32  # distinct `ev` values counted by name; the rest as OTHER
MAX_EVENT_TYPE_CHARS: Final = 16
OTHER: Final = "(other)"
TAKE_BACK_TIMEOUT_S: Final = 10.0  # for the producer to hand back purged records
QUIET_S: Final = 30.0  # this long without a failure (beyond twice the backoff cap), backoff starts over

_SUBSCRIPTION = re.compile(rf"[A-Z]{{1,10}}\.(\*|{SYMBOL_PATTERN})")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's legal topic names


def _default_spool_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "tickstock" / "bridge-spool"


def _seconds(default: float, low: float, high: float, description: str) -> Any:
    return Field(default, ge=low, le=high, allow_inf_nan=False, description=description)


class BridgeSettings(BaseSettings):
    """Where the feed is and how the bridge behaves (environment variables, no prefix)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True)

    api_key: str = Field(
        validation_alias=AliasChoices("massive_api_key", "polygon_api_key", "api_key"), min_length=1, max_length=1024
    )
    massive_feed: str = Field("socket.massive.com", description="socket.massive.com (real time) or delayed.massive.com")
    massive_url: str | None = Field(None, description="full endpoint URL; overrides the feed (e.g. ws://127.0.0.1:8765/stocks)")
    massive_subscriptions: str = Field("T.*,Q.*,A.*,AM.*", max_length=1_000_000)
    bridge_max_in_flight: int = Field(100_000, ge=1, le=10_000_000, description="events handed to Kafka, not yet acknowledged")
    bridge_max_in_flight_mb: int = Field(256, ge=1, le=16_384, description="the same window in MiB of records")
    bridge_max_frame_mb: int = Field(16, ge=1, le=1024, description="largest WebSocket frame read (a larger one drops the connection)")
    bridge_backoff_initial_s: float = _seconds(0.5, 0.001, 60, "first reconnect delay")
    bridge_backoff_max_s: float = _seconds(30.0, 0.001, 3600, "reconnect delay cap")
    bridge_retry_backoff_initial_s: float = _seconds(0.1, 0.001, 60, "first delay before a failed delivery is produced again")
    bridge_retry_backoff_max_s: float = _seconds(5.0, 0.001, 600, "cap of that delay")
    bridge_handshake_timeout_s: float = _seconds(10.0, 0.1, 600, "for each step of connect, greeting, auth")
    bridge_stop_timeout_s: float = _seconds(10.0, 0, 3600, "on SIGTERM, how long Kafka may take what is in flight before it is spooled")
    bridge_spool_dir: Path = Field(default_factory=_default_spool_dir, description="where a stop writes what Kafka did not take")
    bridge_health_interval_s: float = _seconds(10.0, 0.01, 86_400, "health line interval")
    bridge_idempotence: bool = Field(True, description="false only for a broker that forgets producer state (in-memory Tansu restarts)")

    @field_validator("massive_feed")
    @classmethod
    def _host(cls, v: str) -> str:
        if not _HOST.fullmatch(v):
            raise ValueError("must be a host name, optionally with :port (e.g. socket.massive.com)")
        return v

    @field_validator("massive_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = urlsplit(v)
            port_ok = parts.port is None or 0 < parts.port
        except ValueError as exc:
            raise ValueError(f"not a URL ({exc})") from None
        if parts.scheme not in ("ws", "wss") or not parts.hostname or not port_ok or len(v) > 2000:
            raise ValueError("must be a ws:// or wss:// URL with a host (e.g. wss://socket.massive.com/stocks)")
        return v

    @field_validator("massive_subscriptions")
    @classmethod
    def _channels(cls, v: str) -> str:
        channels = [s.strip() for s in v.split(",") if s.strip()]
        if not channels:
            raise ValueError("names no channel (e.g. T.*,Q.*,A.*,AM.*)")
        bad = [c for c in channels if not _SUBSCRIPTION.fullmatch(c)]
        if bad:
            raise ValueError(f"{bad[0][:60]!r} is not a channel: an event type, '.', then '*' or a symbol (T.*, AM.AAPL)")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> BridgeSettings:
        if self.bridge_backoff_initial_s > self.bridge_backoff_max_s:
            raise ValueError("BRIDGE_BACKOFF_INITIAL_S must not exceed BRIDGE_BACKOFF_MAX_S")
        if self.bridge_retry_backoff_initial_s > self.bridge_retry_backoff_max_s:
            raise ValueError("BRIDGE_RETRY_BACKOFF_INITIAL_S must not exceed BRIDGE_RETRY_BACKOFF_MAX_S")
        return self

    def url(self) -> str:
        return self.massive_url or f"wss://{self.massive_feed}/stocks"

    def subscriptions(self) -> list[str]:
        return [s.strip() for s in self.massive_subscriptions.split(",") if s.strip()]


class BadSettings(SystemExit):
    """A setting the bridge cannot run with: the message names it; exit code 2, no traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_BAD_SETTINGS)
        self.message = message

    def __str__(self) -> str:
        return self.message


def settings_problem(exc: ValidationError) -> str:
    """Pydantic's errors as `VARIABLE=value: what is wrong`, one clause each (the key is never shown)."""
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]).upper() if error["loc"] else ""
        if name in ("MASSIVE_API_KEY", "POLYGON_API_KEY", "API_KEY"):
            if error["type"] == "missing":
                parts.append("MASSIVE_API_KEY (or POLYGON_API_KEY) is not set")
            else:
                parts.append(f"MASSIVE_API_KEY: {error['msg']}")
            continue
        value = error.get("input")
        shown = f"={str(value)[:80]!r}" if name and isinstance(value, str | int | float) else ""
        parts.append(f"{name}{shown}: {error['msg']}" if name else str(error["msg"]))
    return "; ".join(parts)


def load_settings() -> tuple[BridgeSettings, Settings]:
    """Both settings, or BadSettings saying which variable is wrong and why."""
    try:
        bridge, settings = BridgeSettings(), Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        raise BadSettings(f"polygon_bridge: bad settings: {settings_problem(exc)}") from None
    topics = {
        "TOPIC_TRADES": settings.topic_trades, "TOPIC_QUOTES": settings.topic_quotes,
        "TOPIC_SECOND_AGGS": settings.topic_second_aggs, "TOPIC_MINUTE_AGGS": settings.topic_minute_aggs,
        "TOPIC_DEAD_LETTER": settings.topic_dead_letter,
    }  # fmt: skip
    for name, topic in topics.items():
        if not _TOPIC.fullmatch(topic) or topic in (".", ".."):
            raise BadSettings(f"polygon_bridge: bad settings: {name}={topic[:80]!r}: not a Kafka topic name "
                              "(1-249 characters of letters, digits, '.', '_', '-')")  # fmt: skip
    return bridge, settings


class BridgeFatal(Exception):
    """The feed told us to stop (key refused, account slot taken): exit with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class KafkaRefused(Exception):
    """Kafka refuses the bridge itself (authorization, authentication, unknown topic): exit 4."""


class FeedProtocolError(Exception):
    """The feed answered a handshake step with something other than the protocol's reply."""


def backoff_s(attempt: int, initial: float, maximum: float, rng: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with jitter: initial * 2**attempt, at most `maximum`, times 0.5-1.

    The exponent is capped before it is computed, so any attempt count (a weekend of failures,
    a million) gives a finite delay: `2**attempt` alone overflows a float after 1,023 attempts.

    >>> backoff_s(0, 0.5, 30, rng=lambda: 1.0), backoff_s(3, 0.5, 30, rng=lambda: 0.0), backoff_s(10**9, 0.5, 30, rng=lambda: 1.0)
    (0.5, 2.0, 30.0)
    """
    exponent = min(max(attempt, 0), 64)  # 2**64 * any initial >= 0.001 exceeds any maximum
    return min(maximum, initial * 2.0**exponent) * (0.5 + rng() / 2)


def _power_of_two(n: int) -> bool:
    """For logging the 1st, 2nd, 4th, 8th ... occurrence, not every one."""
    return n & (n - 1) == 0


def _text(value: Any, limit: int) -> str:
    """A status field of any JSON type as bounded text for logs and decisions."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


def _event_ms(head: Head) -> int:
    """The event's time in ms when it is a plausible one (any JSON value may be there)."""
    t = head.t or head.e
    return t if type(t) is int and 0 < t < 1 << 53 else 0


_ev = attrgetter("ev")


class Stats:
    """Counters the health line reports, bounded whatever the feed sends.

    `events_in` counts what the feed sent per event type (statuses aside), `out` what went to its
    topic; `acked`/`in_flight` come from the producer (Kafka reports failures only, so a
    successful delivery costs no Python call). The event-time gap is sampled once per frame.
    At most MAX_EVENT_TYPES event types are counted by name (short ones, first seen first);
    any other is counted as OTHER.
    """

    def __init__(self) -> None:
        self.events_in: Counter[str] = Counter()  # includes "status", not reported
        self.not_forwarded: Counter[str] = Counter()  # ignored types and dead-lettered events, by label
        self.types: set[str] = {"T", "Q", "A", "AM", "status", OTHER}
        self.handed = 0  # records handed to the producer (events, dead letters, spooled records)
        self.reconnects = 0
        self.delivery_errors = 0
        self.dead_letters: Counter[str] = Counter()  # by kind
        self.ignored = 0  # valid events of a type with no topic (e.g. LULD)
        self.gap_samples = 0
        self.gap_ms_sum = 0
        self.gap_ms_max = 0

    def label(self, ev: str) -> str:
        """`ev` itself while it is one of the types counted by name, else OTHER."""
        if ev in self.types:
            return ev
        if len(self.types) < MAX_EVENT_TYPES + 6 and len(ev) <= MAX_EVENT_TYPE_CHARS:
            self.types.add(ev)
            return ev
        return OTHER

    def count_frame(self, heads: list[Head]) -> None:
        counts = self.events_in
        known = len(counts)
        counts.update(map(_ev, heads))  # one C loop per frame
        if len(counts) > known:  # a type not seen before: keep it by name only if there is room
            for ev in [ev for ev in counts if ev not in self.types]:
                label = self.label(ev)
                if label != ev:
                    counts[label] += counts.pop(ev)

    def events_total(self) -> int:
        return sum(self.events_in.values()) - self.events_in["status"]

    def sample_gap(self, event_ms: int) -> None:
        gap = time.time_ns() // 1_000_000 - event_ms
        self.gap_samples += 1
        self.gap_ms_sum += gap
        if gap > self.gap_ms_max:
            self.gap_ms_max = gap

    def events_out(self) -> dict[str, int]:
        out = {ev: n - self.not_forwarded[ev] for ev, n in self.events_in.items()
               if ev != "status" and n > self.not_forwarded[ev]}  # fmt: skip
        if self.dead_letters:
            out["dead_letter"] = sum(self.dead_letters.values())
        return out

    def line(self, in_flight: int) -> str:
        """One health line; the gap figures cover the frames since the previous line."""
        mean = self.gap_ms_sum / self.gap_samples if self.gap_samples else 0.0
        events_in = {ev: n for ev, n in self.events_in.items() if ev != "status"}
        line = (
            f"health in={events_in} out={self.events_out()} acked={self.handed - in_flight} "
            f"in_flight={in_flight} reconnects={self.reconnects} delivery_errors={self.delivery_errors} "
            f"malformed={self.dead_letters['malformed']} ignored={self.ignored} "
            f"too_large={self.dead_letters['too_large']} "
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
        # Records out of the producer, to produce again (all of them left the window, so the
        # window bounds them): transient failures, after a backoff; dead letters, at once.
        self.retry: deque[Record] = deque()
        self.letters: deque[Record] = deque()
        self.unsent: list[Record] = []  # read, never handed over (a stop interrupted a frame): spooled
        self.retry_at = 0.0  # monotonic time before which failed records are not produced again
        self.retry_attempt = 0
        self.retry_delay = 0.0  # the last backoff chosen (reported in logs)
        self.last_failure = 0.0
        self.fatal_error: str | None = None  # the producer is unusable (e.g. idempotence state lost)
        self.replace_at = 0.0
        self.replace_attempt = 0
        self.kafka_refused: str | None = None  # Kafka refuses the bridge itself: stop
        self._taking_back = False  # our own purge: its reports are records taken back, not failures
        self.producer = self._make_producer()
        self.last_event_ms = 0
        self.gap_since: float | None = None  # wall time of the last disconnect, until data resumes
        self.reconnect_attempt = 0
        self.symbols: set[str] = set()  # valid symbols seen (bounded)
        self.fatal_status: BridgeFatal | None = None  # a fatal status inside a data frame
        self.status_lines = 0
        self.spool_files: list[Path] = []  # spool files produced at start, until acknowledged

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
                "queue.buffering.max.kbytes": self.cfg.bridge_max_in_flight_mb * 1024,
                "delivery.report.only.error": True,  # successes cost no Python call; failures come back
                "on_delivery": self._failed,
                "error_cb": self._client_error,
            }
        )

    def _client_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal_error = str(err)
            log.error("kafka producer fatal error: %s", err)
        elif judge(err)[0] == STOP:
            self.kafka_refused = f"{err.name()}: {err.str()}"
            log.error("kafka refuses the bridge: %s", err)
        else:
            log.warning("kafka: %s", err)

    def _failed(self, err: KafkaError, msg: Message, headers: list[tuple[str, bytes]] | None = None) -> None:
        """A record Kafka did not take: judge the error, then keep, dead-letter or stop.

        A delivery report carries no headers, so a dead letter passes its own along.
        """
        record: Record = (msg.topic(), msg.key(), msg.value(), headers)
        if self._taking_back and err.code() in TAKEN_BACK:
            self.retry.append(record)
            return
        self.stats.delivery_errors += 1
        verdict, kind = judge(err)
        if verdict == DEAD_LETTER:
            self._refuse_record(record, kind or "malformed", f"Kafka refused the record: {err.name()}: {err.str()}")
            return
        self.retry.append(record)
        if verdict == STOP:
            self.kafka_refused = f"{err.name()}: {err.str()} (for topic {msg.topic()})"
            return
        if verdict == RENEW and self.fatal_error is None:
            self.fatal_error = f"{err.name()}: {err.str()}"  # replaced (with backoff), then produced again
        self._back_off()
        if _power_of_two(self.stats.delivery_errors):  # 1, 2, 4, 8, ...: not a line per record
            log.warning("delivery failed (%s); producing it again in %.2f s; %d failures so far",
                        err, self.retry_delay, self.stats.delivery_errors)  # fmt: skip

    def _back_off(self) -> None:
        """Schedule the next resend round (one per burst of failures), later each round, capped."""
        now = time.monotonic()
        if now - self.last_failure > 2 * self.cfg.bridge_retry_backoff_max_s + QUIET_S:
            self.retry_attempt = 0  # a quiet spell: start again from the initial delay
        self.last_failure = now
        if self.retry_at <= now:
            self.retry_delay = backoff_s(
                self.retry_attempt, self.cfg.bridge_retry_backoff_initial_s, self.cfg.bridge_retry_backoff_max_s
            )
            self.retry_at = now + self.retry_delay
            self.retry_attempt += 1

    def _refuse_record(self, record: Record, kind: str, reason: str) -> None:
        """A record Kafka will never take goes to the dead-letter topic; a dead letter it refuses
        is shrunk to its headers (size, hash, reason stay); one refused even then stops the bridge."""
        topic, key, value, headers = record
        if topic == self.dead_letter_topic:
            if not value:
                self.retry.append(record)
                self.kafka_refused = f"the dead-letter topic {topic} refuses even an empty dead letter ({reason})"
                return
            kept = [(k, v) for k, v in headers or [] if k != TRUNCATED]
            if not any(k == SHA256 for k, _ in kept):
                kept.append((SHA256, hashlib.sha256(value).hexdigest().encode()))
            kept.append((TRUNCATED, b"true"))
            self.letters.append((topic, key, b"", kept))
            log.warning("the dead-letter topic refused a dead letter (%s); writing it with its headers only", reason)
            return
        self.letters.append(self._letter(value, kind, reason, topic, key))
        self.stats.dead_letters[kind] += 1
        if _power_of_two(self.stats.dead_letters[kind]):
            log.warning("dead-lettered a %d-byte record for %s as %s: %s (%d so far)",
                        len(value or b""), topic, kind, reason, self.stats.dead_letters[kind])  # fmt: skip

    def _letter(self, value: bytes | None, kind: str, reason: str, topic: str, key: bytes | None) -> Record:
        m = letter(value, kind=kind, reason=reason, topic=topic, partition=None, offset=None, key=key)
        return self.dead_letter_topic, m.key, m.value, m.headers  # type: ignore[return-value]

    def _hand(self, record: Record) -> bool:
        """Produce one record; False while it must wait (window full, transient refusal)."""
        topic, key, value, headers = record
        try:
            if headers is None:
                self.producer.produce(topic, value, key)
            else:
                self.producer.produce(topic, value, key, headers=headers,
                                      on_delivery=functools.partial(self._failed, headers=headers))  # fmt: skip
            return True
        except BufferError:
            return False
        except KafkaException as exc:
            return self._refused_at_produce(exc.args[0], record)

    def _refused_at_produce(self, err: KafkaError, record: Record) -> bool:
        """produce() itself refused: True when the record was dealt with (dead-lettered)."""
        verdict, kind = judge(err)
        if verdict == DEAD_LETTER:
            self._refuse_record(record, kind or "malformed", f"Kafka refused the record: {err.name()}: {err.str()}")
            return True
        if verdict == RENEW:
            self.fatal_error = self.fatal_error or str(err)
        elif verdict == STOP:
            self.kafka_refused = f"{err.name()}: {err.str()} (for topic {record[0]})"
        else:
            self._back_off()
        return False

    def in_flight(self) -> int:
        """Records read and handed on but not yet acknowledged by Kafka."""
        return len(self.producer) + len(self.retry) + len(self.letters)

    def _resend_failed(self) -> bool:
        """Produce dead letters, then (once their backoff is over) failed records; True when none is left."""
        if self.fatal_error is not None and time.monotonic() >= self.replace_at:
            self._replace_producer()
        letters = self.letters
        while letters:
            if not self._hand(letters[0]):
                return False
            letters.popleft()
        retry = self.retry
        if not retry:
            return True
        if time.monotonic() < self.retry_at or self.fatal_error is not None:
            return False
        while retry:
            record = retry.popleft()
            if not self._hand(record):
                retry.appendleft(record)
                return False
        return True

    def _may_produce(self) -> bool:
        """Whether new records may go out: failed ones are out again and no backoff is running."""
        return self._resend_failed() and self.fatal_error is None and time.monotonic() >= self.retry_at

    def _take_back(self) -> int:
        """Purge the producer; its records land in `self.retry` (their delivery reports say so).

        Returns what the producer still counts afterwards: librdkafka's count includes events
        for the application (e.g. a connection error), so this is logged, not taken as a loss.
        """
        self._taking_back = True
        try:
            self.producer.purge(in_queue=True, in_flight=True, blocking=True)  # reports queued on return
            deadline = time.monotonic() + TAKE_BACK_TIMEOUT_S
            while len(self.producer) and time.monotonic() < deadline:
                if not self.producer.poll(0.05):
                    break  # every queued report served
        finally:
            self._taking_back = False
        return len(self.producer)

    def _replace_producer(self) -> None:
        """After a fatal producer error: fail over every record it held to a fresh producer.

        Records the broker may already have written go out again (at-least-once for this
        rare case; the flow counts a duplicated trade once), but none is dropped. Replacements
        back off like deliveries, so a broker that keeps refusing is not hammered.
        """
        now = time.monotonic()
        if now - self.replace_at > 2 * self.cfg.bridge_retry_backoff_max_s + QUIET_S:
            self.replace_attempt = 0
        kept = self._take_back()
        if kept:
            log.warning("the failed producer still counts %d items (error events, or records it kept)", kept)
        self.producer = self._make_producer()
        delay = backoff_s(self.replace_attempt, self.cfg.bridge_retry_backoff_initial_s, self.cfg.bridge_retry_backoff_max_s)
        self.replace_at = time.monotonic() + delay
        self.replace_attempt += 1
        self.retry_at = 0.0
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
        interval = self.cfg.bridge_health_interval_s
        next_health = time.monotonic() + interval
        while True:
            self.producer.poll(0)
            if self.kafka_refused is not None:
                raise KafkaRefused(self.kafka_refused)
            self._resend_failed()
            now = time.monotonic()
            if now >= next_health:
                log.info(self.stats.line(self.in_flight()))
                next_health = max(next_health + interval, now)
            await asyncio.sleep(min(0.05, interval))

    async def drain(self) -> None:
        """Wait, without a deadline, until Kafka acknowledged every record read (tests; `stop` bounds it)."""
        next_log = time.monotonic() + 5
        while self.in_flight():
            self._resend_failed()
            self.producer.poll(0.1)
            if time.monotonic() >= next_log:
                log.warning("stopping: waiting for Kafka to acknowledge %d events", self.in_flight())
                next_log += 5
            await asyncio.sleep(0)

    async def stop(self, spool: Spool) -> int:
        """Give Kafka at most BRIDGE_STOP_TIMEOUT_S for what is in flight, spool the rest.

        Returns the exit code this adds: 0, or EXIT_NOT_SPOOLED when records could be neither
        delivered nor spooled.
        """
        timeout = self.cfg.bridge_stop_timeout_s
        deadline = time.monotonic() + timeout
        while self.in_flight() and self.kafka_refused is None and (left := deadline - time.monotonic()) > 0:
            self._resend_failed()
            self.producer.poll(min(0.05, left))
            await asyncio.sleep(0)
        if not self.in_flight() and not self.unsent:
            spool.remove(self.spool_files)
            return 0
        kept = self._take_back()
        records = [*self.retry, *self.letters, *self.unsent]
        self.retry.clear()
        self.letters.clear()
        self.unsent = []
        if kept:
            log.warning("the producer still counts %d items after taking its records back (error events, "
                        "or records it kept)", kept)  # fmt: skip
        if not records:  # what the producer counted were not records
            spool.remove(self.spool_files)
            return 0
        try:
            path = spool.write(records)
        except OSError as exc:
            log.error("could not write the spool in %s (%s): %d records read from the feed are lost",
                      spool.directory, exc, len(records))  # fmt: skip
            return EXIT_NOT_SPOOLED
        spool.remove(self.spool_files)  # what they still held is in the new file
        why = f"Kafka refuses them ({self.kafka_refused})" if self.kafka_refused else \
            f"Kafka did not acknowledge them within BRIDGE_STOP_TIMEOUT_S={timeout:g} s"  # fmt: skip
        log.warning("stopping: %s; wrote %d records to %s; the next start produces them first (a record "
                    "that was in flight to the broker may then be written twice)", why, len(records), path)  # fmt: skip
        return 0

    async def produce_spool(self, spool: Spool) -> None:
        """Before reading the feed: produce what an earlier stop spooled, and wait until Kafka has it.

        Waiting keeps order: the spooled records are older than anything the feed sends next.
        """
        files = spool.pending()
        if not files:
            return
        self.spool_files = files
        count = 0
        for path in files:
            for record in spool.read(path):
                while not self._hand(record):
                    await self._wait_for_room()
                self.stats.handed += 1
                count += 1
        log.warning("producing %d records an earlier stop spooled (%s) before reading the feed",
                    count, ", ".join(p.name for p in files))  # fmt: skip
        while self.in_flight():
            await self._wait_for_room()
        spool.remove(files)
        self.spool_files = []
        log.info("the spooled records are in Kafka; spool files removed")

    # --- feed ----------------------------------------------------------------------------
    async def on_frame(self, frame: str | bytes) -> None:
        """Hand every event of a frame to Kafka; returns (lets the client read on) only then."""
        heads, raws, refused = _split(frame)
        while (self.retry or self.letters or self.fatal_error) and not self._may_produce():
            await self._wait_for_room()  # failed records first: they are older, and in the window
        for piece in refused:
            self._dead_letter(piece.raw, piece.reason, "")
        if self.gap_since is not None:
            self._resumed(heads)
        done = 0
        try:
            done = self._forward(heads, raws, 0)
            while done < len(heads):
                await self._wait_for_room()
                if self._may_produce():
                    done = self._forward(heads, raws, done)
        except asyncio.CancelledError:
            self._keep_unsent(heads, raws, done)
            raise
        self.stats.count_frame(heads)
        for head in reversed(heads):  # the frame's last event samples the gap
            if head.ev in self.topics:
                t = _event_ms(head)
                if t:
                    self.stats.sample_gap(t)
                    if t > self.last_event_ms:
                        self.last_event_ms = t
                break
        if self.fatal_status is not None:
            raise self.fatal_status

    def _forward(self, heads: list[Head], raws: list[Any], start: int) -> int:
        """Produce events `start:`; returns how far it got (less than all when the window filled)."""
        produce = self.producer.produce
        topics = self.topics
        symbols = self.symbols
        n = len(heads)
        i = start
        other = 0  # statuses, ignored types, dead letters (which count themselves)
        topic: str | None = None
        sym = ""
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020, PLW2901 - `i` is where to resume
                    head = heads[i]
                    topic = topics.get(head.ev)
                    sym = head.sym
                    if topic is not None and (sym in symbols or self._admit(sym)):
                        produce(topic, raws[i], sym)
                    else:
                        self._other(head, raws[i])
                        other += 1
                i = n
            except BufferError:
                break  # the window is full: on_frame waits for room, then resumes at `i`
            except KafkaException as exc:
                assert topic is not None
                if not self._refused_at_produce(exc.args[0], (topic, sym.encode(), bytes(raws[i]), None)):
                    break  # on_frame waits, then resumes at `i`: stop reading rather than drop the event
                self.stats.not_forwarded[self.stats.label(heads[i].ev)] += 1  # its dead letter went instead
                i += 1
        self.stats.handed += i - start - other
        return i

    def _admit(self, sym: str) -> bool:
        if not is_symbol(sym):
            return False
        if len(self.symbols) < MAX_SYMBOLS_REMEMBERED:
            self.symbols.add(sym)
        return True

    def _keep_unsent(self, heads: list[Head], raws: list[Any], start: int) -> None:
        """A stop interrupted a frame: what it had not handed over yet goes to the spool."""
        for i in range(start, len(heads)):
            head = heads[i]
            topic = self.topics.get(head.ev)
            if topic is not None and is_symbol(head.sym):
                self.unsent.append((topic, head.sym.encode(), bytes(raws[i]), None))
            elif head.ev != "status":
                self._other(head, raws[i], hand=False)

    def _other(self, head: Head, raw: Any, hand: bool = True) -> None:
        """What is not an event to forward: a status, a type without a topic, or bad input."""
        ev = head.ev
        if ev == "status":
            self._status(head.status, head.message)
            return
        label = self.stats.label(ev)
        if ev in self.topics:
            reason = f"{ev} event without a symbol (sym)" if not head.sym else \
                f"{ev} event whose sym {head.sym[:40]!r} is not a symbol ({RULE})"  # fmt: skip
            self._dead_letter(bytes(raw), reason, self.topics[ev], hand)
        elif ev:
            self.stats.ignored += 1
            if self.stats.not_forwarded[label] == 0 or (label == OTHER and _power_of_two(self.stats.ignored)):
                log.warning("feed sends %.40r events, which have no topic; counting them, not forwarding", ev)
        else:
            self._dead_letter(bytes(raw), "event without an event type (ev)", "", hand)
        self.stats.not_forwarded[label] += 1

    def _dead_letter(self, raw: bytes, reason: str, topic: str, hand: bool = True) -> None:
        """Bad input goes to the dead-letter topic with the reason, like the flow's (never dropped)."""
        record = self._letter(raw, "malformed", reason, topic, None)
        if not hand or not self._hand(record):
            self.letters.append(record)  # produced as soon as there is room
        self.stats.dead_letters["malformed"] += 1
        self.stats.handed += 1
        if _power_of_two(self.stats.dead_letters["malformed"]):
            log.warning("dead-lettered %s (%d so far): %.200r", reason, self.stats.dead_letters["malformed"], raw)

    def _status(self, status: Any, message: Any) -> None:
        """A status inside a data frame: logged (bounded); a fatal one ends the bridge after the frame."""
        fatal = self.on_status(_text(status, 100), _text(message, 500))
        if fatal is not None and self.fatal_status is None:
            self.fatal_status = fatal

    def on_status(self, status: str, message: str) -> BridgeFatal | None:
        """Log a status (the first ones of each connection, then 1 in 2**n); return it when fatal."""
        self.status_lines += 1
        if self.status_lines <= 100 or _power_of_two(self.status_lines):
            if status in ("connected", "auth_success", "success"):
                log.info("feed status %s: %s", status, message)
            else:
                log.warning("feed status %s: %s", status, message)
        return fatal_for(status, message)

    def on_handshake(self, frame: str | bytes, step: str) -> None:
        """The greeting or the reply to auth: a fatal status raises; auth must be answered by auth_success."""
        statuses = [(_text(h.status, 100), _text(h.message, 500)) for h in _split(frame).heads if h.ev == "status"]
        for status, message in statuses:
            fatal = self.on_status(status, message)
            if fatal is not None:
                raise fatal
        if step == "auth" and not any(status == "auth_success" for status, _ in statuses):
            raise FeedProtocolError(f"the reply to auth has no auth_success: {_text(frame, 200)}")
        if step == "greeting" and not statuses:
            log.warning("the feed's greeting is not a status: %s", _text(frame, 200))

    def _resumed(self, heads: list[Head]) -> None:
        t = next((_event_ms(h) for h in heads if h.ev in self.topics and _event_ms(h)), 0)
        if not t:
            return
        assert self.gap_since is not None
        log.warning(
            "feed resumed after %.1f s; event time %d -> %d ms (gap %d ms)",
            time.time() - self.gap_since, self.last_event_ms, t, t - self.last_event_ms if self.last_event_ms else 0,
        )
        self.gap_since = None

    def _client(self) -> Any:
        from massive import WebSocketClient

        bridge = self
        cfg = self.cfg

        class _Client(WebSocketClient):  # type: ignore[misc]
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
                reason = f"{type(exc).__name__}: {_text(str(exc), 300)}"
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
        return f"{type(exc).__name__}: {_text(str(exc), 300)}"

    async def feed(self, spool: Spool) -> None:
        await self.produce_spool(spool)
        await self.run()


async def serve(bridge: Bridge, spool: Spool) -> int:
    """Run until SIGTERM/SIGINT, a fatal status or Kafka refusing us; stop within the stop timeout."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    feed = asyncio.ensure_future(bridge.feed(spool))
    pump = asyncio.ensure_future(bridge.pump())
    stop = asyncio.ensure_future(signalled.wait())
    await asyncio.wait({feed, pump, stop}, return_when=asyncio.FIRST_COMPLETED)
    for task in (feed, pump, stop):
        task.cancel()
    outcomes = await asyncio.gather(feed, pump, stop, return_exceptions=True)
    code = 0
    bug: BaseException | None = None
    for outcome in outcomes:
        if isinstance(outcome, BridgeFatal) and not code:
            print(f"polygon_bridge: {outcome}", file=sys.stderr)
            code = outcome.code
        elif isinstance(outcome, KafkaRefused) and not code:
            print(f"polygon_bridge: Kafka refuses the bridge's records ({outcome}); check the topics, "
                  "KAFKA_BOOTSTRAP_SERVERS and the broker's authorization", file=sys.stderr)  # fmt: skip
            code = EXIT_KAFKA_REFUSED
        elif isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            bug = bug or outcome
    if signalled.is_set():
        log.info("stopping: signal received")
    code = await bridge.stop(spool) or code
    log.info(bridge.stats.line(bridge.in_flight()))
    if bug is not None:
        raise bug  # a bug of ours: crash loudly, after what was read is in Kafka or the spool
    return code


def wait_for_kafka(settings: Settings, topics: list[str]) -> int:
    """Wait (backing off, forever) until Kafka answers; 0, or EXIT_KAFKA_REFUSED if topics are missing."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers, "log_level": 0})
    attempt = 0
    while True:
        try:
            existing = set(admin.list_topics(timeout=5).topics)
            break
        except KafkaException as exc:
            delay = backoff_s(attempt, 0.5, 30.0)
            attempt += 1
            log.warning("Kafka unreachable at KAFKA_BOOTSTRAP_SERVERS=%r (%s); retrying in %.1f s",
                        settings.kafka_bootstrap_servers, exc.args[0], delay)  # fmt: skip
            time.sleep(delay)
    missing = [t for t in topics if t not in existing]
    if missing:
        print(f"polygon_bridge: missing Kafka topics {missing} at {settings.kafka_bootstrap_servers}; "
              "create them (make topics)", file=sys.stderr)  # fmt: skip
        return EXIT_KAFKA_REFUSED
    return 0


def split_frame(frame: bytes | str) -> list[tuple[Head, bytes]]:
    """A frame's events with their original JSON bytes (no re-encoding); what is not an event left out."""
    split = _split(frame)
    return [(head, bytes(raw)) for head, raw in zip(split.heads, split.raws, strict=True)]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    bridge_settings, settings = load_settings()
    spool = Spool(bridge_settings.bridge_spool_dir)
    try:
        spool.lock()
    except SpoolError as exc:
        raise BadSettings(f"polygon_bridge: bad settings: {exc}") from None
    topics = [settings.topic_trades, settings.topic_quotes, settings.topic_second_aggs, settings.topic_minute_aggs,
              settings.topic_dead_letter]  # fmt: skip
    code = wait_for_kafka(settings, topics)
    if code:
        return code
    return asyncio.run(serve(Bridge(bridge_settings, settings), spool))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BadSettings as exc:
        print(exc, file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
