"""OHLCV bars the flow emits to PostgreSQL, Redis and anyone else.

A bar is flat, versioned JSON. `status` says which kind of message it is:

- `live`: the minute is still open; a throttled snapshot of the forming bar.
- `final`: the minute has closed (`revision` 0), or a late trade corrected it
  (`revision` 1, 2, ...). A consumer keeps the highest revision it has seen.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.polygon import MAX_EPOCH_MS, MIN_EPOCH_MS, Price
from schemas.timeframes import TimeframeName

BAR_SCHEMA_VERSION = 1

# Bounds matter when bars are read back (the detection flow decodes the bars topic, which anyone
# can write to): every value must fit its column (NUMERIC, BIGINT, INTEGER) and its arithmetic.
BarTime = Annotated[int, Meta(ge=MIN_EPOCH_MS, lt=MAX_EPOCH_MS, multiple_of=60_000)]
Volume = Annotated[int, Meta(ge=0, le=(1 << 63) - 1)]
Counter = Annotated[int, Meta(ge=0, lt=1 << 31)]


class Bar(msgspec.Struct, gc=False, kw_only=True):
    """One symbol's bar for one time bucket."""

    version: int = BAR_SCHEMA_VERSION
    symbol: str
    timeframe: TimeframeName = "1m"  # 1m from trades; the coarser ones rolled up from final 1m bars
    timestamp: BarTime  # bucket start, epoch milliseconds UTC
    open: Price | None  # None when no trade in the bucket may set open/close
    high: Price | None
    low: Price | None
    close: Price | None
    volume: Volume
    vwap: Price | None
    trades: Counter  # trades that counted toward volume
    revision: Counter  # 0 when first final; +1 per late trade applied after that
    status: Literal["live", "final"]


_encoder = msgspec.json.Encoder()


def encode_bar(bar: Bar) -> bytes:
    return _encoder.encode(bar)


_decoder = msgspec.json.Decoder(Bar)


def decode_bar(raw: bytes) -> Bar:
    """One bar from JSON; raises `msgspec.DecodeError` (a `ValidationError` for a wrong value) with the reason."""
    try:
        return _decoder.decode(raw)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise msgspec.DecodeError(f"invalid JSON: {exc}") from None
