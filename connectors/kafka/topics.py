"""Topics that live for one run (the backfill's): listed by prefix, read to their end, deleted.

Reading "to the end" means up to each partition's high watermark when the read starts (asked
of the broker, not guessed from a quiet poll), so a topic nobody writes any more is read whole,
once, however slow the broker is to answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from connectors.kafka import clients
from connectors.kafka.admin import KafkaUnavailable, admin_client
from connectors.kafka.settings import KafkaSettings


def topics_named(kafka: KafkaSettings, prefix: str, timeout_s: float = 10.0) -> list[str]:
    """The broker's topics whose names start with `prefix`."""
    try:
        topics = admin_client(kafka).list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise KafkaUnavailable(f"Kafka at {kafka.kafka_bootstrap_servers} does not answer ({exc}); run `make broker`") from exc
    return sorted(t for t in topics if t.startswith(prefix))


def delete_topics(kafka: KafkaSettings, topics: Iterable[str], timeout_s: float = 15.0) -> dict[str, str | None]:
    """Delete `topics`; per topic None when deleted, else what the broker said."""
    names = list(topics)
    if not names:
        return {}
    admin = admin_client(kafka)  # kept alive until every future resolved
    outcome: dict[str, str | None] = {}
    for topic, future in admin.delete_topics(names, operation_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
            outcome[topic] = None
        except KafkaException as exc:
            outcome[topic] = exc.args[0].str() if exc.args else str(exc)
    return outcome


def read_to_end(kafka: KafkaSettings, topic: str, timeout_s: float = 30.0) -> Iterator[Message]:
    """Every message `topic` holds now, partition by partition; KafkaUnavailable if the broker
    does not deliver them within `timeout_s`."""
    consumer = clients.consumer(kafka, {"group.id": f"read-{topic}", "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaUnavailable(f"Kafka topic {topic!r} does not exist on {kafka.kafka_bootstrap_servers}")
        starts, ends = {}, {}
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                starts[p], ends[p] = low, high
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"Kafka did not deliver {topic} to its end within {timeout_s:.0f} s")
            for m in consumer.consume(1000, 0.5):
                partition, error = m.partition(), m.error()
                if partition not in ends:
                    continue
                if error is None:
                    yield m
                elif error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaUnavailable(f"reading {topic}: {error.str()}")
                elif (m.offset() or 0) >= ends[partition]:
                    # The end is where the fetches say it is (EOF), not the listed high watermark:
                    # Tansu 0.6 listed 1 for a partition holding one batch of 10 records, so
                    # stopping there left out the rest of a batch (two dead letters produced
                    # together, one of them read: the backfill's dead-letter test, under load).
                    del ends[partition]
    finally:
        consumer.close()
