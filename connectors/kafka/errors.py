"""What a Kafka error means for a producer that must not lose what it accepted.

Four answers, because they call for four different actions:
- `RETRY` (transient): the broker is down or restarting, a request timed out, a partition is
  changing leader. Try again later, with backoff; the record is kept.
- `RENEW` (transient, but not for this producer): the broker forgot or fenced the idempotent
  producer's state (a broker restart, an epoch bump it does not accept: Tansu answers
  PRODUCER_FENCED to every later record). Replace the producer, then produce the record again.
- `DEAD_LETTER` (permanent for this record): the broker will never take this record (too
  large, invalid). Retrying it would loop forever; it goes to the dead-letter topic with the
  reason, and the records around it go on.
- `STOP` (permanent for the producer): nothing it sends will be taken (authorization or
  authentication refused, the topic does not exist after librdkafka's own retries, a
  configuration the broker rejects). Say so loudly and exit with a distinct code; what is in
  flight is kept (the bridge spools it).

Anything not listed is transient: waiting on an error that turns out permanent costs a loud,
backed-off retry loop; dropping a record on one that was transient would lose data.

>>> judge(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), judge(KafkaError(KafkaError._TRANSPORT))
(('dead_letter', 'too_large'), ('retry', None))
>>> judge(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), judge(KafkaError(KafkaError.PRODUCER_FENCED))
(('stop', None), ('renew', None))
"""

from __future__ import annotations

from typing import Final, Literal

from confluent_kafka import KafkaError

Verdict = Literal["retry", "renew", "dead_letter", "stop"]
RETRY: Final = "retry"
RENEW: Final = "renew"
DEAD_LETTER: Final = "dead_letter"
STOP: Final = "stop"

# permanent for the record: the dead-letter kind it gets (schemas.status.DEAD_LETTER_KINDS)
RECORD_REFUSED: Final[dict[int, str]] = {
    KafkaError.MSG_SIZE_TOO_LARGE: "too_large",  # also librdkafka's own check at produce()
    KafkaError.RECORD_LIST_TOO_LARGE: "too_large",
    KafkaError.INVALID_MSG_SIZE: "too_large",
    KafkaError.INVALID_RECORD: "malformed",
    KafkaError.INVALID_TIMESTAMP: "malformed",
    KafkaError._BAD_MSG: "malformed",
    KafkaError._KEY_SERIALIZATION: "malformed",
    KafkaError._VALUE_SERIALIZATION: "malformed",
}

# permanent for the producer
PRODUCER_REFUSED: Final[frozenset[int]] = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.UNSUPPORTED_SASL_MECHANISM,
        KafkaError.ILLEGAL_SASL_STATE,
        KafkaError.UNACCEPTABLE_CREDENTIAL,
        KafkaError.SECURITY_DISABLED,
        KafkaError._AUTHENTICATION,
        KafkaError._UNKNOWN_TOPIC,  # librdkafka gave up waiting for the topic to appear
        KafkaError.UNKNOWN_TOPIC_OR_PART,  # in a delivery report: only after librdkafka's retries
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_EXCEPTION,  # an invalid topic name
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError.UNSUPPORTED_COMPRESSION_TYPE,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError.POLICY_VIOLATION,
        KafkaError._INVALID_ARG,
    }
)

# the idempotent producer's state is gone on the broker's side: only a new producer gets on
PRODUCER_LOST: Final[frozenset[int]] = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError._FATAL,
    }
)

# our own purge (stop, producer replaced): the record was taken back, not refused
TAKEN_BACK: Final[frozenset[int]] = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


def judge(err: KafkaError) -> tuple[Verdict, str | None]:
    """The verdict on an error, and for `DEAD_LETTER` the dead-letter kind."""
    code = err.code()
    kind = RECORD_REFUSED.get(code)
    if kind is not None:
        return DEAD_LETTER, kind
    if code in PRODUCER_REFUSED:
        return STOP, None
    if code in PRODUCER_LOST or err.fatal():
        return RENEW, None
    return RETRY, None
