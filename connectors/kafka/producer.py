"""A throughput producer for programs that publish a stream into Kafka and report at the end.

The synthetic feed, the flat-file replay, the tests and the benchmarks publish many records as
fast as the broker takes them, then flush and say how many failed. They share this producer:
a 50 ms linger with big lz4 batches, idempotent `acks=all` unless a broker cannot do it, and a
delivery callback that only sees failures (`delivery.report.only.error`: a Python call per
record would halve throughput). The live bridge has its own producer (no delivery deadline, a
window sized by its settings, failures judged one by one): it must not lose a record it read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connectors.kafka import clients
from connectors.kafka.settings import KafkaSettings

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message, Producer


# How long a producer gathers records into one batch per partition. Every batch is one object in
# Tansu's memory storage, which lists all of a partition's objects on every fetch: at a real-time
# 4,000 trades/s, 10 ms batches had the broker at a whole core after 60 s, 50 ms ones at a fifth
# of it (see docs/benchmarks.md). 50 ms of input delay is far inside BAR_CLOSE_DELAY_S, and live
# updates are throttled to a second anyway. KAFKA_PROPERTY_PRODUCER_LINGER_MS overrides it.
LINGER_MS = 50


def producer_config(idempotent: bool) -> dict[str, object]:
    """Throughput settings: a 50 ms linger, big lz4 batches; idempotent acks=all unless disabled (the
    tuning is overridable by KAFKA_PROPERTY_*, the rest protected: connectors.kafka.properties)."""
    return {
        "linger.ms": LINGER_MS,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "enable.idempotence": idempotent,
        "acks": "all" if idempotent else "1",
        "delivery.report.only.error": True,  # a Python callback per record would halve throughput
    }


class Delivery:
    """Delivery-report callback; with `delivery.report.only.error` it only sees failures."""

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: str | None = None
        self.fatal: str | None = None  # e.g. a broker that refuses idempotent producers

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = str(err)

    def on_client_error(self, err: KafkaError) -> None:
        if err.fatal() and self.fatal is None:
            self.fatal = str(err)


def make_producer(kafka: KafkaSettings, idempotent: bool) -> tuple[Producer, Delivery]:
    """A producer with `kafka`'s properties and the callback that counts its delivery failures
    (KafkaException if the configuration is refused)."""
    delivery = Delivery()
    callbacks = {"on_delivery": delivery, "error_cb": delivery.on_client_error}
    return clients.producer(kafka, producer_config(idempotent) | callbacks), delivery


def produce_when_room(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    """The local queue is full: serve delivery reports until the record fits."""
    while True:
        producer.poll(0.05)
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            continue
