"""Polygon (Massive) stocks WebSocket events, exactly as the feed sends them.

Kafka carries one of these JSON objects per message, keyed by symbol, so the bridge
can forward events untouched. Field names on the wire are Polygon's one- and
two-letter names; the Python attributes spell them out.

>>> decode_events(b'[{"ev":"T","sym":"AAPL","x":4,"i":"7","z":3,"p":190.5,"s":100,"t":1700000000000,"q":1}]')[0].price
190.5
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec
from msgspec import Meta, field

Symbol = Annotated[str, Meta(min_length=1, max_length=20)]
Price = Annotated[float, Meta(gt=0, lt=100_000_000)]  # finite: 1e999 would decode as inf
Size = Annotated[int, Meta(ge=0)]
EpochMs = Annotated[int, Meta(gt=0)]


class Trade(msgspec.Struct, tag_field="ev", tag="T", gc=False, kw_only=True, omit_defaults=True):
    """`T`: one trade. Identified by (symbol, exchange, trade_id, trf_id)."""

    symbol: Symbol = field(name="sym")
    exchange: int = field(name="x")
    trade_id: str = field(name="i")
    tape: int = field(name="z", default=0)
    price: Price = field(name="p")
    size: Size = field(name="s")
    conditions: list[int] = field(name="c", default_factory=list)
    timestamp: EpochMs = field(name="t")  # SIP time, ms
    sequence: int = field(name="q", default=0)  # increasing per ticker, not contiguous
    trf_id: int | None = field(name="trfi", default=None)
    trf_timestamp: int | None = field(name="trft", default=None)
    decimal_size: str | None = field(name="ds", default=None)


class Quote(msgspec.Struct, tag_field="ev", tag="Q", gc=False, kw_only=True, omit_defaults=True):
    """`Q`: NBBO quote."""

    symbol: Symbol = field(name="sym")
    bid_exchange: int | None = field(name="bx", default=None)
    bid_price: float = field(name="bp")
    bid_size: int = field(name="bs", default=0)
    ask_exchange: int | None = field(name="ax", default=None)
    ask_price: float = field(name="ap")
    ask_size: int = field(name="as", default=0)
    condition: int | None = field(name="c", default=None)
    indicators: list[int] = field(name="i", default_factory=list)
    timestamp: EpochMs = field(name="t")
    sequence: int = field(name="q", default=0)
    tape: int = field(name="z", default=0)


class _Aggregate(msgspec.Struct, gc=False, kw_only=True, omit_defaults=True):
    symbol: Symbol = field(name="sym")
    volume: Size = field(name="v")
    day_volume: int | None = field(name="av", default=None)
    day_open: float | None = field(name="op", default=None)
    vwap: float | None = field(name="vw", default=None)
    open: Price = field(name="o")
    close: Price = field(name="c")
    high: Price = field(name="h")
    low: Price = field(name="l")
    day_vwap: float | None = field(name="a", default=None)
    average_size: float | None = field(name="z", default=None)
    start: EpochMs = field(name="s")
    end: EpochMs = field(name="e")


class SecondAgg(_Aggregate, tag_field="ev", tag="A"):
    """`A`: per-second aggregate; the flow can build minute bars from these."""


class MinuteAgg(_Aggregate, tag_field="ev", tag="AM"):
    """`AM`: Polygon's own minute bar; re-broadcast when corrected."""


Event = Union[Trade, Quote, SecondAgg, MinuteAgg]

_batch_decoder = msgspec.json.Decoder(list[Event])
_one_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


def decode_events(frame: bytes) -> list[Event]:
    """Decode a JSON array of events (a WebSocket frame, or joined Kafka values)."""
    return _batch_decoder.decode(frame)


def decode_event(raw: bytes) -> Event:
    """Decode one event; raises `msgspec.ValidationError`/`DecodeError` with the reason."""
    return _one_decoder.decode(raw)


def encode_event(event: Event) -> bytes:
    """Encode with Polygon's field names, as the live feed would send it."""
    return _encoder.encode(event)
