"""The SQL REST runs on the pipeline's tables, and the rows it answers in the records' own shapes.

Every query is parameterised; a table name comes only from `schemas.timeframes.TIMEFRAMES`.
Rows use a dict row factory per cursor (a pooled connection must not carry it to the next
request). Event and alert rows are returned in the shape of their schemas/events.py records:
times in epoch ms, an event's `detail` spread out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from connectors.postgres.queries import BARS_IN_RANGE, SESSION_BARS_IN_RANGE
from schemas.timeframes import Timeframe

BUSIEST_SCAN = 5000  # rows read when a grant's symbols must be filtered after the query


async def rows(conn: psycopg.AsyncConnection, query: Any, params: tuple | dict[str, Any]) -> list[dict]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await cur.fetchall()


async def is_known(conn: psycopg.AsyncConnection, symbol: str) -> bool:
    """Whether the pipeline has ever seen `symbol` (the `symbols` table)."""
    row = await (await conn.execute("SELECT 1 FROM symbols WHERE symbol = %s", (symbol,))).fetchone()
    return row is not None


async def busiest_symbols(conn: psycopg.AsyncConnection, limit: int) -> list[str]:
    """Symbols with a bar in the last hour of data, busiest latest minute first."""
    found = await rows(
        conn,
        "SELECT symbol FROM latest_bars WHERE timestamp >= (SELECT max(timestamp) FROM latest_bars) - interval '1 hour'"
        " ORDER BY timestamp DESC, volume DESC LIMIT %s",
        (limit,),
    )
    return [r["symbol"] for r in found]


async def recent_ticks(conn: psycopg.AsyncConnection, symbol: str, since: datetime, limit: int) -> list[dict]:
    """1-minute bars of `symbol` starting at or after `since`, newest first."""
    return await rows(
        conn,
        "SELECT symbol, timestamp, open::float8 AS open, high::float8 AS high, low::float8 AS low,"
        " close::float8 AS close, volume FROM ohlcv_1min WHERE symbol = %s AND timestamp >= %s"
        " ORDER BY timestamp DESC LIMIT %s",
        (symbol, since, limit),
    )


async def bars(
    conn: psycopg.AsyncConnection, timeframe: Timeframe, symbol: str, start: datetime, end: datetime, session: str | None = None
) -> list[dict]:
    """Bars of `symbol` in `timeframe` whose bucket starts in [start, end), oldest first (the shared bar SQL);
    with a `session` (timeframe 1d), that session's daily bars by US/Eastern day, starting at its open."""
    query = BARS_IN_RANGE[timeframe.name] if session is None else SESSION_BARS_IN_RANGE[session]
    return await rows(conn, query, {"symbols": [symbol], "start": start, "end": end})


# A record's `status` (detected / amended / retracted) is a column from migration 0007 on; read through
# to_jsonb, the same query answers "detected" on a database migrated only to 0006.
_STATUS = "coalesce(to_jsonb({0}) ->> 'status', 'detected') AS status"
# `timeframe` filter: rows of that timeframe, and rows without one (highlow events come from trades)
_TIMEFRAME = "(%(timeframe)s::text IS NULL OR timeframe IS NULL OR timeframe = %(timeframe)s)"


async def detection_events(
    conn: psycopg.AsyncConnection, symbol: str, since: datetime, kinds: list[str], limit: int, timeframe: str | None = None
) -> list[dict]:
    """Rows of the `events` table of `kinds`, newest first, as their records."""
    found = await rows(
        conn,
        "SELECT kind, id, type, symbol, timestamp, timeframe, direction, confidence, price, revision, "
        + _STATUS.format("events")
        + ", params, detail FROM events WHERE symbol = %(symbol)s AND timestamp >= %(since)s AND kind = ANY(%(kinds)s)"
        f" AND {_TIMEFRAME} ORDER BY timestamp DESC LIMIT %(limit)s",
        {"symbol": symbol, "since": since, "kinds": kinds, "limit": limit, "timeframe": timeframe},
    )
    return [_event(r) for r in found]


async def alerts(
    conn: psycopg.AsyncConnection, symbol: str, since: datetime, limit: int, timeframe: str | None = None
) -> list[dict]:
    """Rows of the `alerts` table, newest first, as their records."""
    found = await rows(
        conn,
        "SELECT 'alert' AS kind, id, rule AS type, symbol, timestamp, timeframe, direction, confidence,"
        " severity, indicator, value, threshold, message, revision, "
        + _STATUS.format("alerts")
        + ", params FROM alerts WHERE symbol = %(symbol)s AND timestamp >= %(since)s"
        f" AND {_TIMEFRAME} ORDER BY timestamp DESC LIMIT %(limit)s",
        {"symbol": symbol, "since": since, "limit": limit, "timeframe": timeframe},
    )
    return [{**r, "timestamp": _ms(r["timestamp"])} for r in found]


async def indicators(
    conn: psycopg.AsyncConnection, symbol: str, since: datetime, limit: int, timeframe: str | None = None
) -> list[dict]:
    """Rows of `indicator_values`, newest first, in IndicatorValues' shape (the table keeps no id or confidence)."""
    found = await rows(
        conn,
        "SELECT 'indicator' AS kind, 'values' AS type, symbol, timestamp, timeframe, sma, ema, rsi, macd, macd_signal,"
        " macd_hist, bb_upper, bb_middle, bb_lower, atr, vwap, revision FROM indicator_values"
        f" WHERE symbol = %(symbol)s AND timestamp >= %(since)s AND {_TIMEFRAME} ORDER BY timestamp DESC LIMIT %(limit)s",
        {"symbol": symbol, "since": since, "limit": limit, "timeframe": timeframe},
    )
    return [{**r, "timestamp": _ms(r["timestamp"])} for r in found]


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _event(row: dict) -> dict:
    """An `events` row in the shape of its schemas/events.py record (`detail` spread out)."""
    detail = row.pop("detail") or {}
    price = row.pop("price")
    out = {**row, **detail, "timestamp": _ms(row["timestamp"])}
    if price is not None:
        out.setdefault("price", price)
    if out.get("timeframe") is None:
        out.pop("timeframe", None)
    return out
