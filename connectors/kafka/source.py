"""Kafka input that hands the dataflow whole batches, not single messages, and rides out broker trouble.

Bytewax's own `KafkaSource` emits one item per message; at 100k+ messages/s the per-item
overhead alone would eat the budget. Here each consume call becomes one `RawBatch`; the offset
bookkeeping is the same (the partition's next offset is its recovery state, so a resumed flow
re-reads exactly what it had not committed).

What the broker does wrong is waited out, not raised:

- Transport errors, a restarting broker, a topic that is briefly gone: librdkafka reconnects;
  the partition logs (rate-limited) and keeps polling. Only a fatal client error raises.
- An offset no longer on the broker (deleted by retention, or the topic was recreated and is
  shorter now) is never a silent jump: the partition resumes where `KAFKA_START` says
  (`earliest` or `latest`), logs an error naming what was skipped, and counts it
  (`tickstock_kafka_offset_resets_total`). Real Kafka reports this as an error; a broker that
  just returns nothing past its end (Tansu) is caught from the client's statistics.
- `RawBatch.caught_up` markers (empty batches) say the partition has read everything the broker
  held a moment ago while the broker answers. The bar flow lets an idle partition's watermark
  follow the wall clock only on such evidence, so a broker outage is never mistaken for a quiet
  market (trades buffered upstream during the outage still land in their bars).

`hold` (the detection flow's, in the moments after a minute boundary) says how long messages
just read must wait before they go out: they wait in the partition, before the offset that is its
recovery state, so a restart reads them again. A finite input (`tail=False`) is never held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, cast

import msgspec
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Gauge

from connectors.kafka import clients
from connectors.kafka.admin import list_partitions
from connectors.kafka.settings import KafkaSettings
from connectors.monitoring.readiness import READINESS

log = logging.getLogger(__name__)

_IDLE_POLL = timedelta(milliseconds=5)
_STATS_INTERVAL_MS = 1000
_STATS_FRESH_S = 3.0  # statistics older than this say nothing about the broker now
_CAUGHT_UP_EVERY_S = 1.0  # at most one caught-up marker per partition per second
_BEYOND_END_SNAPSHOTS = 3  # consecutive statistics showing the position past the log's end
_NO_PARTITION_AFTER_S = 10.0  # listed, but no partition built here this long after: the process owns none
_READY_TTL_S = 15.0  # a partition's readiness without fresh statistics (its worker is stuck) goes stale
_value, _offset, _error = Message.value, Message.offset, Message.error

OFFSET_RESETS = Counter(
    "tickstock_kafka_offset_resets_total",
    "Times a partition's offset was no longer on the broker and it resumed where KAFKA_START says",
    ["topic", "partition", "start"],
)
CONSUMER_LAG = Gauge(
    "tickstock_kafka_consumer_lag_messages", "End offset minus the flow's position, per partition", ["topic", "partition"]
)
CONSUMED = Counter(
    "tickstock_kafka_consumed_messages_total", "Messages read from a partition (events in)", ["topic", "partition"]
)
CONSUMER_ERRORS = Counter(
    "tickstock_kafka_consumer_errors_total", "Errors the consumer reported and rode out, by code", ["topic", "code"]
)


class RawBatch(NamedTuple):
    """Consecutive messages of one partition: values untouched (None for a tombstone), with their offsets.

    An empty batch with `caught_up` set is a marker: the partition had read all the broker held,
    and the broker answered, when it was made.
    """

    topic: str
    partition: int
    offsets: Sequence[int]  # a range when contiguous, as they almost always are
    values: list[bytes | None]
    caught_up: bool = False

    @property
    def key(self) -> str:
        return f"{self.topic}#{self.partition}"


class _PartitionStats(msgspec.Struct):
    leader: int = -1
    fetch_state: str = ""
    hi_offset: int = -1
    next_offset: int = -1


class _TopicStats(msgspec.Struct):
    partitions: dict[str, _PartitionStats] = {}


class _BrokerStats(msgspec.Struct):
    nodeid: int = -1
    state: str = ""


class _Stats(msgspec.Struct):
    brokers: dict[str, _BrokerStats] = {}
    topics: dict[str, _TopicStats] = {}


_stats_decoder = msgspec.json.Decoder(_Stats)


class _BatchPartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(
        self, kafka: KafkaSettings, config: dict, topic: str, partition: int, offset: int, batch_size: int, tail: bool,
        start: int, ready_max_lag: int = 10_000, hold: Callable[[], float] | None = None,
    ) -> None:  # fmt: skip
        self._topic = topic
        self._partition = partition
        self._label = (topic, str(partition))
        self._consumed = CONSUMED.labels(*self._label)
        # /readyz: not ready until this partition's lag is known and at most `ready_max_lag`
        self._ready_name = f"kafka {topic}[{partition}]"
        self._ready_max_lag = ready_max_lag
        READINESS.set(self._ready_name, False, "not caught up yet: no statistics from the broker so far")
        READINESS.heartbeat(self._ready_name)
        self._next_offset = offset
        self._batch_size = batch_size
        self._tail = tail
        self._start = start  # OFFSET_BEGINNING / OFFSET_END: where to go when the offset is gone
        self._eof = False
        self._hold = hold if tail else None  # seconds what was just read waits (a finite input never does)
        self._held: list[Message] = []  # read, not given out yet (`hold`): the offset stays before them
        self._release_at = 0.0  # time.monotonic() when the held messages go out
        self._awake: datetime | None = None
        self._healthy = False  # the partition's leader answers and fetching is active
        self._high = -1  # the log's end offset, as of `_stats_at`
        self._fetch_position = -1  # librdkafka's next fetch offset then (ours is logical until a message comes)
        self._stats_at = 0.0
        self._beyond_end = 0
        self._last_caught_up = 0.0
        self._errors_logged: dict[int, float] = {}
        self._consumer = clients.consumer(
            kafka, config | {"statistics.interval.ms": _STATS_INTERVAL_MS, "stats_cb": self._on_stats, "error_cb": self._on_error}
        )
        self._consumer.assign([TopicPartition(topic, partition, offset)])

    # ---- what librdkafka tells us ----------------------------------------------------------

    def _on_stats(self, raw: str) -> None:
        try:
            stats = _stats_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("unreadable consumer statistics for %s[%d]: %s", self._topic, self._partition, exc)
            return
        part = stats.topics.get(self._topic, _TopicStats()).partitions.get(str(self._partition))
        if part is None:
            self._healthy = False
            READINESS.set(self._ready_name, False, "the broker's statistics do not list the partition", ttl_s=_READY_TTL_S)
            return
        leader_up = any(b.nodeid == part.leader and b.state == "UP" for b in stats.brokers.values())
        self._healthy = leader_up and part.fetch_state == "active"
        self._stats_at = time.monotonic()
        if not self._healthy:
            why = f"leader {part.leader} {'up' if leader_up else 'not up'}, fetch state {part.fetch_state or '?'}"
            READINESS.set(self._ready_name, False, f"broker unreachable ({why})", ttl_s=_READY_TTL_S)
        if self._healthy and part.hi_offset >= 0:
            self._high = part.hi_offset
            self._fetch_position = part.next_offset
            position = self._position()
            lag = max(0, part.hi_offset - position) if position >= 0 else 0
            CONSUMER_LAG.labels(*self._label).set(lag)
            caught_up = position >= 0 and lag <= self._ready_max_lag
            detail = f"lag {lag} messages" if position >= 0 else "position not known yet"
            if position >= 0 and not caught_up:
                detail += f" (READY_MAX_LAG_MESSAGES={self._ready_max_lag})"
            READINESS.set(self._ready_name, caught_up, detail, ttl_s=_READY_TTL_S)
            # Real Kafka answers a fetch past the end with OFFSET_OUT_OF_RANGE; some brokers return
            # nothing, forever. Both sides of this test come from one statistics snapshot.
            if part.next_offset > part.hi_offset >= 0:
                self._beyond_end += 1
            else:
                self._beyond_end = 0

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("kafka consumer for %s[%d]: fatal: %s", self._topic, self._partition, err)
        else:
            self._note_error(err, "kafka consumer")

    def _note_error(self, err: KafkaError, what: str) -> None:
        """Log a transient error at most once a minute per code; count every one."""
        CONSUMER_ERRORS.labels(self._topic, err.name()).inc()
        now = time.monotonic()
        if now - self._errors_logged.get(err.code(), -1e9) >= 60:
            self._errors_logged[err.code()] = now
            log.warning("%s for %s[%d]: %s (retrying; logged once a minute)", what, self._topic, self._partition, err)

    # ---- input -----------------------------------------------------------------------------

    def next_batch(self) -> list[RawBatch]:
        READINESS.heartbeat(self._ready_name)
        if self._held:
            wait = self._release_at - time.monotonic()
            if wait > 0:
                self._awake = datetime.now(UTC) + timedelta(seconds=wait)
                return []
            messages, self._held = self._held, []
            self._awake = None
            return self._batch(messages)
        if self._eof:
            raise StopIteration
        try:
            messages = self._consumer.consume(self._batch_size, 0.001)
        except KafkaException as exc:  # raised for fatal errors, or a consumer in a broken state
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and err.fatal():
                raise
            log.warning("consuming %s[%d] failed (%s); retrying", self._topic, self._partition, exc)
            messages = []
        if not messages:
            return self._idle()
        self._awake = None
        if any(map(_error, messages)):
            messages = self._drop_errors(messages)
            if not messages:
                return []
        if self._hold is not None:
            wait = self._hold()
            if wait > 0:
                self._held = messages
                self._release_at = time.monotonic() + wait
                self._awake = datetime.now(UTC) + timedelta(seconds=wait)
                return []
        return self._batch(messages)

    def _batch(self, messages: list[Message]) -> list[RawBatch]:
        """Data messages out, in order; the next offset after them (the snapshot) moves past them."""
        values = list(map(_value, messages))  # C-level calls: this runs for every message
        # A consumed message always has an offset (the stubs allow None for produced ones).
        first, last = cast(int, messages[0].offset()), cast(int, messages[-1].offset())
        offsets: Sequence[int] = (
            range(first, last + 1) if last - first + 1 == len(messages) else cast(list[int], list(map(_offset, messages)))
        )
        self._next_offset = last + 1
        self._consumed.inc(len(messages))
        return [RawBatch(self._topic, self._partition, offsets, values)]

    def _drop_errors(self, messages: list[Message]) -> list[Message]:
        """Handle the error events among `messages`; the data messages go on."""
        for m in messages:
            err = m.error()
            if err is None:
                continue
            code = err.code()
            if code == KafkaError._PARTITION_EOF:
                self._eof = True
            elif code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                self._reposition(f"the broker says offset {self._next_offset} is out of range ({err})")
            elif err.fatal():
                raise KafkaException(err)
            else:
                self._note_error(err, "consuming")
        return [m for m in messages if m.error() is None]

    def _idle(self) -> list[RawBatch]:
        self._awake = datetime.now(UTC) + _IDLE_POLL
        now = time.monotonic()
        fresh = self._healthy and now - self._stats_at <= _STATS_FRESH_S
        if fresh and self._beyond_end >= _BEYOND_END_SNAPSHOTS:
            self._reposition(f"offset {self._next_offset} is past the end of the log ({self._high})")
            return []
        if fresh and self._position() >= self._high >= 0 and now - self._last_caught_up >= _CAUGHT_UP_EVERY_S:
            self._last_caught_up = now
            return [RawBatch(self._topic, self._partition, (), [], caught_up=True)]
        return []

    def _position(self) -> int:
        """The next offset to read, as a number (a logical start resolves once fetching began)."""
        return self._next_offset if self._next_offset >= 0 else self._fetch_position

    def _reposition(self, why: str) -> None:
        """The offset is gone from the broker: resume where KAFKA_START says, loudly and counted."""
        where = "earliest" if self._start == OFFSET_BEGINNING else "latest"
        log.error(
            "%s[%d]: %s; resuming from the %s offset (KAFKA_START=%s). Records between them are not read: "
            "refill them from their source (flat files) if they mattered",
            self._topic, self._partition, why, where, where,
        )  # fmt: skip
        OFFSET_RESETS.labels(self._topic, str(self._partition), where).inc()
        self._beyond_end = 0
        self._fetch_position = -1
        self._next_offset = self._start
        self._consumer.assign([TopicPartition(self._topic, self._partition, self._start)])

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._next_offset

    def close(self) -> None:
        READINESS.remove(self._ready_name)
        self._consumer.close()


class KafkaBatchSource(FixedPartitionedSource[RawBatch, int]):
    """Every partition of `topics`; each item is one `RawBatch`.

    Every consumer is built from `kafka` (its bootstrap servers and librdkafka properties).
    `start` applies without recovery state, and when a partition's offset is no longer on the
    broker. `tail=False` ends the input at the end of each partition (replays, tests, benchmarks).
    `hold`, when given, is asked after each read of a tailing partition how many seconds what it
    read waits before it goes out.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: list[str],
        *,
        start: str = "earliest",
        tail: bool = True,
        batch_size: int = 10_000,
        config: dict | None = None,
        ready_max_lag: int = 10_000,
        hold: Callable[[], float] | None = None,
    ) -> None:
        self._kafka = kafka
        self._hold = hold
        self._topics = topics
        self._start = OFFSET_BEGINNING if start == "earliest" else OFFSET_END
        self._tail = tail
        self._batch_size = batch_size
        self._config = config or {}
        self._ready_max_lag = ready_max_lag
        # /readyz: not ready before the dataflow lists its input (then each partition speaks for itself)
        self._ready_name = f"input {','.join(topics)}"
        READINESS.set(self._ready_name, False, "the dataflow has not started reading yet")
        self._built = False

    def list_parts(self) -> list[str]:
        parts = [f"{topic}#{p}" for topic, p in list_partitions(self._kafka, self._topics)]
        # A process of a cluster may own none of them: then nothing else will say so.
        timer = threading.Timer(_NO_PARTITION_AFTER_S, self._owns_none)
        timer.daemon = True
        timer.start()
        return parts

    def _owns_none(self) -> None:
        if not self._built:
            READINESS.set(self._ready_name, True, "this process reads none of the input's partitions")

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _BatchPartition:
        self._built = True  # the partition's own condition ("not caught up yet") holds readiness from here
        READINESS.set(self._ready_name, True, "reading")
        topic, _, partition = for_part.rpartition("#")
        # What the deployment's properties may override (KAFKA_PROPERTY_*) and what they may not
        # (connectors.kafka.properties.PROTECTED: the commit, the offset reset, EOF, statistics).
        config = {
            "group.id": "tickstock-ignored",  # offsets live in bytewax recovery state; never joined (assign only)
            "enable.auto.commit": False,
            "enable.partition.eof": not self._tail,
            # An offset that is gone is our decision (see _reposition), never librdkafka's silent reset.
            "auto.offset.reset": "error",
            # One fetch's answer: a broker fills the first partition with data up to the request's
            # `fetch.max.bytes` whatever the partition's own limit (Kafka's protocol; Tansu's
            # service/fetch.rs does the same), and each consumer here fetches one partition. At the
            # 50 MB it was, one answer on a backlog held ~250 MB of the bar flow's 555-580 MB peak RSS
            # (memray --native: librdkafka's queued messages and lz4 buffers); at 1 MiB (the least
            # librdkafka takes, >= message.max.bytes) the peak is 377-416 MB, no slower
            # (docs/benchmarks.md, 2026-12-02).
            "fetch.max.bytes": 1_048_576,
            "max.partition.fetch.bytes": 1_048_576,
            # Prefetch: one consume batch per partition waits in librdkafka's queue, refilled as soon as
            # the flow takes it. A full queue postpones the partition's next fetch by
            # `fetch.queue.backoff.ms`, 1 s by default: with less than ~2 s of the flow's reading
            # queued, a backlog's replay then waited on it (two batches were ~60 % slower in wall time
            # here, hence the five batches this held before, ~50 MB more of the bar flow's peak RSS on 4
            # partitions: their fetched and decompressed buffers). 20 ms keeps the queue short and
            # full (docs/benchmarks.md, 2026-12-03 tenth session; docs/operations.md, flow memory).
            "queued.min.messages": max(self._batch_size, 1000),
            "queued.max.messages.kbytes": 32_768,
            "fetch.queue.backoff.ms": 20,
            # A caught-up consumer's fetch waits this long for data (librdkafka's default, 500 ms,
            # held bars back ~120 ms at a minute boundary here); with data waiting it returns at once.
            "fetch.wait.max.ms": 25,
            **self._config,
        }
        offset = self._start if resume_state is None else resume_state
        return _BatchPartition(
            self._kafka, config, topic, int(partition), offset, self._batch_size, self._tail, self._start, self._ready_max_lag,
            self._hold,
        )  # fmt: skip
