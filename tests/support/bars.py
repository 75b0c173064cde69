"""The synthetic feed of the flow tests and the bars the independent oracle says it makes."""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl
from polars.testing import assert_frame_equal

from connectors.feeds.synthetic import generate
from tests.support.reference import reference_bars

ROOT = Path(__file__).resolve().parents[2]


VALID = {"trade", "out_of_order", "late", "duplicate"}


BAR_COLUMNS = ["symbol", "timestamp", "open", "high", "low", "close", "volume", "vwap", "trades"]


def feed(**kw):
    options = {"seed": 11, "symbols": 40, "rate": 40.0, "seconds": 25 * 60, "duplicate_ratio": 0.01, "out_of_order_ratio": 0.03,
                   "late_ratio": 0.01, "too_late_ratio": 0.003, "malformed_ratio": 0.005}  # fmt: skip
    options.update(kw)
    return list(generate(**options))


def expected_bars(events) -> pl.DataFrame:
    trades = [orjson.loads(e.value) for e in events if e.topic_kind == "trades" and e.label in VALID]
    return reference_bars(trades).select(BAR_COLUMNS).sort("symbol", "timestamp")


def assert_same_bars(actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    assert_frame_equal(
        actual.select(BAR_COLUMNS).sort("symbol", "timestamp"),
        expected,
        check_dtypes=False,
        rel_tol=1e-9,
        abs_tol=1e-9,
    )
