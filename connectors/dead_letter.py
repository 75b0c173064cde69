"""Dead letters: the original bytes, untouched, with why and where from in Kafka headers.

Header names follow the Kafka Connect convention so standard tooling can read them.
"""

from __future__ import annotations

from bytewax.connectors.kafka import KafkaSinkMessage

from connectors.kafka_sink import Record, TopicSink
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


def dead_letter_sink(bootstrap: str, topic: str) -> TopicSink[KafkaSinkMessage[bytes, bytes]]:
    """Dead letters (keyed by their source partition) onto `topic`, delivered before the epoch commits."""
    return TopicSink(bootstrap, topic, _record)


def _record(letter: KafkaSinkMessage[bytes, bytes]) -> Record:
    return letter.key, letter.value, letter.headers  # type: ignore[return-value]
