"""Dead letters: the original bytes, with why and where from in Kafka headers; never too big to write.

Header names follow the Kafka Connect convention so standard tooling can read them. A dead
letter must always be writable, whatever the input was: a value larger than
`MAX_VALUE_BYTES` (the producer's default `message.max.bytes` is 1 MB) keeps a prefix of
that size, and the headers say so (`dlq.truncated`) and carry the original's size and SHA-256,
so the record can still be found and judged. The reason is capped too, and any text (lone
surrogates included) is encoded safely.

>>> m = letter(b"x" * 600_000, kind="malformed", reason="too big", topic="t", partition=0, offset=7)
>>> len(m.value), headers(m)["dlq.truncated"], headers(m)["dlq.size"], headers(m)["dlq.offset"]
(524288, 'true', '600000', '7')
>>> letter(None, kind="malformed", reason="null value", topic="t", partition=0, offset=8).value is None
True
"""

from __future__ import annotations

import hashlib
import time

from bytewax.connectors.kafka import KafkaSinkMessage

from connectors.kafka.settings import KafkaSettings
from connectors.kafka.sink import Record, TopicSink
from connectors.kafka.source import RawBatch
from connectors.monitoring.metrics import DEAD_LETTERS
from schemas.status import FlowError

REASON = "dlq.reason"
KIND = "dlq.kind"  # schemas.status.DEAD_LETTER_KINDS
SOURCE_TOPIC = "dlq.topic"
SOURCE_PARTITION = "dlq.partition"
SOURCE_OFFSET = "dlq.offset"
SIZE = "dlq.size"  # bytes of the original value ("null" for a tombstone)
SHA256 = "dlq.sha256"  # of the original value
TRUNCATED = "dlq.truncated"  # "true" when the value kept is a prefix of the original

MAX_VALUE_BYTES = 512 * 1024
MAX_REASON_CHARS = 1000


def _text(value: object, limit: int) -> bytes:
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace")


def letter(
    value: bytes | None,
    *,
    kind: str,
    reason: str,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None = None,
) -> KafkaSinkMessage[bytes, bytes]:
    """The dead letter of one refused input, bounded in size whatever the input was (counted by source and kind)."""
    DEAD_LETTERS.labels(topic[:250] or "feed", kind).inc()
    hdrs = [
        (KIND, kind.encode()),
        (REASON, _text(reason, MAX_REASON_CHARS)),
        (SOURCE_TOPIC, _text(topic, 250)),
        (SOURCE_PARTITION, b"" if partition is None else str(partition).encode()),
        (SOURCE_OFFSET, b"" if offset is None else str(offset).encode()),
    ]
    if value is None:
        hdrs.append((SIZE, b"null"))
    else:
        hdrs.append((SIZE, str(len(value)).encode()))
        if len(value) > MAX_VALUE_BYTES:
            hdrs.append((SHA256, hashlib.sha256(value).hexdigest().encode()))
            hdrs.append((TRUNCATED, b"true"))
            value = value[:MAX_VALUE_BYTES]
    return KafkaSinkMessage(key=key, value=value, headers=hdrs)  # type: ignore[arg-type]  # a tombstone stays null


def dead_letter(batch: RawBatch, index: int, kind: str, reason: str) -> KafkaSinkMessage[bytes, bytes]:
    """The dead-letter message for `batch.values[index]`, keyed by its source partition."""
    return letter(
        batch.values[index],
        kind=kind,
        reason=reason,
        topic=batch.topic,
        partition=batch.partition,
        offset=batch.offsets[index],
        key=batch.key.encode(),
    )


def headers(message: KafkaSinkMessage[bytes, bytes]) -> dict[str, str]:
    """A dead letter's headers as text (for error records and tests)."""
    return {k: v.decode("utf-8", "replace") for k, v in message.headers}


def dead_letter_sink(kafka: KafkaSettings, topic: str, parts: int = 1) -> TopicSink[KafkaSinkMessage[bytes, bytes]]:
    """Dead letters (keyed by their source partition) onto `topic`, delivered before the epoch commits."""
    return TopicSink(kafka, topic, _record, parts)


def _record(letter: KafkaSinkMessage[bytes, bytes]) -> Record:
    return letter.key, letter.value, letter.headers


def letter_key(letter: KafkaSinkMessage[bytes, bytes]) -> str:
    """What the dead-letter sink is keyed by: the source partition."""
    return letter.key.decode("utf-8", "replace") if letter.key is not None else ""


def error_record(letter: KafkaSinkMessage[bytes, bytes], component: str = "ohlcv_flow") -> FlowError:
    """The `tickstock:errors` record of a dead letter: its headers say why and where from."""
    h = headers(letter)
    return FlowError(
        component=component,
        timestamp=int(time.time() * 1000),
        error=h[KIND],  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
        reason=h[REASON],
        source_topic=h[SOURCE_TOPIC],
        source_partition=int(h[SOURCE_PARTITION] or -1),
        source_offset=int(h[SOURCE_OFFSET] or -1),
    )
