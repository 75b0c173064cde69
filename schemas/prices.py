"""The last trade price of a symbol, as `tickstock.market.prices` carries it (the old system's channel).

Published by the bar flow at most once per symbol per LIVE_UPDATE_INTERVAL_S: the latest trade
in event time that may set a bar's close (its sale conditions allow it), with the change since
the first such price of the US/Eastern trading day the flow saw.

>>> p = Price(symbol="AAPL", price=101.5, size=100, timestamp=1_764_253_800_000, session="2025-11-27",
...           open=100.0, change=1.5, change_pct=1.5)
>>> decode_price(encode_price(p)) == p
True
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.polygon import EpochMs
from schemas.polygon import Price as TradePrice

PRICE_SCHEMA_VERSION = 1

Session = Annotated[str, Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]


class Price(msgspec.Struct, gc=False, kw_only=True):
    """One symbol's last price."""

    version: int = PRICE_SCHEMA_VERSION
    symbol: str
    price: TradePrice  # the last trade in event time that may set a close
    size: Annotated[int, Meta(ge=0, le=1 << 40)]  # that trade's size (per-second aggregates: the second's volume)
    timestamp: EpochMs  # that trade's time, epoch ms
    session: Session  # US/Eastern trading day, YYYY-MM-DD
    open: TradePrice  # the first such price of that session the flow saw
    change: float  # price - open
    change_pct: float  # 100 * change / open


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Price)


def encode_price(price: Price) -> bytes:
    return _encoder.encode(price)


def decode_price(raw: bytes) -> Price:
    """One price from JSON; raises `msgspec.DecodeError` (a `ValidationError` for a wrong value) with the reason."""
    return _decoder.decode(raw)
