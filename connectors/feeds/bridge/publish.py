"""The bridge's side of Kafka: nothing read is lost, whatever the broker does.

The idempotent producer (`acks=all`) retries without a deadline, and its queue is the bounded
in-flight window (events and bytes): when it is full the bridge stops reading the socket until
Kafka drains it. Only failed deliveries call back (`delivery.report.only.error`), so a
successful one costs no Python call. A failed delivery is judged (`connectors.kafka.errors`):
transient ones are produced again after a capped, jittered backoff; a record Kafka will never
take is dead-lettered (`connectors.kafka.dead_letter`); an error that refuses the bridge itself
(authorization, unknown topic) is `KafkaRefused`, which stops it. A stop waits at most
BRIDGE_STOP_TIMEOUT_S for Kafka, then writes what is still in flight to the spool
(`connectors.feeds.bridge.spool`), which the next start produces first.

This producer is not `connectors.kafka.producer`'s throughput one: it has no delivery deadline,
a window sized by the bridge's settings, and judges every failure. `Publisher` is one half of
`connectors.feeds.bridge.relay.Bridge`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import deque
from pathlib import Path
from typing import Final, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from connectors.backoff import backoff_s
from connectors.feeds.bridge.backoff import QUIET_S
from connectors.feeds.bridge.health import Stats, power_of_two
from connectors.feeds.bridge.settings import BridgeSettings
from connectors.feeds.bridge.spool import Record, Spool
from connectors.kafka import clients
from connectors.kafka.dead_letter import SHA256, TRUNCATED, letter
from connectors.kafka.errors import DEAD_LETTER, RENEW, STOP, TAKEN_BACK, judge
from connectors.kafka.producer import LINGER_MS
from connectors.kafka.settings import KafkaSettings

log = logging.getLogger("tickstock.bridge")

EXIT_NOT_SPOOLED: Final = 5  # records were read that neither Kafka nor the spool took: loud
TAKE_BACK_TIMEOUT_S: Final = 10.0  # for the producer to hand back purged records


class KafkaRefused(Exception):
    """Kafka refuses the bridge itself (authorization, authentication, unknown topic): exit 4."""


class Publisher:
    """The producer, its window, the records to produce again, and the stop that spools the rest."""

    cfg: BridgeSettings
    stats: Stats

    def __init__(self, kafka: KafkaSettings) -> None:
        self.dead_letter_topic = kafka.topic_dead_letter
        self.kafka = kafka
        self.bootstrap = kafka.kafka_bootstrap_servers
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
        self.spool_files: list[Path] = []  # spool files produced at start, until acknowledged

    def _make_producer(self) -> Producer:
        return clients.producer(
            self.kafka,
            {
                "enable.idempotence": self.cfg.bridge_idempotence,
                "acks": "all",
                "message.timeout.ms": 0,  # no deadline: retry until Kafka is back
                "linger.ms": LINGER_MS,  # one broker object per batch: see connectors.kafka.producer
                "compression.type": "lz4",
                "queue.buffering.max.messages": self.cfg.bridge_max_in_flight,
                "queue.buffering.max.kbytes": self.cfg.bridge_max_in_flight_mb * 1024,
                "delivery.report.only.error": True,  # successes cost no Python call; failures come back
                "on_delivery": self._failed,
                "error_cb": self._client_error,
            },
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
        record: Record = (msg.topic() or "", msg.key(), msg.value(), headers)
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
        if power_of_two(self.stats.delivery_errors):  # 1, 2, 4, 8, ...: not a line per record
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
        if power_of_two(self.stats.dead_letters[kind]):
            log.warning("dead-lettered a %d-byte record for %s as %s: %s (%d so far)",
                        len(value or b""), topic, kind, reason, self.stats.dead_letters[kind])  # fmt: skip

    def _letter(self, value: bytes | None, kind: str, reason: str, topic: str, key: bytes | None) -> Record:
        m = letter(value, kind=kind, reason=reason, topic=topic, partition=None, offset=None, key=key)
        return self.dead_letter_topic, m.key, m.value, m.headers

    def _hand(self, record: Record) -> bool:
        """Produce one record; False while it must wait (window full, transient refusal)."""
        topic, key, value, headers = record
        try:
            if headers is None:
                self.producer.produce(topic, value, key)
            else:
                # produce() only reads the list; it is typed for any header value, ours are bytes
                kafka_headers = cast(list[tuple[str, str | bytes | None]], headers)
                self.producer.produce(topic, value, key, headers=kafka_headers,
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
