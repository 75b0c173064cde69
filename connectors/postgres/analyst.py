"""Analysts' Python door to the tables: polars DataFrames of bars, events, indicator values and alerts.

    from connectors.postgres.analyst import bars, events, indicators, alerts
    day = datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC)
    hourly = bars(["AAPL", "MSFT"], *day, "1h")
    trading_days = bars(["AAPL"], *day, "1d", session="regular")  # 09:30-16:00 New York; or "extended"
    doji = events(["AAPL"], *day, kinds="pattern", min_confidence=0.8)
    rsi = indicators(["AAPL"], *day)  # 1-minute indicators, the ones the detection flow computes.select("timestamp", "rsi")
    critical = alerts(["AAPL", "MSFT"], *day, severity="critical")

Every query is parameterised; table names come from fixed mappings, never from the caller's text, so
no input can reach the SQL text. Bad input fails before the query with a `ValueError` subclass that
names the problem (unknown timeframe, session, kind, severity, rule or symbols; empty range). Each function has
an `..._on(conn, ...)` twin that uses an open connection (many calls, benchmarks, transactions).
JSONB columns (`params`, `detail`) arrive as JSON text: `pl.col("detail").str.json_decode()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Final

import polars as pl
import psycopg
from psycopg import sql

from connectors.postgres.queries import BARS_IN_RANGE, IN_RANGE, SESSION_BARS_IN_RANGE
from schemas.events import ALERT_RULES, EVENT_TABLE_KINDS
from schemas.sessions import SESSIONS
from schemas.timeframes import TIMEFRAMES as _TIMEFRAMES

TIMEFRAMES: Final[dict[str, str]] = {t.name: t.table for t in _TIMEFRAMES.values()}  # name -> table or view
EVENT_KINDS: Final[tuple[str, ...]] = EVENT_TABLE_KINDS
SEVERITIES: Final[tuple[str, ...]] = ("warning", "critical")

_TIME = pl.Datetime("us", "UTC")
SCHEMA: Final[dict[str, pl.DataType]] = {
    "symbol": pl.String(),
    "timestamp": _TIME,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Int64(),
    "vwap": pl.Float64(),
    "trades": pl.Int64(),
}
SESSION_SCHEMA: Final[dict[str, pl.DataType]] = {**SCHEMA, "day": pl.Date()}
"""Daily bars of a session: the bar columns (`timestamp` = the session's open) and the US/Eastern `day`."""
EVENT_SCHEMA: Final[dict[str, pl.DataType]] = {
    "symbol": pl.String(),
    "timestamp": _TIME,
    "id": pl.String(),
    "kind": pl.String(),
    "type": pl.String(),
    "timeframe": pl.String(),
    "direction": pl.String(),
    "confidence": pl.Float64(),
    "price": pl.Float64(),
    "revision": pl.Int64(),
    "status": pl.String(),  # detected, amended or retracted (after a revision of its bar; migration 0007)
    "params": pl.String(),
    "detail": pl.String(),
}
INDICATOR_SCHEMA: Final[dict[str, pl.DataType]] = {
    "symbol": pl.String(),
    "timeframe": pl.String(),
    "timestamp": _TIME,
    **{
        name: pl.Float64()
        for name in ("sma", "ema", "rsi", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_middle", "bb_lower", "atr", "vwap")
    },
    "revision": pl.Int64(),
}
ALERT_SCHEMA: Final[dict[str, pl.DataType]] = {
    "symbol": pl.String(),
    "timestamp": _TIME,
    "id": pl.String(),
    "rule": pl.String(),
    "severity": pl.String(),
    "timeframe": pl.String(),
    "direction": pl.String(),
    "confidence": pl.Float64(),
    "indicator": pl.String(),
    "value": pl.Float64(),
    "threshold": pl.Float64(),
    "message": pl.String(),
    "revision": pl.Int64(),
    "status": pl.String(),  # detected, amended or retracted
    "params": pl.String(),
}

_EVENT_QUERY: Final = sql.SQL(
    "SELECT symbol, timestamp, id, kind, type, timeframe, direction, confidence, price, revision, status,"
    " params::text, detail::text FROM events" + IN_RANGE + " AND kind = ANY(%(kinds)s) AND confidence >= %(min_confidence)s"
    " ORDER BY symbol, timestamp, id"
)
_INDICATOR_QUERY: Final = sql.SQL(
    "SELECT symbol, timeframe, timestamp, sma, ema, rsi, macd, macd_signal, macd_hist, bb_upper, bb_middle, bb_lower,"
    " atr, vwap, revision FROM indicator_values" + IN_RANGE + " AND timeframe = %(timeframe)s"
    " ORDER BY symbol, timestamp"
)
_ALERT_QUERY: Final = sql.SQL(
    "SELECT symbol, timestamp, id, rule, severity, timeframe, direction, confidence, indicator, value, threshold,"
    " message, revision, status, params::text FROM alerts" + IN_RANGE + " AND severity = ANY(%(severities)s)"
    " AND rule = ANY(%(rules)s) ORDER BY symbol, timestamp, id"
)
# A symbol is known when the pipeline has seen it (`symbols`) or the table has rows for it: the
# detection tables have no foreign key, an event can precede its symbol's first bar.
_UNKNOWN = "SELECT s FROM unnest(%(symbols)s::text[]) AS s WHERE NOT EXISTS (SELECT 1 FROM symbols WHERE symbol = s)"
_UNKNOWN_IN: Final[dict[str, sql.Composed]] = {
    table: sql.SQL(_UNKNOWN + " AND NOT EXISTS (SELECT 1 FROM {table} WHERE symbol = s)").format(table=sql.Identifier(table))
    for table in ("events", "indicator_values", "alerts")
}


class QueryError(ValueError):
    """A request that cannot be answered as asked; nothing was queried."""


BarQueryError = QueryError  # the name of the first release


class UnknownTimeframe(QueryError):
    """The timeframe is not one of `TIMEFRAMES`."""


class UnknownSession(QueryError):
    """The session is not one of `schemas.sessions.SESSIONS`."""


class UnknownKind(QueryError):
    """An event kind, alert severity or alert rule that the tables cannot hold."""


class UnknownSymbol(QueryError):
    """Symbols never seen by the pipeline (nor in the queried table): likely a typo."""


class InvalidRange(QueryError):
    """`start` is not before `end`, no symbols were given, or a threshold is out of range."""


def bars(
    symbols: str | Iterable[str],
    start: datetime,
    end: datetime,
    timeframe: str = "1m",
    *,
    session: str | None = None,
    database_url: str | None = None,
) -> pl.DataFrame:
    """Bars of `symbols` whose bucket starts in [start, end), by symbol then time.

    `session` ("regular": 09:30-16:00 New York, "extended": 04:00-20:00; with timeframe "1d") gives
    daily bars by US/Eastern trading day instead of UTC day: `timestamp` is the session's open and a
    column `day` the US/Eastern date (`SESSION_SCHEMA`).
    Naive datetimes are taken as UTC. `database_url` defaults to DATABASE_URL from the settings.
    One short-lived connection per call: analysts' calls are few and far apart; use `bars_on` with
    your own connection for many calls.
    """
    with _connect(database_url) as conn:
        return bars_on(conn, symbols, start, end, timeframe, session=session)


def bars_on(
    conn: psycopg.Connection,
    symbols: str | Iterable[str],
    start: datetime,
    end: datetime,
    timeframe: str = "1m",
    *,
    session: str | None = None,
) -> pl.DataFrame:
    """`bars()` on an open connection (what the query benchmark times)."""
    query, schema = bar_query(timeframe, session)
    params = _range(symbols, start, end)
    _check_symbols(conn, params["symbols"], sql.SQL(_UNKNOWN))
    return _frame(conn, query, params, schema)


def bar_query(timeframe: str, session: str | None = None) -> tuple[sql.Composed, dict[str, pl.DataType]]:
    """The query and frame schema of a timeframe, or of a session's daily bars; refuses other names."""
    query = BARS_IN_RANGE.get(timeframe)
    if query is None:
        raise UnknownTimeframe(f"unknown timeframe {timeframe!r}; expected one of {', '.join(TIMEFRAMES)}")
    if session is None:
        return query, SCHEMA
    if session not in SESSIONS:
        raise UnknownSession(f"unknown session {session!r}; expected one of {', '.join(SESSIONS)}")
    if timeframe != "1d":
        raise UnknownTimeframe(f"session {session!r} has daily bars: use timeframe '1d', not {timeframe!r}")
    return SESSION_BARS_IN_RANGE[session], SESSION_SCHEMA


def events(
    symbols: str | Iterable[str],
    start: datetime,
    end: datetime,
    kinds: str | Iterable[str] | None = None,
    *,
    min_confidence: float = 0.0,
    database_url: str | None = None,
) -> pl.DataFrame:
    """Detected events (high/low, trend, surge, pattern) of `symbols` with `timestamp` in [start, end).

    `kinds` narrows to some of `EVENT_KINDS`; `min_confidence` in [0, 1]. Kind-specific fields are in
    the JSON text column `detail`, the settings that produced the event in `params`; `status` is
    `retracted` for a decision a revised bar no longer supports (kept, so what was said stays known).
    """
    with _connect(database_url) as conn:
        return events_on(conn, symbols, start, end, kinds, min_confidence=min_confidence)


def events_on(
    conn: psycopg.Connection,
    symbols: str | Iterable[str],
    start: datetime,
    end: datetime,
    kinds: str | Iterable[str] | None = None,
    *,
    min_confidence: float = 0.0,
) -> pl.DataFrame:
    """`events()` on an open connection."""
    chosen = _choose("event kind", kinds, EVENT_KINDS)
    if not 0.0 <= min_confidence <= 1.0:
        raise InvalidRange(f"min_confidence {min_confidence} must be between 0 and 1")
    params = _range(symbols, start, end) | {"kinds": chosen, "min_confidence": min_confidence}
    _check_symbols(conn, params["symbols"], _UNKNOWN_IN["events"])
    return _frame(conn, _EVENT_QUERY, params, EVENT_SCHEMA)


def indicators(
    symbols: str | Iterable[str],
    start: datetime,
    end: datetime,
    timeframe: str = "1m",
    *,
    database_url: str | None = None,
) -> pl.DataFrame:
    """Indicator values (SMA, EMA, RSI, MACD, Bollinger, ATR, VWAP) of `symbols` for the bars of
    `timeframe` that start in [start, end); None where an indicator was not warm yet."""
    with _connect(database_url) as conn:
        return indicators_on(conn, symbols, start, end, timeframe)


def indicators_on(
    conn: psycopg.Connection,
    symbols: str | Iterable[str],
    start: datetime,
    end: datetime,
    timeframe: str = "1m",
) -> pl.DataFrame:
    """`indicators()` on an open connection."""
    if timeframe not in TIMEFRAMES:
        raise UnknownTimeframe(f"unknown timeframe {timeframe!r}; expected one of {', '.join(TIMEFRAMES)}")
    params = _range(symbols, start, end) | {"timeframe": timeframe}
    _check_symbols(conn, params["symbols"], _UNKNOWN_IN["indicator_values"])
    return _frame(conn, _INDICATOR_QUERY, params, INDICATOR_SCHEMA)


def alerts(
    symbols: str | Iterable[str],
    start: datetime,
    end: datetime,
    *,
    severity: str | Iterable[str] | None = None,
    rules: str | Iterable[str] | None = None,
    database_url: str | None = None,
) -> pl.DataFrame:
    """Indicator alerts that fired for `symbols` with `timestamp` in [start, end), optionally only some
    severities (`SEVERITIES`) or rules (`schemas.events.ALERT_RULES`)."""
    with _connect(database_url) as conn:
        return alerts_on(conn, symbols, start, end, severity=severity, rules=rules)


def alerts_on(
    conn: psycopg.Connection,
    symbols: str | Iterable[str],
    start: datetime,
    end: datetime,
    *,
    severity: str | Iterable[str] | None = None,
    rules: str | Iterable[str] | None = None,
) -> pl.DataFrame:
    """`alerts()` on an open connection."""
    params = _range(symbols, start, end) | {
        "severities": _choose("alert severity", severity, SEVERITIES),
        "rules": _choose("alert rule", rules, ALERT_RULES),
    }
    _check_symbols(conn, params["symbols"], _UNKNOWN_IN["alerts"])
    return _frame(conn, _ALERT_QUERY, params, ALERT_SCHEMA)


def _connect(database_url: str | None) -> psycopg.Connection:
    if database_url is None:
        from connectors.postgres.settings import (
            PostgresSettings,  # only when needed: a given URL must not depend on other env vars
        )

        database_url = PostgresSettings().database_url
    return psycopg.connect(database_url, autocommit=True)


def _range(symbols: str | Iterable[str], start: datetime, end: datetime) -> dict[str, object]:
    wanted = sorted({symbols} if isinstance(symbols, str) else set(symbols))
    if not wanted:
        raise InvalidRange("no symbols given")
    start, end = _utc(start), _utc(end)
    if start >= end:
        raise InvalidRange(f"start {start.isoformat()} must be before end {end.isoformat()}")
    return {"symbols": wanted, "start": start, "end": end}


def _choose(what: str, chosen: str | Iterable[str] | None, allowed: Sequence[str]) -> list[str]:
    """`chosen` as a list, all of `allowed` when None; a value outside `allowed` is an error."""
    if chosen is None:
        return list(allowed)
    values = sorted({chosen} if isinstance(chosen, str) else set(chosen))
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        shown = ", ".join(map(repr, unknown)) if unknown else "none"
        raise UnknownKind(f"unknown {what} {shown}; expected some of {', '.join(allowed)}")
    return values


def _check_symbols(conn: psycopg.Connection, wanted: object, query: sql.SQL | sql.Composed) -> None:
    missing = sorted(row[0] for row in conn.execute(query, {"symbols": wanted}))
    if missing:
        raise UnknownSymbol(f"unknown symbol(s): {', '.join(missing)} (never seen by the pipeline)")


def _frame(conn: psycopg.Connection, query: sql.SQL | sql.Composed, params: dict[str, object], schema: dict) -> pl.DataFrame:
    return pl.DataFrame(conn.execute(query, params).fetchall(), schema=schema, orient="row")


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
