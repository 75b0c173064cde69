"""Records onto a Kafka topic, delivered before the epoch that produced them is committed.

Bytewax's own `KafkaSink` flushes after every batch, which stalls the dataflow for a round
trip each time. Here each batch is only handed to librdkafka (an idempotent producer,
`acks=all`, retrying without a deadline), and `snapshot`, which Bytewax calls at every epoch
boundary before it commits the epoch's input offsets, waits until Kafka has acknowledged
everything. A crash can therefore repeat records (the consumer handles repeats), never lose
one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, Producer

log = logging.getLogger(__name__)

X = TypeVar("X")
Record = tuple[bytes | str | None, bytes, list[tuple[str, bytes]] | None]  # key, value, headers


class _TopicPartition(StatefulSinkPartition[X, None], Generic[X]):
    def __init__(self, bootstrap: str, topic: str, encode: Callable[[X], Record]) -> None:
        self._topic = topic
        self._encode = encode
        self._failure: KafkaError | None = None
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 0,  # no deadline: while Kafka is down, the epoch boundary waits
                "delivery.report.only.error": True,
                "error_cb": self._client_error,
            }
        )

    def _client_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._failure = err
        log.warning("kafka producer for %s: %s", self._topic, err)

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._failure = err

    def write_batch(self, items: list[X]) -> None:
        produce, encode, topic = self._producer.produce, self._encode, self._topic
        for item in items:
            key, value, headers = encode(item)
            while True:
                try:
                    produce(topic, value, key, headers=headers, on_delivery=self._delivered)
                    break
                except BufferError:  # librdkafka's queue is full: let it drain
                    self._producer.poll(0.1)
        self._producer.poll(0)

    def snapshot(self) -> None:
        """Epoch boundary: return only once Kafka has every record written so far."""
        while self._producer.flush(1.0):
            log.info("waiting for Kafka to acknowledge %d records for %s", len(self._producer), self._topic)
        if self._failure is not None:
            raise RuntimeError(f"producing to Kafka topic {self._topic} failed: {self._failure}")

    def close(self) -> None:
        self.snapshot()


class TopicSink(FixedPartitionedSink[X, None]):
    """A keyed stream onto `topic`, as `encode` makes each item (key, value, headers)."""

    def __init__(self, bootstrap: str, topic: str, encode: Callable[[X], Record]) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._encode = encode

    def list_parts(self) -> list[str]:
        return [self._topic]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _TopicPartition[X]:
        return _TopicPartition(self._bootstrap, self._topic, self._encode)
