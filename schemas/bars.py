"""OHLCV bars the flow emits to PostgreSQL, Redis and anyone else.

A bar is flat, versioned JSON. `status` says which kind of message it is:

- `live`: the minute is still open; a throttled snapshot of the forming bar.
- `final`: the minute has closed (`revision` 0), or a late trade corrected it
  (`revision` 1, 2, ...). A consumer keeps the highest revision it has seen.
"""

from __future__ import annotations

from typing import Literal

import msgspec

BAR_SCHEMA_VERSION = 1


class Bar(msgspec.Struct, gc=False, kw_only=True):
    """One symbol's bar for one time bucket."""

    version: int = BAR_SCHEMA_VERSION
    symbol: str
    timeframe: Literal["1m"] = "1m"
    timestamp: int  # bucket start, epoch milliseconds UTC
    open: float | None  # None when no trade in the bucket may set open/close
    high: float | None
    low: float | None
    close: float | None
    volume: int
    vwap: float | None
    trades: int  # trades that counted toward volume
    revision: int  # 0 when first final; +1 per late trade applied after that
    status: Literal["live", "final"]


_encoder = msgspec.json.Encoder()


def encode_bar(bar: Bar) -> bytes:
    return _encoder.encode(bar)


def decode_bar(raw: bytes) -> Bar:
    return msgspec.json.decode(raw, type=Bar)
