"""connectors.postgres.analyst for the detection tables (0003_detection): events, indicator values, alerts.

Rows are inserted directly (the detection flow writes them in production), with the shapes of
schemas/events.py; each function must return exactly the rows an independent filter selects. On
plain PostgreSQL and on the embedded TimescaleDB, where the functions that connect on their own
(`events`, `indicators`, `alerts`) run after the test's session is released (one at a time there).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import polars as pl
import psycopg
import pytest

from connectors.postgres.analyst import (
    ALERT_SCHEMA,
    EVENT_KINDS,
    EVENT_SCHEMA,
    INDICATOR_SCHEMA,
    InvalidRange,
    UnknownKind,
    UnknownSymbol,
    UnknownTimeframe,
    alerts,
    alerts_on,
    events,
    events_on,
    indicators,
    indicators_on,
)
from schemas.events import ALERT_RULES, stable_id
from tests.support.databases import Storage

pytestmark = pytest.mark.integration

START = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
SYMBOLS = ("AAPL", "MSFT", "NVDA")
EVENT_TYPES = {"highlow": "session_high", "trend": "trend_start", "surge": "volume_surge", "pattern": "doji"}


@pytest.fixture
def detected(storage: Storage) -> Iterator[Storage]:
    """Two hours of events, 1m and 5m indicator rows and alerts for three symbols; NVDA has detection
    rows but no bar (the detection tables have no foreign key to `symbols`)."""
    db = storage.conn
    db.execute("INSERT INTO symbols (symbol) VALUES ('AAPL'), ('MSFT')")
    rng = random.Random(3)
    event_rows, indicator_rows, alert_rows = [], [], []
    for symbol in SYMBOLS:
        for m in range(120):
            ts = START + timedelta(minutes=m)
            for timeframe, every in (("1m", 1), ("5m", 5)):
                if m % every == 0:
                    values = [None if m < 20 else round(rng.uniform(1, 100), 4) for _ in range(11)]
                    indicator_rows.append((symbol, timeframe, ts, *values, 0))
            if rng.random() < 0.3:
                kind = rng.choice(EVENT_KINDS)
                event_rows.append(
                    (symbol, ts, stable_id(kind, symbol, m), kind, EVENT_TYPES[kind], None if kind == "highlow" else "1m",
                     rng.choice(("up", "down", "neutral")), round(rng.random(), 3), round(rng.uniform(10, 500), 2), 0,
                     json.dumps({"bars": 20}), json.dumps({"strength": 0.5}))
                )  # fmt: skip
            if rng.random() < 0.1:
                rule = rng.choice(ALERT_RULES)
                alert_rows.append(
                    (symbol, ts, stable_id(rule, symbol, m), rule, rng.choice(("warning", "critical")), "1m", "up",
                     0.9, rule.split("_")[0], 72.5, 70.0, f"{rule} on {symbol}", 0, json.dumps({"period": 14}))
                )  # fmt: skip
    with db.cursor() as cur:
        cur.executemany("INSERT INTO events VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", event_rows)
        cur.executemany(f"INSERT INTO indicator_values VALUES ({', '.join(['%s'] * 15)})", indicator_rows)
        cur.executemany(f"INSERT INTO alerts VALUES ({', '.join(['%s'] * 14)})", alert_rows)
        # decisions a revised bar no longer supports (migration 0007): the API returns them with their status
        cur.execute("UPDATE events SET status = 'retracted', revision = 1 WHERE kind <> 'highlow' AND confidence < 0.3")
        cur.execute("UPDATE alerts SET status = 'amended', revision = 1 WHERE rule = 'rsi_overbought'")
    yield storage


def whole(conn: psycopg.Connection, table: str, schema: dict) -> pl.DataFrame:
    """Every row of `table`, columns as the analyst API returns them (JSONB as text)."""
    columns = ", ".join(f"{c}::text" if c in ("params", "detail") else c for c in schema)
    return pl.DataFrame(conn.execute(f"SELECT {columns} FROM {table}").fetchall(), schema=schema, orient="row")


def between(frame: pl.DataFrame, symbols: list[str], start: datetime, end: datetime) -> pl.DataFrame:
    return frame.filter(pl.col("symbol").is_in(symbols) & pl.col("timestamp").is_between(start, end, closed="left"))


def test_events_are_the_rows_in_range_of_the_kinds_asked(detected: Storage) -> None:
    start, end = START + timedelta(minutes=10), START + timedelta(minutes=70)
    everything = whole(detected.conn, "events", EVENT_SCHEMA)
    detected.release()
    got = events(["MSFT", "AAPL"], start, end, database_url=detected.url)
    assert got.schema == pl.Schema(EVENT_SCHEMA)
    expected = between(everything, ["AAPL", "MSFT"], start, end).sort("symbol", "timestamp", "id")
    assert got.height > 10 and got.equals(expected)
    assert {"detected", "retracted"} <= set(got["status"])

    patterns = events_on(detected.conn, "AAPL", start, end, kinds=["pattern", "surge"], min_confidence=0.5)
    assert patterns.height > 0
    assert set(patterns["kind"]) <= {"pattern", "surge"} and patterns["confidence"].min() >= 0.5  # type: ignore[operator]
    assert patterns.equals(
        between(everything, ["AAPL"], start, end)
        .filter(pl.col("kind").is_in(["pattern", "surge"]) & (pl.col("confidence") >= 0.5))
        .sort("symbol", "timestamp", "id")
    )
    assert json.loads(patterns["detail"][0]) == {"strength": 0.5}


def test_events_of_a_symbol_without_bars(detected: Storage) -> None:
    got = events_on(detected.conn, "NVDA", START, START + timedelta(hours=2))
    assert got.height > 0 and got["symbol"].unique().to_list() == ["NVDA"]


def test_indicators_are_those_of_the_timeframe(detected: Storage) -> None:
    start, end = START, START + timedelta(hours=1)
    everything = whole(detected.conn, "indicator_values", INDICATOR_SCHEMA)
    detected.release()
    got = indicators(["AAPL", "NVDA"], start, end, "5m", database_url=detected.url)
    expected = between(everything, ["AAPL", "NVDA"], start, end).filter(pl.col("timeframe") == "5m")
    assert got.height == 2 * 12 and got.equals(expected.sort("symbol", "timestamp"))
    minute = indicators_on(detected.conn, "AAPL", start, end)
    assert minute.height == 60 and minute["rsi"].null_count() == 20  # not warm for the first 20 bars


def test_alerts_by_severity_and_rule(detected: Storage) -> None:
    start, end = START, START + timedelta(hours=2)
    everything = whole(detected.conn, "alerts", ALERT_SCHEMA)
    detected.release()
    got = alerts(list(SYMBOLS), start, end, database_url=detected.url)
    assert got.height > 5 and got.equals(between(everything, list(SYMBOLS), start, end).sort("symbol", "timestamp", "id"))
    critical = alerts_on(detected.conn, list(SYMBOLS), start, end, severity="critical")
    assert critical.equals(got.filter(pl.col("severity") == "critical"))
    rsi = alerts_on(detected.conn, list(SYMBOLS), start, end, rules=["rsi_overbought", "rsi_oversold"])
    assert rsi.equals(got.filter(pl.col("rule").str.starts_with("rsi_")))


def test_empty_answers_keep_their_columns(detected: Storage) -> None:
    later = START + timedelta(days=30)
    for frame, schema in (
        (events_on(detected.conn, "AAPL", later, later + timedelta(hours=1)), EVENT_SCHEMA),
        (indicators_on(detected.conn, "AAPL", later, later + timedelta(hours=1)), INDICATOR_SCHEMA),
        (alerts_on(detected.conn, "AAPL", later, later + timedelta(hours=1)), ALERT_SCHEMA),
    ):
        assert frame.height == 0 and frame.schema == pl.Schema(schema)


def test_bad_requests_are_refused_before_querying(detected: Storage) -> None:
    end = START + timedelta(hours=1)
    with pytest.raises(UnknownSymbol, match="AAPL; DROP TABLE events, ZZZZ"):
        events_on(detected.conn, ["AAPL", "ZZZZ", "AAPL; DROP TABLE events"], START, end)
    with pytest.raises(UnknownSymbol, match="ZZZZ"):
        indicators_on(detected.conn, ["ZZZZ"], START, end)
    with pytest.raises(UnknownSymbol, match="ZZZZ"):
        alerts_on(detected.conn, ["ZZZZ"], START, end)
    with pytest.raises(UnknownKind, match=r"'candle'.*highlow, trend, surge, pattern"):
        events_on(detected.conn, "AAPL", START, end, kinds=["pattern", "candle"])
    with pytest.raises(UnknownKind, match="severity 'fatal'"):
        alerts_on(detected.conn, "AAPL", START, end, severity="fatal")
    with pytest.raises(UnknownKind, match="rule 'rsi_high'"):
        alerts_on(detected.conn, "AAPL", START, end, rules="rsi_high")
    with pytest.raises(UnknownKind, match="event kind none"):
        events_on(detected.conn, "AAPL", START, end, kinds=[])
    with pytest.raises(UnknownTimeframe, match="'2h'"):
        indicators_on(detected.conn, "AAPL", START, end, "2h")
    with pytest.raises(InvalidRange, match="min_confidence"):
        events_on(detected.conn, "AAPL", START, end, min_confidence=1.5)
    with pytest.raises(InvalidRange, match="before"):
        alerts_on(detected.conn, "AAPL", end, START)
    with pytest.raises(InvalidRange, match="no symbols"):
        indicators_on(detected.conn, [], START, end)
    assert detected.execute("SELECT count(*) FROM events").fetchone()[0] > 0  # type: ignore[index]
