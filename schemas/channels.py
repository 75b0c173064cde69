"""The Redis channel catalog: every channel the system publishes on, its payload record and its publisher.

One place for the names, so the publishers, the gateway, the docs and the tests agree. Names
keep the old TickStock's (dotted `tickstock.market.*`, colon `tickstock:patterns:*`) under a
configurable namespace. `{SYMBOL}` in a name stands for one ticker.

Every message on every channel also carries its channel position, `offset` (1, 2, 3, ...
contiguous per channel) and `epoch` (changes when the channel's history was lost), added by
the publisher; see connectors/redis/history.py.

>>> c = Channels("tickstock")
>>> c.ohlcv, c.ohlcv_for("AAPL"), c.patterns_detected
('tickstock.market.ohlcv', 'tickstock.market.ohlcv.AAPL', 'tickstock:patterns:detected')
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.bars import Bar
from schemas.events import Alert, HighLowEvent, IndicatorValues, PatternEvent, SurgeEvent, TrendEvent
from schemas.prices import Price
from schemas.status import FlowError, FlowHealth
from schemas.watchlists import WatchlistChange

DETECTED_MIN_CONFIDENCE = 0.8  # tickstock:patterns:detected carries patterns at or above this


class Channels:
    """Channel names under a namespace (default `tickstock`, the old system's prefix)."""

    def __init__(self, namespace: str = "tickstock") -> None:
        n = self.namespace = namespace
        self.ohlcv = f"{n}.market.ohlcv"  # final bars and revisions
        self.live = f"{n}.market.bars.live"  # forming bars
        self.prices = f"{n}.market.prices"  # last trade price per symbol
        self.volume = f"{n}.market.volume"  # volume surges (the old system's volume channel)
        self.highlow = f"{n}.events.highlow"
        self.trend = f"{n}.events.trend"
        self.surge = f"{n}.events.surge"
        self.events = f"{n}.events.by_symbol"  # + .{SYMBOL}: every event and alert of one symbol
        self.patterns_streaming = f"{n}:patterns:streaming"
        self.patterns_detected = f"{n}:patterns:detected"
        self.indicators = f"{n}:indicators:streaming"
        self.alerts = f"{n}:alerts:indicators"
        self.alerts_critical = f"{n}:alerts:critical"
        self.health = f"{n}.health.status"  # the flow's health, per partition
        self.errors = f"{n}:errors"  # every input the flow refused
        self.watchlist = f"{n}.dashboard.watchlist"  # a user's watchlist changed (the gateway's REST)

    def ohlcv_for(self, symbol: str) -> str:
        return f"{self.ohlcv}.{symbol}"

    def live_for(self, symbol: str) -> str:
        return f"{self.live}.{symbol}"

    def events_for(self, symbol: str) -> str:
        return f"{self.events}.{symbol}"

    def ohlcv_at(self, timeframe: str) -> str:
        """Final bars and revisions of one timeframe: 1m keeps the old name, others add `.{TF}`."""
        return self.ohlcv if timeframe == "1m" else f"{self.ohlcv}.{timeframe}"

    def ohlcv_at_for(self, timeframe: str, symbol: str) -> str:
        return f"{self.ohlcv_at(timeframe)}.{symbol}"

    def live_at(self, timeframe: str) -> str:
        """Forming bars of one timeframe: 1m keeps the old name, others add `.{TF}`."""
        return self.live if timeframe == "1m" else f"{self.live}.{timeframe}"

    def live_at_for(self, timeframe: str, symbol: str) -> str:
        return f"{self.live_at(timeframe)}.{symbol}"

    def prices_for(self, symbol: str) -> str:
        return f"{self.prices}.{symbol}"


@dataclass(frozen=True)
class ChannelSpec:
    """One catalog entry: the channel's name (as an attribute of `Channels`) and what flows on it."""

    attribute: str  # Channels attribute or method giving the name
    payload: type
    publisher: str
    what: str
    per_symbol: bool = False
    per_timeframe: bool = False  # the name takes a coarser timeframe (`{TF}`: 5m, 15m, 1h, 1d)

    def name(self, channels: Channels, symbol: str = "{SYMBOL}", timeframe: str = "{TF}") -> str:
        value = getattr(channels, self.attribute)
        if self.per_timeframe:
            return value(timeframe, symbol) if self.per_symbol else value(timeframe)
        return value(symbol) if callable(value) else value


CATALOG: tuple[ChannelSpec, ...] = (
    ChannelSpec("ohlcv", Bar, "flows.ohlcv (final bar sink)", "final 1-minute bars and revisions, every symbol, after the row is in PostgreSQL"),
    ChannelSpec("ohlcv_for", Bar, "flows.ohlcv (final bar sink)", "the same, one symbol", per_symbol=True),
    ChannelSpec("live", Bar, "flows.ohlcv (live bar sink)", "forming bars, every symbol, at most once per symbol per LIVE_UPDATE_INTERVAL_S"),
    ChannelSpec("live_for", Bar, "flows.ohlcv (live bar sink)", "the same, one symbol", per_symbol=True),
    ChannelSpec("ohlcv_at", Bar, "flows.ohlcv (final bar sink)", "final bars and revisions of one coarser timeframe `{TF}` "
                "(BAR_TIMEFRAMES: 5m, 15m, 1h, 1d; `timeframe` says which), rolled up from the final 1-minute bars, "
                "every symbol, after their minutes are in PostgreSQL", per_timeframe=True),
    ChannelSpec("ohlcv_at_for", Bar, "flows.ohlcv (final bar sink)", "the same, one symbol", per_symbol=True, per_timeframe=True),
    ChannelSpec("live_at", Bar, "flows.ohlcv (live bar sink)", "forming bars of one coarser timeframe `{TF}`, every symbol, "
                "at most once per bucket per LIVE_COARSE_UPDATE_INTERVAL_S", per_timeframe=True),
    ChannelSpec("live_at_for", Bar, "flows.ohlcv (live bar sink)", "the same, one symbol", per_symbol=True, per_timeframe=True),
    ChannelSpec("prices", Price, "flows.ohlcv (price sink)", "each symbol's last trade price (in event time, one that may "
                "set a close) and its change since the US/Eastern session's first, at most once per symbol per "
                "LIVE_UPDATE_INTERVAL_S"),
    ChannelSpec("prices_for", Price, "flows.ohlcv (price sink)", "the same, one symbol", per_symbol=True),
    ChannelSpec("highlow", HighLowEvent, "flows.ohlcv (highs and lows sink)", "new session and N-day highs and lows, detected on trades"),
    ChannelSpec("trend", TrendEvent, "flows.detection (detection sink)", "trend starts and reversals on bars"),
    ChannelSpec("surge", SurgeEvent, "flows.detection (detection sink)", "volume and price surges on bars"),
    ChannelSpec("volume", SurgeEvent, "flows.detection (detection sink)", "volume surges only (the old system's volume channel)"),
    ChannelSpec("patterns_streaming", PatternEvent, "flows.detection (detection sink)", "every candlestick pattern TA-Lib recognises"),
    ChannelSpec("patterns_detected", PatternEvent, "flows.detection (detection sink)", f"patterns with confidence >= {DETECTED_MIN_CONFIDENCE}, and every amendment or retraction of a pattern"),
    ChannelSpec("indicators", IndicatorValues, "flows.detection (detection sink)", "indicator values, one message per final bar or revision"),
    ChannelSpec("alerts", Alert, "flows.detection (detection sink)", "every indicator alert (RSI levels, MACD crosses, Bollinger breaks)"),
    ChannelSpec("alerts_critical", Alert, "flows.detection (detection sink)", "alerts whose rule the deployment marks critical (DETECT_ALERTS__CRITICAL)"),
    ChannelSpec("events_for", HighLowEvent | TrendEvent | SurgeEvent | PatternEvent | Alert, "flows.ohlcv and flows.detection",  # type: ignore[arg-type]  # a union of record types is a valid payload type; mypy wants a class
                "every event and alert of one symbol (not indicator values)", per_symbol=True),
    ChannelSpec("health", FlowHealth, "flows.ohlcv (status sink)", "each partition's counters and healthy/degraded, every 10 s"),
    ChannelSpec("errors", FlowError, "flows.ohlcv (status sink)", "every refused input: why, and where it is in Kafka"),
    ChannelSpec("watchlist", WatchlistChange, "connectors.gateway.rest (PUT/DELETE /api/watchlists/{name})",
                "a user's watchlist changed (the whole list after the change); every gateway moves the subscriptions following it"),
)  # fmt: skip


def route(event: object, channels: Channels) -> list[str]:
    """The channels a detection record is published on (see CATALOG).

    >>> from schemas.events import PatternEvent
    >>> e = PatternEvent(id="x", type="doji", symbol="AAPL", timestamp=0, confidence=0.9,
    ...                  direction="neutral", params={}, signal=100)
    >>> route(e, Channels())
    ['tickstock:patterns:streaming', 'tickstock:patterns:detected', 'tickstock.events.by_symbol.AAPL']
    """
    kind = event.kind  # type: ignore[attr-defined]  # every detection record has this field; the union is narrowed by `kind` above
    if kind == "indicator":
        return [channels.indicators]
    if kind == "highlow":
        out = [channels.highlow]
    elif kind == "trend":
        out = [channels.trend]
    elif kind == "surge":
        out = [channels.surge, channels.volume] if event.type == "volume_surge" else [channels.surge]  # type: ignore[attr-defined]  # every detection record has this field; the union is narrowed by `kind` above
    elif kind == "pattern":
        out = [channels.patterns_streaming]
        # an amendment or retraction also reaches those told of the pattern when its confidence was higher
        if event.confidence >= DETECTED_MIN_CONFIDENCE or event.status != "detected":  # type: ignore[attr-defined]  # every detection record has this field; the union is narrowed by `kind` above
            out.append(channels.patterns_detected)
    elif kind == "alert":
        out = [channels.alerts, channels.alerts_critical] if event.severity == "critical" else [channels.alerts]  # type: ignore[attr-defined]  # every detection record has this field; the union is narrowed by `kind` above
    else:
        raise ValueError(f"no channel for records of kind {kind!r}")
    out.append(channels.events_for(event.symbol))  # type: ignore[attr-defined]  # every detection record has this field; the union is narrowed by `kind` above
    return out
