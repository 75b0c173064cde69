"""Kafka input that hands the dataflow whole batches, not single messages.

Bytewax's own `KafkaSource` emits one item per message; at 100k+ messages/s the
per-item overhead alone would eat the budget. Here each consume call becomes one
`RawBatch`, the offset bookkeeping is the same (the partition's next offset is its
recovery state, so a resumed flow re-reads exactly what it had not committed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient

_IDLE_POLL = timedelta(milliseconds=5)
_value, _offset, _error = Message.value, Message.offset, Message.error


class RawBatch(NamedTuple):
    """Consecutive messages of one partition: values untouched, with their offsets."""

    topic: str
    partition: int
    offsets: Sequence[int]  # a range when contiguous, as they almost always are
    values: list[bytes]

    @property
    def key(self) -> str:
        return f"{self.topic}#{self.partition}"


class KafkaUnavailable(RuntimeError):
    """The broker cannot be reached or the topic does not exist: say which and how to fix it."""


def list_partitions(bootstrap: str, topics: Iterable[str], timeout_s: float = 10.0) -> list[tuple[str, int]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception as exc:  # confluent_kafka raises KafkaException with the transport error
        raise KafkaUnavailable(
            f"Kafka at {bootstrap} is unreachable ({exc}); start the local broker with `make broker` "
            "or point KAFKA_BOOTSTRAP_SERVERS at a running one"
        ) from exc
    found: list[tuple[str, int]] = []
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise KafkaUnavailable(f"Kafka topic {topic!r} does not exist on {bootstrap}; create it with `make topics`")
        found.extend((topic, p) for p in sorted(meta.partitions))
    return found


class _BatchPartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, config: dict, topic: str, partition: int, offset: int, batch_size: int, tail: bool) -> None:
        self._consumer = Consumer(config)
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._topic = topic
        self._partition = partition
        self._next_offset = offset
        self._batch_size = batch_size
        self._tail = tail
        self._eof = False
        self._awake: datetime | None = None

    def next_batch(self) -> list[RawBatch]:
        if self._eof:
            raise StopIteration
        messages = self._consumer.consume(self._batch_size, 0.001)
        if not messages:
            self._awake = datetime.now(timezone.utc) + _IDLE_POLL
            return []
        self._awake = None
        if any(map(_error, messages)):
            for m in messages:
                if m.error() is None:
                    continue
                if m.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"error consuming {self._topic}[{self._partition}]: {m.error()}")
            self._eof = True
            messages = [m for m in messages if m.error() is None]
            if not messages:
                return []
        values = list(map(_value, messages))  # C-level calls: this runs for every message
        first, last = messages[0].offset(), messages[-1].offset()
        offsets: Sequence[int] = (
            range(first, last + 1) if last - first + 1 == len(messages) else list(map(_offset, messages))
        )
        self._next_offset = last + 1
        return [RawBatch(self._topic, self._partition, offsets, values)]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._next_offset

    def close(self) -> None:
        self._consumer.close()


class KafkaBatchSource(FixedPartitionedSource[RawBatch, int]):
    """Every partition of `topics`; each item is one `RawBatch`.

    `start` applies only without recovery state. `tail=False` ends the input at the
    end of each partition (replays, tests, benchmarks).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        *,
        start: str = "earliest",
        tail: bool = True,
        batch_size: int = 10_000,
        config: dict | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self._start = OFFSET_BEGINNING if start == "earliest" else OFFSET_END
        self._tail = tail
        self._batch_size = batch_size
        self._config = config or {}

    def list_parts(self) -> list[str]:
        return [f"{topic}#{p}" for topic, p in list_partitions(self._bootstrap, self._topics)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _BatchPartition:
        topic, _, partition = for_part.rpartition("#")
        config = {
            "bootstrap.servers": self._bootstrap,
            "group.id": "tickstock-ignored",  # offsets live in bytewax recovery state
            "enable.auto.commit": False,
            "enable.partition.eof": not self._tail,
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 10_485_760,
            "queued.min.messages": 200_000,
            # A caught-up consumer's fetch waits this long for data (librdkafka's default, 500 ms,
            # held bars back ~120 ms at a minute boundary here); with data waiting it returns at once.
            "fetch.wait.max.ms": 25,
            **self._config,
        }
        offset = self._start if resume_state is None else resume_state
        return _BatchPartition(config, topic, int(partition), offset, self._batch_size, self._tail)
