"""Dead letters: the original bytes, untouched, with why and where from in Kafka headers.

Header names follow the Kafka Connect convention so standard tooling can read them.
"""

from __future__ import annotations

import time

from bytewax.connectors.kafka import KafkaSinkMessage

from connectors.kafka_sink import Record, TopicSink
from connectors.kafka_source import RawBatch
from schemas.status import FlowError

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


def letter_key(letter: KafkaSinkMessage[bytes, bytes]) -> str:
    """What the dead-letter sink is keyed by: the source partition."""
    return letter.key.decode()


def error_record(letter: KafkaSinkMessage[bytes, bytes]) -> FlowError:
    """The `tickstock:errors` record of a dead letter: its headers say why and where from."""
    h = {k: v.decode() for k, v in letter.headers}
    return FlowError(
        timestamp=int(time.time() * 1000),
        error=h[KIND],  # type: ignore[arg-type]
        reason=h[REASON],
        source_topic=h[SOURCE_TOPIC],
        source_partition=int(h[SOURCE_PARTITION]),
        source_offset=int(h[SOURCE_OFFSET]),
    )
