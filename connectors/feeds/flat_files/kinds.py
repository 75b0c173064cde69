"""The three kinds of Polygon flat file the replay reads, their columns and what each kind needs.

Polygon ships a day per file (gzipped CSV) under trades_v1/, quotes_v1/ and minute_aggs_v1/.
The schemas type the columns we read; `REQUIRED` are the columns a row needs to become a feed
event (the others are optional: absent or empty, the field is omitted), and columns not in a
kind's schema are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl

Kind = Literal["trades", "quotes", "minute_aggs"]

TRADES_SCHEMA = {
    "ticker": pl.String, "conditions": pl.String, "correction": pl.Int64, "exchange": pl.Int64, "id": pl.String,
    "participant_timestamp": pl.Int64, "price": pl.Float64, "sequence_number": pl.Int64, "sip_timestamp": pl.Int64,
    "size": pl.Float64, "tape": pl.Int64, "trf_id": pl.Int64, "trf_timestamp": pl.Int64,
}  # fmt: skip
QUOTES_SCHEMA = {
    "ticker": pl.String, "ask_exchange": pl.Int64, "ask_price": pl.Float64, "ask_size": pl.Float64,
    "bid_exchange": pl.Int64, "bid_price": pl.Float64, "bid_size": pl.Float64, "conditions": pl.String,
    "indicators": pl.String, "participant_timestamp": pl.Int64, "sequence_number": pl.Int64,
    "sip_timestamp": pl.Int64, "tape": pl.Int64, "trf_timestamp": pl.Int64,
}  # fmt: skip
MINUTE_SCHEMA = {
    "ticker": pl.String, "volume": pl.Float64, "open": pl.Float64, "close": pl.Float64, "high": pl.Float64,
    "low": pl.Float64, "window_start": pl.Int64, "transactions": pl.Int64,
}  # fmt: skip
SCHEMAS = {"trades": TRADES_SCHEMA, "quotes": QUOTES_SCHEMA, "minute_aggs": MINUTE_SCHEMA}

# What each kind needs to become a feed event; the other columns of its schema are optional
# (absent or empty: the field is omitted), and columns not in its schema are ignored.
REQUIRED: dict[Kind, tuple[str, ...]] = {
    "trades": ("ticker", "exchange", "id", "price", "size", "sip_timestamp"),
    "quotes": ("ticker", "bid_price", "ask_price", "sip_timestamp"),
    "minute_aggs": ("ticker", "volume", "open", "close", "high", "low", "window_start"),
}
NOT_FORWARDED = {"correction", "participant_timestamp", "transactions"}  # not checked either


class FlatFileError(Exception):
    """A flat file that cannot be read at all; the message names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


def kind_of(path: Path) -> Kind:
    """trades_v1/…, quotes_v1/…, minute_aggs_v1/… (Polygon's flat-file layout) or a name containing it."""
    for name in (path.name, *(p.name for p in path.parents)):
        for kind in ("minute_aggs", "quotes", "trades"):
            if kind in name:
                return kind
    raise ValueError(f"cannot tell the flat-file kind of {path}; pass --kind")
