"""Analysts' Python door to the bars: polars DataFrames from `ohlcv_1min` and its derived timeframes.

    from connectors.analyst import bars
    df = bars(["AAPL", "MSFT"], datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC), "1h")

Every query is parameterised; the table comes from the fixed `TIMEFRAMES` mapping, never from the
caller's text, so no input can reach the SQL text. Bad input fails before the query with a
`ValueError` subclass that names the problem (unknown timeframe, unknown symbols, empty range).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

import polars as pl
import psycopg
from psycopg import sql

TIMEFRAMES: Final[dict[str, str]] = {
    "1m": "ohlcv_1min",
    "5m": "ohlcv_5min",
    "15m": "ohlcv_15min",
    "1h": "ohlcv_1hour",
    "1d": "ohlcv_1day",  # UTC calendar days
}

SCHEMA: Final[dict[str, pl.DataType]] = {
    "symbol": pl.String(),
    "timestamp": pl.Datetime("us", "UTC"),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Int64(),
    "vwap": pl.Float64(),
    "trades": pl.Int64(),
}

# Prices as float8: what DataFrame users compute with; NUMERIC would arrive as Python Decimals.
_QUERIES: Final[dict[str, sql.Composed]] = {
    timeframe: sql.SQL(
        "SELECT symbol, timestamp, open::float8, high::float8, low::float8, close::float8, volume,"
        " vwap::float8, trades FROM {table}"
        " WHERE symbol = ANY(%(symbols)s) AND timestamp >= %(start)s AND timestamp < %(end)s"
        " ORDER BY symbol, timestamp"
    ).format(table=sql.Identifier(table))
    for timeframe, table in TIMEFRAMES.items()
}


class BarQueryError(ValueError):
    """A `bars()` request that cannot be answered as asked; nothing was queried."""


class UnknownTimeframe(BarQueryError):
    """The timeframe is not one of `TIMEFRAMES`."""


class UnknownSymbol(BarQueryError):
    """Symbols absent from the `symbols` table (never seen by the pipeline): likely a typo."""


class InvalidRange(BarQueryError):
    """`start` is not before `end`, or no symbols were given."""


def bars(
    symbols: str | Iterable[str],
    start: datetime,
    end: datetime,
    timeframe: str = "1m",
    *,
    database_url: str | None = None,
) -> pl.DataFrame:
    """Bars of `symbols` whose bucket starts in [start, end), by symbol then time.

    Naive datetimes are taken as UTC. `database_url` defaults to DATABASE_URL from the settings.
    One short-lived connection per call: analysts' calls are few and far apart; use `bars_on` with
    your own connection for many calls.
    """
    if database_url is None:
        from flows.settings import Settings  # only when needed: a given URL must not depend on other env vars

        database_url = Settings().database_url
    with psycopg.connect(database_url, autocommit=True) as conn:
        return bars_on(conn, symbols, start, end, timeframe)


def bars_on(
    conn: psycopg.Connection,
    symbols: str | Iterable[str],
    start: datetime,
    end: datetime,
    timeframe: str = "1m",
) -> pl.DataFrame:
    """`bars()` on an open connection (what the query benchmark times)."""
    query = _QUERIES.get(timeframe)
    if query is None:
        raise UnknownTimeframe(f"unknown timeframe {timeframe!r}; expected one of {', '.join(TIMEFRAMES)}")
    wanted = sorted({symbols} if isinstance(symbols, str) else set(symbols))
    if not wanted:
        raise InvalidRange("no symbols given")
    start, end = _utc(start), _utc(end)
    if start >= end:
        raise InvalidRange(f"start {start.isoformat()} must be before end {end.isoformat()}")
    known = {row[0] for row in conn.execute("SELECT symbol FROM symbols WHERE symbol = ANY(%s)", (wanted,))}
    missing = [s for s in wanted if s not in known]
    if missing:
        raise UnknownSymbol(f"unknown symbol(s): {', '.join(missing)} (not in table symbols)")
    rows = conn.execute(query, {"symbols": wanted, "start": start, "end": end}).fetchall()
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
