"""What the flow says about itself on Redis: health every few seconds, and every input it refused.

The old TickStock's dashboards watched `tickstock.health.status` and `tickstock:errors`; these
are the flat, versioned records for them.

>>> h = FlowHealth(partition="stocks.trades#0", timestamp=1, status="healthy", received=10,
...                events_per_s=2.5, final_bars=1, open_bars=3, dropped=0, duplicates=0, revisions=0)
>>> decode_status(encode_status(h)) == h
True
"""

from __future__ import annotations

from typing import Literal

import msgspec

STATUS_SCHEMA_VERSION = 1

# Why an input was refused (the dead letter's `dlq.kind` and the error record's `error`):
# - malformed: not a valid record of its topic (undecodable, a field out of range, a null value, ...)
# - too_large: bigger than the flow accepts for one record (its dead letter keeps a prefix)
# - too_late: beyond the allowed lateness of its minute
# - future: further ahead of the wall clock (or of the partition's watermark) than allowed
# - unknown_condition: a sale condition code missing from the rule table
# - capacity: the partition already holds as many symbols as it may (state stays bounded)
# - rejected: the database refused the record it produced (e.g. a value out of its column's range)
DeadLetterKind = Literal["malformed", "too_large", "too_late", "future", "unknown_condition", "capacity", "rejected"]
DEAD_LETTER_KINDS: tuple[str, ...] = DeadLetterKind.__args__  # type: ignore[attr-defined]  # typing's runtime attributes are not in its stubs


class FlowHealth(msgspec.Struct, kw_only=True, tag_field="kind", tag="health"):
    """One partition's counters since the flow started, and whether it is keeping up.

    `degraded` with a `reason` when more than 5 % of the interval's input was refused, or when
    the watermark lags the wall clock by more than the configured limit while tailing a live feed.
    """

    version: int = STATUS_SCHEMA_VERSION
    component: str = "ohlcv_flow"
    partition: str
    timestamp: int  # wall clock, epoch ms
    status: Literal["healthy", "degraded"]
    reason: str | None = None
    received: int  # events read
    events_per_s: float  # over the last interval
    final_bars: int  # bars made final (forwarded)
    open_bars: int
    dropped: int  # refused input, dead-lettered (every kind)
    duplicates: int
    revisions: int
    watermark: int | None = None  # event time, epoch ms
    watermark_lag_s: float | None = None
    dead_letters: dict[str, int] | None = None  # refused input since the start, by kind (DEAD_LETTER_KINDS)
    held: int | None = None  # events held for a watermark jump to be confirmed (flows.event_time)
    symbols: int | None = None  # symbols with bars in the partition's state
    highlow_symbols: int | None = None  # symbols with session high/low state


class FlowError(msgspec.Struct, kw_only=True, tag_field="kind", tag="error"):
    """One refused input: why, and where it sits in Kafka (the dead-letter topic has its bytes).

    `source_*`, not `topic`/`offset`: `offset` is the channel position every published message carries.
    """

    version: int = STATUS_SCHEMA_VERSION
    component: str = "ohlcv_flow"
    timestamp: int  # wall clock, epoch ms
    error: DeadLetterKind
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int


Status = FlowHealth | FlowError

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Status)


def encode_status(record: Status) -> bytes:
    return _encoder.encode(record)


def decode_status(raw: bytes) -> Status:
    return _decoder.decode(raw)
