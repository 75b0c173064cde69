"""Dead letters: the original bytes, untouched, with why and where from in Kafka headers.

Header names follow the Kafka Connect convention so standard tooling can read them.
"""

from __future__ import annotations

from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage

from connectors.kafka_source import RawBatch

REASON = "dlq.reason"
KIND = "dlq.kind"  # malformed | too_late | unknown_condition
SOURCE_TOPIC = "dlq.topic"
SOURCE_PARTITION = "dlq.partition"
SOURCE_OFFSET = "dlq.offset"


def dead_letter(batch: RawBatch, index: int, kind: str, reason: str) -> KafkaSinkMessage[bytes, bytes]:
    """The dead-letter message for `batch.values[index]`."""
    return KafkaSinkMessage(
        key=batch.key.encode(),
        value=batch.values[index],
        headers=[
            (KIND, kind.encode()),
            (REASON, reason.encode()),
            (SOURCE_TOPIC, batch.topic.encode()),
            (SOURCE_PARTITION, str(batch.partition).encode()),
            (SOURCE_OFFSET, str(batch.offsets[index]).encode()),
        ],
    )


def dead_letter_sink(bootstrap: str, topic: str) -> KafkaSink:
    return KafkaSink([bootstrap], topic, add_config={"acks": "all", "linger.ms": 5})
