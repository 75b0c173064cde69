"""The synthetic Polygon stocks feed: deterministic trades, quotes and `A` aggregates, with anomalies.

Read it in this order: `config` (what to generate: labels, timing, `FeedConfig`), `market` (the
model: symbols, prices, sale conditions, broken records), `generator` (`SyntheticFeed`, pure and
deterministic, knows nothing about Kafka) and `program` (``python -m connectors.feeds.synthetic``,
which publishes it). The names most callers need are here.
"""

from connectors.feeds.synthetic.config import (
    DEFAULT_START_MS,
    LABELS,
    LATE_MS,
    OUT_OF_ORDER_MS,
    TOO_LATE_MS,
    FeedConfig,
    FeedEvent,
)
from connectors.feeds.synthetic.generator import SyntheticFeed, generate

__all__ = [
    "DEFAULT_START_MS",
    "LABELS",
    "LATE_MS",
    "OUT_OF_ORDER_MS",
    "TOO_LATE_MS",
    "FeedConfig",
    "FeedEvent",
    "SyntheticFeed",
    "generate",
]
