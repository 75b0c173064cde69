"""What the synthetic feed generates: its vocabulary (topic kinds, labels), its timing and `FeedConfig`.

Time model: the *feed clock* advances by `1000 / rate` ms per primary event, starting at
`start_ms` (or reads `clock()` when given, for real-time runs). An on-time trade is stamped
with the feed clock; out-of-order, late and too-late trades are stamped `clock - delay`, where
the delay is drawn uniformly from `OUT_OF_ORDER_MS`, `LATE_MS` and `TOO_LATE_MS`. Every event
carries the feed clock it was emitted at (`FeedEvent.clock_ms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

# --- public vocabulary -------------------------------------------------------------------

TRADES, QUOTES, SECOND_AGGS = "trades", "quotes", "second_aggs"
TRADE, DUPLICATE, OUT_OF_ORDER, LATE, TOO_LATE, MALFORMED, QUOTE, SECOND_AGG = (
    "trade",
    "duplicate",
    "out_of_order",
    "late",
    "too_late",
    "malformed",
    "quote",
    "second_agg",
)
LABELS: Final = (TRADE, DUPLICATE, OUT_OF_ORDER, LATE, TOO_LATE, MALFORMED, QUOTE, SECOND_AGG)

DEFAULT_START_MS: Final = 1_793_629_800_000  # Mon 2026-11-02 14:30:00 UTC = 09:30 New York (open)
OUT_OF_ORDER_MS: Final = (100, 5_000)  # arrives this much after its SIP time
LATE_MS: Final = (60_000, 840_000)  # 1-14 min: inside the default 15-minute allowed lateness
TOO_LATE_MS: Final = (1_200_001, 1_800_000)  # > 20 min: even its bar's end is > 19 min old
DUPLICATE_WINDOW: Final = 512  # a duplicate re-sends one of the last N trades (and <= 1 s of events)


class FeedEvent(NamedTuple):
    """One Kafka record to publish, with what it is for (`label`) and when (`clock_ms`)."""

    topic_kind: str  # "trades" | "quotes" | "second_aggs"
    key: bytes  # symbol
    value: bytes  # Polygon wire JSON of one event (or deliberately broken bytes)
    label: str  # one of LABELS
    clock_ms: int  # feed clock when emitted


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """What to generate. Ratios are fractions of the primary (non-aggregate) events."""

    seed: int = 1
    symbols: int = 4000
    rate: float = 2000.0  # primary events per second of event time
    start_ms: int = DEFAULT_START_MS
    count: int | None = None  # primary events; None with seconds=None => endless
    seconds: float | None = None  # alternative to count: seconds of event time
    duplicate_ratio: float = 0.002
    out_of_order_ratio: float = 0.01
    late_ratio: float = 0.001
    too_late_ratio: float = 0.0
    malformed_ratio: float = 0.0
    quote_ratio: float = 0.0
    second_aggs: bool = False  # also emit `A` aggregates of each symbol-second's on-time trades
    # "regular": only trades that update every bar field, so bars built from `A` equal bars
    # built from the trades (with "realistic" odd lots etc., seconds without a price-setting
    # trade get no `A` and their volume is missing from `A`-built bars).
    condition_mix: Literal["realistic", "regular"] = "realistic"

    def __post_init__(self) -> None:
        if not 1 <= self.symbols <= 100_000:
            raise ValueError("symbols must be in 1..100000")
        if self.rate <= 0:
            raise ValueError("rate must be > 0")
        if self.count is not None and self.seconds is not None:
            raise ValueError("give count or seconds, not both")
        if (self.count is not None and self.count < 0) or (self.seconds is not None and self.seconds < 0):
            raise ValueError("count/seconds must be >= 0")
        if self.condition_mix not in ("realistic", "regular"):
            raise ValueError("condition_mix must be 'realistic' or 'regular'")
        ratios = self.anomaly_ratios()
        if any(r < 0 for r in ratios.values()) or sum(ratios.values()) > 1:
            raise ValueError(f"ratios must be >= 0 and sum to <= 1: {ratios}")

    def anomaly_ratios(self) -> dict[str, float]:
        return {
            DUPLICATE: self.duplicate_ratio,
            OUT_OF_ORDER: self.out_of_order_ratio,
            LATE: self.late_ratio,
            TOO_LATE: self.too_late_ratio,
            MALFORMED: self.malformed_ratio,
            QUOTE: self.quote_ratio,
        }

    def primary_events(self) -> int | None:
        """How many primary events to emit (None = endless)."""
        if self.seconds is not None:
            return int(self.seconds * self.rate)
        return self.count
