"""Polygon (Massive) stocks WebSocket events, exactly as the feed sends them.

Kafka carries one of these JSON objects per message, keyed by symbol, so the bridge
can forward events untouched. Field names on the wire are Polygon's one- and
two-letter names; the Python attributes spell them out.

>>> decode_events(b'[{"ev":"T","sym":"AAPL","x":4,"i":"7","z":3,"p":190.5,"s":100,"t":1700000000000,"q":1}]')[0].price
190.5
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, field

# Every field is bounded, so no value can overflow what consumes it (BIGINT columns, msgpack
# snapshots, datetime arithmetic) and no record can grow state without limit; a value out of
# these ranges makes the event `malformed` with msgspec's precise message.
Symbol = Annotated[str, Meta(min_length=1, max_length=20)]  # the full rule is schemas.symbols
Price = Annotated[float, Meta(gt=0, lt=100_000_000)]  # finite: 1e999 would decode as inf
Size = Annotated[int, Meta(ge=0, le=1 << 40)]  # 1.1e12 shares: above any real trade, and a bar's sum stays in BIGINT
MIN_EPOCH_MS = 946_684_800_000  # 2000-01-01 UTC: before any trade Polygon serves
MAX_EPOCH_MS = 4_102_444_800_000  # 2100-01-01 UTC: how far ahead is allowed is the flow's decision (flows.event_time)
EpochMs = Annotated[int, Meta(ge=MIN_EPOCH_MS, lt=MAX_EPOCH_MS)]
Code = Annotated[int, Meta(ge=0, le=1 << 31)]  # exchange, tape, condition and indicator codes, TRF ids
Count = Annotated[int, Meta(ge=0, le=(1 << 63) - 1)]  # sequence numbers, day volumes: BIGINT
TradeId = Annotated[str, Meta(max_length=64)]
Codes = Annotated[list[Code], Meta(max_length=32)]
Number = Annotated[float, Meta(ge=-1e15, le=1e15)]  # optional decimals (VWAPs, average sizes): finite
DecimalText = Annotated[str, Meta(max_length=32)]


class Trade(msgspec.Struct, tag_field="ev", tag="T", gc=False, kw_only=True, omit_defaults=True):
    """`T`: one trade. Identified by (symbol, exchange, trade_id, trf_id)."""

    symbol: Symbol = field(name="sym")
    exchange: Code = field(name="x")
    trade_id: TradeId = field(name="i")
    tape: Code = field(name="z", default=0)
    price: Price = field(name="p")
    size: Size = field(name="s")
    conditions: Codes = field(name="c", default_factory=list)
    timestamp: EpochMs = field(name="t")  # SIP time, ms
    sequence: Count = field(name="q", default=0)  # increasing per ticker, not contiguous
    trf_id: Code | None = field(name="trfi", default=None)
    trf_timestamp: Count | None = field(name="trft", default=None)
    decimal_size: DecimalText | None = field(name="ds", default=None)


class Quote(msgspec.Struct, tag_field="ev", tag="Q", gc=False, kw_only=True, omit_defaults=True):
    """`Q`: NBBO quote."""

    symbol: Symbol = field(name="sym")
    bid_exchange: Code | None = field(name="bx", default=None)
    bid_price: Number = field(name="bp")
    bid_size: Count = field(name="bs", default=0)
    ask_exchange: Code | None = field(name="ax", default=None)
    ask_price: Number = field(name="ap")
    ask_size: Count = field(name="as", default=0)
    condition: Code | None = field(name="c", default=None)
    indicators: Codes = field(name="i", default_factory=list)
    timestamp: EpochMs = field(name="t")
    sequence: Count = field(name="q", default=0)
    tape: Code = field(name="z", default=0)


class _Aggregate(msgspec.Struct, gc=False, kw_only=True, omit_defaults=True):
    symbol: Symbol = field(name="sym")
    volume: Size = field(name="v")
    day_volume: Count | None = field(name="av", default=None)
    day_open: Number | None = field(name="op", default=None)
    vwap: Number | None = field(name="vw", default=None)
    open: Price = field(name="o")
    close: Price = field(name="c")
    high: Price = field(name="h")
    low: Price = field(name="l")
    day_vwap: Number | None = field(name="a", default=None)
    average_size: Number | None = field(name="z", default=None)
    start: EpochMs = field(name="s")
    end: EpochMs = field(name="e")


class SecondAgg(_Aggregate, tag_field="ev", tag="A"):
    """`A`: per-second aggregate; the flow can build minute bars from these."""


class MinuteAgg(_Aggregate, tag_field="ev", tag="AM"):
    """`AM`: Polygon's own minute bar; re-broadcast when corrected."""


Event = Trade | Quote | SecondAgg | MinuteAgg

# Everything msgspec's JSON decoder raises for bad input: DecodeError (ValidationError is one),
# UnicodeDecodeError for invalid UTF-8 inside a string, RecursionError for absurd nesting in a
# field it skips. (TypeError means the input was not bytes at all, e.g. a Kafka tombstone.)
DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

_batch_decoder = msgspec.json.Decoder(list[Event])
_one_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


def bounds(annotated: object) -> tuple[float, bool, float, bool]:
    """An Annotated number type's range as (low, low included, high, high included), for checks
    that must agree with this schema without decoding through it (e.g. vectorised flat-file checks).

    >>> bounds(Size)
    (0, True, 1099511627776, True)
    """
    meta = annotated.__metadata__[0]  # type: ignore[attr-defined]  # typing's runtime attributes are not in its stubs
    low, low_in = (meta.ge, True) if meta.ge is not None else (meta.gt, False)
    high, high_in = (meta.le, True) if meta.le is not None else (meta.lt, False)
    return low, low_in, high, high_in


MAX_TRADE_ID = TradeId.__metadata__[0].max_length  # type: ignore[attr-defined]  # typing's runtime attributes are not in its stubs
MAX_CODES = Codes.__metadata__[0].max_length  # type: ignore[attr-defined]  # typing's runtime attributes are not in its stubs


def decode_events(frame: bytes) -> list[Event]:
    """Decode a JSON array of events (a WebSocket frame, or joined Kafka values); raises `msgspec.DecodeError`."""
    try:
        return _batch_decoder.decode(frame)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise msgspec.DecodeError(f"invalid JSON: {exc}") from None


def decode_event(raw: bytes) -> Event:
    """Decode one event; raises `msgspec.DecodeError` (a `ValidationError` for a wrong value) with the reason."""
    try:
        return _one_decoder.decode(raw)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise msgspec.DecodeError(f"invalid JSON: {exc}") from None


def encode_event(event: Event) -> bytes:
    """Encode with Polygon's field names, as the live feed would send it."""
    return _encoder.encode(event)
