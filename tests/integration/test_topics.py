"""`connectors.kafka.topics.read_to_end` against the real broker: every record a topic holds, however it was batched."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import NewTopic

from connectors.kafka import clients
from connectors.kafka.producer import make_producer
from connectors.kafka.topics import delete_topics, read_to_end
from flows.settings import Settings

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize("partitions", [1, 3])
def test_records_produced_as_one_batch_are_all_read(services: None, partitions: int) -> None:
    """Tansu lists a partition's high watermark as 1 when it holds one batch of several records;
    a reader that stopped there returned one dead letter of two (the backfill's report)."""
    s = Settings()
    topic = f"test.read-to-end.{uuid.uuid4().hex[:8]}"
    admin = clients.admin(s)
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(30)
    try:
        producer, delivery = make_producer(s, idempotent=True)
        sent = [(f"k{i % 2}".encode(), b"\x00\xff" * i + bytes([i])) for i in range(10)]  # two keys, one linger
        for key, value in sent:
            producer.produce(topic, value, key, headers=[("dlq.kind", b"malformed")])
        assert producer.flush(30) == 0 and not delivery.failed
        got = [(m.key(), m.value()) for m in read_to_end(s, topic)]
        assert sorted(got) == sorted(sent)  # nothing left out, nothing twice
    finally:
        delete_topics(s, [topic])
