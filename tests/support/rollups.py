"""Random 1-minute bars, their coarser views and the independent rollup they must equal (both databases)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta

import polars as pl
import psycopg
from polars.testing import assert_frame_equal

from connectors.postgres.analyst import TIMEFRAMES
from schemas.bars import Bar

EVERY = {"ohlcv_5min": "5m", "ohlcv_15min": "15m", "ohlcv_1hour": "1h", "ohlcv_1day": "1d"}


COLUMNS = ["symbol", "timestamp", "open", "high", "low", "close", "volume", "vwap", "trades"]


START = datetime(2024, 1, 2, 22, 0, tzinfo=UTC)  # runs across UTC midnight: two 1-day buckets


def one_minute_rows(symbols: tuple[str, ...] = ("AAPL", "MSFT"), minutes: int = 200) -> list[tuple]:
    """Random bars with holes, volume-only minutes (no prices) and zero-volume minutes."""
    rng, rows = random.Random(6), []
    for symbol in symbols:
        price = 100.0
        for m in range(minutes):
            if rng.random() < 0.1:
                continue  # a minute without trades: no bar
            ts = START + timedelta(minutes=m)
            volume = rng.randint(0, 500) if rng.random() < 0.95 else 0
            if rng.random() < 0.1:  # volume-only trades: no price at all
                rows.append((symbol, ts, None, None, None, None, volume, None, rng.randint(1, 3)))
                continue
            price = round(price + rng.uniform(-0.5, 0.5), 4)
            o, c = price, round(price + rng.uniform(-0.3, 0.3), 4)
            h, low = round(max(o, c) + rng.uniform(0, 0.2), 4), round(min(o, c) - rng.uniform(0, 0.2), 4)
            rows.append((symbol, ts, o, h, low, c, volume, round((o + c) / 2, 4), rng.randint(1, 40)))
    return rows


def insert(conn: psycopg.Connection, rows: list[tuple]) -> None:
    conn.execute("INSERT INTO symbols (symbol) SELECT DISTINCT unnest(%s::text[])", ([r[0] for r in rows],))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def table(conn: psycopg.Connection, name: str) -> pl.DataFrame:
    assert name in TIMEFRAMES.values() or name == "latest_bars"
    rows = conn.execute(
        f"SELECT symbol, timestamp, open::float8, high::float8, low::float8, close::float8, volume, vwap::float8,"
        f" trades FROM {name} ORDER BY symbol, timestamp"
    ).fetchall()
    return pl.DataFrame(rows, schema=COLUMNS, orient="row").with_columns(pl.col("timestamp").dt.convert_time_zone("UTC"))


def reference(minute_bars: pl.DataFrame, every: str) -> pl.DataFrame:
    """The issue's definition, computed by polars: UTC buckets, first/last non-null prices by time."""
    return (
        minute_bars.sort("symbol", "timestamp")
        .group_by("symbol", pl.col("timestamp").dt.truncate(every), maintain_order=True)
        .agg(*bar_fields())
        .with_columns(pl.when(pl.col("vwap").is_finite()).then("vwap").alias("vwap"))  # 0/0 -> null, as in SQL
        .sort("symbol", "timestamp")
    )


def bar_fields() -> list[pl.Expr]:
    """The field rules over a group of minutes sorted by time: first/last non-null prices, sums, VWAP."""
    priced = (pl.col("vwap").is_not_null()) & (pl.col("volume") > 0)
    return [
        pl.col("open").drop_nulls().first(),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("close").drop_nulls().last(),
        pl.col("volume").sum(),
        ((pl.col("vwap") * pl.col("volume")).filter(priced).sum() / pl.col("volume").filter(priced).sum()).alias("vwap"),
        pl.col("trades").sum(),
    ]


def session_reference(minute_bars: pl.DataFrame, opens: time, closes: time) -> pl.DataFrame:
    """Daily bars of the minutes in [opens, closes) New York wall-clock time, by New York date, computed
    by polars' own time zone rules; `timestamp` = that day's open in UTC (migration 0006's columns)."""
    local = pl.col("timestamp").dt.convert_time_zone("America/New_York")
    return (
        minute_bars.sort("symbol", "timestamp")
        .filter(local.dt.time().is_between(opens, closes, closed="left"))
        .group_by("symbol", local.dt.date().alias("day"), maintain_order=True)
        .agg(*bar_fields())
        .with_columns(
            pl.when(pl.col("vwap").is_finite()).then("vwap").alias("vwap"),
            pl.col("day")
            .dt.combine(opens)
            .dt.replace_time_zone("America/New_York")
            .dt.convert_time_zone("UTC")
            .alias("timestamp"),
        )
        .select(*COLUMNS, "day")
        .sort("symbol", "timestamp")
    )


def assert_views_match(conn: psycopg.Connection) -> None:
    minute_bars = table(conn, "ohlcv_1min")
    for view, every in EVERY.items():
        assert_frame_equal(table(conn, view), reference(minute_bars, every), check_dtypes=False, rel_tol=1e-9)


def latest_coarse(bars: Iterable[Bar]) -> dict[tuple[str, str, int], Bar]:
    """The highest revision of each coarse (timeframe, symbol, bucket) among final bars, as a consumer keeps it."""
    latest: dict[tuple[str, str, int], Bar] = {}
    for bar in bars:
        if bar.timeframe == "1m" or bar.status != "final":
            continue
        key = (bar.timeframe, bar.symbol, bar.timestamp)
        if key not in latest or latest[key].revision <= bar.revision:
            latest[key] = bar
    return latest


def assert_streamed_bars_match_views(conn: psycopg.Connection, bars: Iterable[Bar]) -> dict[str, int]:
    """The latest revision of every coarse bucket the flow streamed equals the database view's row, at
    every timeframe, and no bucket is missing on either side; returns the buckets per timeframe."""
    latest = latest_coarse(bars)
    counts = {}
    for view, tf in EVERY.items():
        rows = [b for (frame, _, _), b in latest.items() if frame == tf]
        streamed = pl.DataFrame(
            [{c: getattr(b, c) for c in COLUMNS} for b in rows],
            schema={"symbol": pl.String, "timestamp": pl.Int64, "open": pl.Float64, "high": pl.Float64, "low": pl.Float64,
                    "close": pl.Float64, "volume": pl.Int64, "vwap": pl.Float64, "trades": pl.Int64},
        ).with_columns(pl.from_epoch("timestamp", time_unit="ms").dt.replace_time_zone("UTC"))  # fmt: skip
        assert_frame_equal(streamed.sort("symbol", "timestamp"), table(conn, view), check_dtypes=False, rel_tol=1e-9)
        counts[tf] = len(rows)
    return counts
