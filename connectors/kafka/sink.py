"""Records onto a Kafka topic, delivered before the epoch that produced them is committed.

Bytewax's own `KafkaSink` flushes after every batch, which stalls the dataflow for a round
trip each time. Here each batch is only handed to librdkafka (an idempotent producer,
`acks=all`, retrying without a deadline), and `snapshot`, which Bytewax calls at every epoch
boundary before it commits the epoch's input offsets, waits until Kafka has acknowledged
everything. A crash can therefore repeat records (the consumer handles repeats), never lose
one.

The broker failing is waited out, never raised into the flow:

- down or restarting: librdkafka keeps retrying; the epoch boundary waits, logging every 10 s;
- a delivery that failed anyway (e.g. the topic was briefly gone) is produced again, with a
  capped, jittered backoff;
- a fatal producer error (a broker that forgot the idempotent producer's state, e.g. an
  in-memory broker restarted) replaces the producer; every record the old one still held is
  produced again by the new one (those the broker had already written may repeat, which
  consumers absorb);
- a record the broker refuses for itself (too large for its `message.max.bytes`) cannot succeed
  by retrying: it is logged with its key and counted (`tickstock_kafka_records_refused_total`),
  and the flow goes on.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter

from connectors.kafka import clients
from connectors.kafka.settings import KafkaSettings
from connectors.monitoring.metrics import SINK_BATCH_SECONDS, SINK_RECORDS
from connectors.sinks.parts import PerWorker, SharedPartition, part_names

log = logging.getLogger(__name__)

X = TypeVar("X")
Record = tuple[bytes | str | None, bytes | None, list[tuple[str, bytes]] | None]  # key, value, headers

REFUSED = Counter(
    "tickstock_kafka_records_refused_total", "Records a broker refused for good, by topic and code", ["topic", "code"]
)
RETRIED = Counter("tickstock_kafka_delivery_retries_total", "Records produced again after a failed delivery", ["topic"])
PRODUCERS_REPLACED = Counter("tickstock_kafka_producers_replaced_total", "Producers replaced after a fatal error", ["topic"])

# Refusals of the record itself, which no retry can turn into a delivery. (A refusal of the
# topic, e.g. authorization, is the deployment's to fix: retried, logged, never dropped.)
_PERMANENT = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE}
_MAX_BACKOFF_S = 5.0


class TopicWriter(StatefulSinkPartition[X, None], Generic[X]):
    """One producer onto one topic (the sink partition of `TopicSink`, also usable on its own): `write_batch`, then `snapshot` waits for delivery."""

    def __init__(self, kafka: KafkaSettings, topic: str, encode: Callable[[X], Record]) -> None:
        self._kafka = kafka
        self._topic = topic
        self._encode = encode
        self._fatal: KafkaError | None = None
        self._retry: list[tuple[bytes | str | None, bytes | None, list | None]] = []
        self._backoff_s = 0.05
        self._unacknowledged = 0  # records written since the last epoch boundary
        self._batch_seconds = SINK_BATCH_SECONDS.labels("kafka", topic)
        self._records = SINK_RECORDS.labels("kafka", topic)
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        return clients.producer(
            self._kafka,
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,  # tuning: KAFKA_PROPERTY_LINGER_MS overrides it; the others are protected
                "message.timeout.ms": 0,  # no deadline: while Kafka is down, the epoch boundary waits
                "delivery.report.only.error": True,
                "error_cb": self._client_error,
            },
        )

    def _client_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
            log.error("kafka producer for %s: fatal error %s; it will be replaced", self._topic, err)
        else:
            log.warning("kafka producer for %s: %s", self._topic, err)

    def _delivered(self, key: bytes | str | None, headers: list | None, err: KafkaError | None, msg: Message) -> None:
        """Only failures call back (delivery.report.only.error); keep the record to produce it again."""
        if err is None:
            return
        if err.code() in _PERMANENT:
            REFUSED.labels(self._topic, err.name()).inc()
            log.error("kafka refused a record for %s for good (%s), key %r: not retried", self._topic, err, key)
            return
        self._retry.append((key, msg.value(), headers))

    def _produce(self, key: bytes | str | None, value: bytes | None, headers: list | None) -> None:
        on_delivery = functools.partial(self._delivered, key, headers)
        while True:
            try:
                self._producer.produce(self._topic, value, key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:  # librdkafka's queue is full: let it drain
                self._producer.poll(0.1)
            except KafkaException as exc:  # e.g. the producer went fatal: replace it, then go on
                log.warning("producing to %s failed (%s); replacing the producer", self._topic, exc)
                self._replace()

    def write_batch(self, items: list[X]) -> None:
        if self._fatal is not None:
            self._replace()
        for item in items:
            self._produce(*self._encode(item))
        self._unacknowledged += len(items)
        self._producer.poll(0)
        if self._retry:
            self._resend()

    def _resend(self) -> None:
        """Produce failed records again, after a capped, jittered pause (a broker that just refused needs time)."""
        time.sleep(self._backoff_s * random.uniform(0.5, 1.0))
        self._backoff_s = min(self._backoff_s * 2, _MAX_BACKOFF_S)
        retry, self._retry = self._retry, []
        RETRIED.labels(self._topic).inc(len(retry))
        for key, value, headers in retry:
            self._produce(key, value, headers)

    def _replace(self) -> None:
        """After a fatal error: every record the old producer held goes out again on a new one."""
        old, self._producer = self._producer, self._new_producer()
        PRODUCERS_REPLACED.labels(self._topic).inc()
        self._fatal = None
        try:
            old.purge(in_queue=True, in_flight=True, blocking=False)  # their failure reports land in _retry
        except KafkaException as exc:
            log.warning("purging the old producer for %s: %s", self._topic, exc)
        deadline = time.monotonic() + 30
        while len(old) and time.monotonic() < deadline:
            old.poll(0.1)
        log.error("kafka producer for %s replaced; producing %d records again", self._topic, len(self._retry))

    def snapshot(self) -> None:
        """Epoch boundary: return only once Kafka has every record written so far (waiting as long as it takes).

        The wait is the sink's batch latency (`tickstock_sink_batch_duration_seconds{sink="kafka"}`):
        an epoch's records, from the boundary until Kafka acknowledged the last of them.
        """
        waited = 0.0
        started = time.perf_counter()
        while True:
            if self._fatal is not None:
                self._replace()
            if self._retry:
                self._resend()
            remaining = self._producer.flush(1.0)
            if remaining == 0 and not self._retry and self._fatal is None:
                self._backoff_s = 0.05
                if self._unacknowledged:
                    self._batch_seconds.observe(time.perf_counter() - started)
                    self._records.inc(self._unacknowledged)
                    self._unacknowledged = 0
                return
            waited += 1.0
            if waited % 10 == 0:
                log.warning("waiting for Kafka to acknowledge %d records for %s (%.0f s so far)",
                            remaining + len(self._retry), self._topic, waited)  # fmt: skip

    def close(self) -> None:
        self.snapshot()


class TopicSink(FixedPartitionedSink[X, None]):
    """A keyed stream onto `topic`, as `encode` makes each item (key, value, headers).

    `parts` sink partitions (see `connectors.sinks.parts`) spread over the workers, those of a
    worker sharing its one producer; the stream's key picks the partition, so the records of a
    key leave in order from one producer, and the Kafka key (the same partitioner in every
    producer) picks the topic partition.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, encode: Callable[[X], Record], parts: int = 1) -> None:
        self._kafka = kafka
        self._topic = topic
        self._encode = encode
        self._parts = part_names(topic, parts)
        self._writers: PerWorker[X] = PerWorker(lambda: TopicWriter(kafka, topic, encode))

    def list_parts(self) -> list[str]:
        return list(self._parts)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> SharedPartition[X]:
        return self._writers.partition()
