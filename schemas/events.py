"""Detection records: what the detectors emit to Redis, the tables and anyone else.

Every record is flat, versioned JSON tagged by `kind`, and carries what a consumer needs to
trust it without asking: the symbol, the time it refers to (a trade's time or a bar's
start, epoch ms UTC), a `confidence` in [0, 1], a `direction`, the `params` that produced
it, and an `id` that is a pure function of what was detected, so a replay or a restart
yields the same ids (sinks upsert on it).

A decision on a bar is made again when a revision changes the bars it read (see
flows/detect/bar_detector.py): the record goes out again under the same id with a `status` of
`amended` (it holds, differently) or `retracted` (it no longer holds; the fields are what was
retracted), and a higher `revision`. A consumer keeps, per id, the record of the highest
revision. High/low events (decided on trades) and indicator values (recomputed in place) are
always `detected`.

>>> e = PatternEvent(id=stable_id("pattern", "AAPL", "1m", 60_000, "doji"), type="doji", symbol="AAPL",
...                  timestamp=60_000, confidence=0.9, direction="neutral", params={}, signal=100)
>>> decode_event(encode_event(e)) == e
True
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.timeframes import TimeframeName as Timeframe

EVENT_SCHEMA_VERSION = 1

Confidence = Annotated[float, Meta(ge=0.0, le=1.0)]
Direction = Literal["up", "down", "neutral"]
EventStatus = Literal["detected", "amended", "retracted"]
EVENT_STATUSES: tuple[str, ...] = EventStatus.__args__  # type: ignore[attr-defined]  # typing's runtime attributes are not in its stubs
ParamValue = int | float | str | bool

PatternName = Literal[
    "doji",
    "hammer",
    "inverted_hammer",
    "shooting_star",
    "engulfing",
    "harami",
    "morning_star",
    "evening_star",
    "three_white_soldiers",
    "three_black_crows",
]
PATTERNS: tuple[str, ...] = PatternName.__args__  # type: ignore[attr-defined]  # typing's runtime attributes are not in its stubs
AlertRule = Literal[
    "rsi_overbought",  # RSI crossed above its upper level
    "rsi_oversold",  # RSI crossed below its lower level
    "macd_cross_up",  # MACD crossed above its signal line
    "macd_cross_down",  # MACD crossed below its signal line
    "bollinger_above",  # close above the upper band
    "bollinger_below",  # close below the lower band
]
ALERT_RULES: tuple[str, ...] = AlertRule.__args__  # type: ignore[attr-defined]  # typing's runtime attributes are not in its stubs
_blake2b = hashlib.blake2b


def stable_id(*parts: object) -> str:
    """A short id that depends only on `parts`: the same detection always gets the same id.

    >>> stable_id("pattern", "AAPL", "1m", 60_000, "doji")
    'b18d528b5ff1bfef'
    """
    return _blake2b("|".join(map(str, parts)).encode(), digest_size=8).hexdigest()


class _Record(msgspec.Struct, kw_only=True, tag_field="kind", omit_defaults=False):
    version: int = EVENT_SCHEMA_VERSION
    id: str
    type: str
    symbol: str
    timestamp: int  # the trade's time or the bar's start, epoch ms UTC
    confidence: Confidence
    direction: Direction
    params: dict[str, ParamValue]  # the settings that produced it
    # detected: first decision; amended: decided again on revised bars, still holds (fields as now);
    # retracted: decided again, no longer holds (fields as they were)
    status: EventStatus = "detected"

    @property
    def kind(self) -> str:
        """The record's tag: highlow, trend, surge, pattern, indicator or alert."""
        return self.__struct_config__.tag  # type: ignore[return-value]  # msgspec's struct config is untyped


class HighLowEvent(_Record, tag="highlow", kw_only=True):
    """A trade broke the session's (trading day's) high or low, or the prior N days' high or low.

    Detected on trades as they arrive, not at bar close. `previous` is the extreme it broke.
    """

    type: Literal["session_high", "session_low", "n_day_high", "n_day_low"]
    price: float
    previous: float
    session: str  # the US/Eastern trading day, YYYY-MM-DD


class TrendEvent(_Record, tag="trend", kw_only=True):
    """The bar trend changed: it started (from none) or reversed (from the opposite direction).

    `revision` (as in surges, patterns and alerts): the revision of the bar it is on when decided;
    an amendment or retraction carries at least one more than the record it replaces.
    `strength` is the correlation of close with time over `params.bars` bars, in [-1, 1].
    """

    type: Literal["trend_start", "trend_reversal"]
    timeframe: Timeframe = "1m"
    strength: float
    slope: float  # price per bar, from TA-Lib's LINEARREG_SLOPE
    close: float
    revision: int = 0


class SurgeEvent(_Record, tag="surge", kw_only=True):
    """A bar's volume or price moved far beyond its recent norm.

    `ratio`: bar volume / mean volume of the previous bars (volume_surge), or the percent
    move over the window (price_surge).
    """

    type: Literal["volume_surge", "price_surge"]
    timeframe: Timeframe = "1m"
    ratio: float
    close: float
    volume: int
    revision: int = 0


class PatternEvent(_Record, tag="pattern", kw_only=True):
    """A candlestick pattern TA-Lib recognised on the bar that ends it.

    `signal` is TA-Lib's own output (100 / -100, 200 / -200 when confirmed); `confidence`
    grades the pattern's geometry (see flows/detect/patterns.py).
    """

    type: PatternName
    timeframe: Timeframe = "1m"
    signal: int
    revision: int = 0


class IndicatorValues(_Record, tag="indicator", kw_only=True):
    """Every indicator for one bar, from TA-Lib over the symbol's bar series.

    None until an indicator has enough bars. `confidence` is the share of indicators that
    are warm. `type` is always "values".
    """

    type: Literal["values"] = "values"
    timeframe: Timeframe = "1m"
    sma: float | None
    ema: float | None
    rsi: float | None
    macd: float | None
    macd_signal: float | None
    macd_hist: float | None
    bb_upper: float | None
    bb_middle: float | None
    bb_lower: float | None
    atr: float | None
    vwap: float | None  # session VWAP (US/Eastern trading day) from the bars' own VWAP and volume
    revision: int = 0


class Alert(_Record, tag="alert", kw_only=True):
    """An indicator rule fired on a bar. `severity` is critical for the rules the deployment marks so."""

    type: AlertRule
    timeframe: Timeframe = "1m"
    severity: Literal["warning", "critical"]
    indicator: str
    value: float
    threshold: float
    message: str
    revision: int = 0


Event = HighLowEvent | TrendEvent | SurgeEvent | PatternEvent | IndicatorValues | Alert
EVENT_TYPES: tuple[type, ...] = (HighLowEvent, TrendEvent, SurgeEvent, PatternEvent, IndicatorValues, Alert)
KINDS: tuple[str, ...] = tuple(t.__struct_config__.tag for t in EVENT_TYPES)  # type: ignore[attr-defined]  # msgspec's struct config is untyped
EVENT_TABLE_KINDS: tuple[str, ...] = ("highlow", "trend", "surge", "pattern")
"""The kinds kept in the `events` table (`infra/migrations/0003_detection`); indicators and alerts
have tables of their own."""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(raw: bytes) -> Event:
    return _decoder.decode(raw)
