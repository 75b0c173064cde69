"""Every ```sql block of docs/cookbook.md runs, and returns rows, on two generated trading days of bars
with the detection rows (events, indicator values, alerts) a detector would write for them, on plain
PostgreSQL and on the embedded TimescaleDB."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.support.databases import KINDS, Storage
from tests.support.services import TEST_DATABASE_URL

pytestmark = pytest.mark.integration

COOKBOOK = Path(__file__).resolve().parents[2] / "docs" / "cookbook.md"
SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN")
SESSIONS = (datetime(2024, 1, 2, 14, 30, tzinfo=UTC), datetime(2024, 1, 3, 14, 30, tzinfo=UTC))


def recipes() -> list[tuple[str, str]]:
    """(title, sql) for each ```sql block; the title is the nearest ### heading above it."""
    text = COOKBOOK.read_text()
    found = [
        (heading.strip(), body)
        for heading, body in re.findall(r"^### (.+?)\n(?:(?!^###).)*?^```sql\n(.*?)^```", text, re.M | re.S)
    ]
    assert len(found) == text.count("```sql"), "every sql block needs its own ### title"
    return found


def test_cookbook_has_a_dozen_recipes() -> None:
    assert len(recipes()) >= 12


@pytest.fixture(scope="module", params=KINDS)
def two_days(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection]:
    """Regular sessions with holes, revisions, volume-only minutes and a price gap; written once per
    database for the module (the recipes only read: none of them writes, see the check below)."""
    if request.param == "postgres":
        request.getfixturevalue("services")
        storage = Storage("postgres", TEST_DATABASE_URL)
    else:
        storage = Storage("timescaledb", request.getfixturevalue("embedded_timescale"))
    storage.clear()
    try:
        _write_two_days(storage.conn)
        yield storage.conn
    finally:
        storage.release()


def test_no_recipe_writes() -> None:
    """What lets the recipes share one copy of the data per database."""
    writes = re.compile(r"\b(insert|update|delete|merge|truncate|create|drop|alter|call|copy|refresh)\b", re.I)
    assert [title for title, query in recipes() if writes.search(re.sub(r"--[^\n]*", "", query))] == []


def _write_two_days(db: psycopg.Connection) -> None:
    rng, rows = random.Random(12), []
    for symbol in SYMBOLS:
        price = rng.uniform(50, 500)
        for session in SESSIONS:
            for m in range(390):
                ts = session + timedelta(minutes=m)
                if m in (100, 101, 250) or rng.random() < 0.02:
                    continue  # minutes without trades
                if m % 97 == 5:  # only volume-only trades this minute
                    rows.append((symbol, ts, None, None, None, None, rng.randint(1, 90), None, 1, 0))
                    continue
                jump = price * 0.02 if m == 200 else 0.0
                o = round(price + jump, 4)
                c = round(o * (1 + rng.gauss(0, 0.001)), 4)
                h, low = round(max(o, c) * 1.0005, 4), round(min(o, c) * 0.9995, 4)
                revision = 1 if m % 131 == 7 else 0
                rows.append((symbol, ts, o, h, low, c, rng.randint(100, 10_000), round((o + c) / 2, 4), 10, revision))
                price = c
    db.execute("INSERT INTO symbols (symbol) SELECT unnest(%s::text[])", (list(SYMBOLS),))
    with db.cursor().copy(
        "COPY ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades, revision) FROM STDIN"
    ) as copy:
        for row in rows:
            copy.write_row(row)
    detections(db, [r for r in rows if r[5] is not None], rng)


def detections(db: psycopg.Connection, priced: list[tuple], rng: random.Random) -> None:
    """Events, 1m/5m indicator values and alerts on the priced bars, as the detection sink writes them."""
    events, indicators, alerts = [], [], []
    event_kinds = [("pattern", "doji"), ("pattern", "engulfing"), ("trend", "trend_start"), ("surge", "volume_surge")]
    alert_rules = [("rsi_overbought", "warning"), ("macd_cross_up", "critical"), ("bollinger_below", "critical")]
    for n, (symbol, ts, _o, _h, _l, close, *_rest) in enumerate(priced):
        warm = ts.hour * 60 + ts.minute - (14 * 60 + 30) >= 20  # indicators need 20 bars
        rsi = 50 + 35 * ((n * 7919) % 100 - 50) / 50 if warm else None
        band = close * 0.01
        values = (close, close, rsi, 0.1, 0.05, 0.05, close - band, close, close + band, 0.2, close, 0)
        indicators.append((symbol, "1m", ts, *values))
        if ts.minute % 5 == 0:
            indicators.append((symbol, "5m", ts, *values))
        if n % 23 == 0:
            kind, kind_type = rng.choice(event_kinds)
            confidence = rng.choice([0.55, 0.85, 0.95])
            events.append(
                (symbol, ts, f"e{n}", kind, kind_type, "1m", "up", confidence, close, 0, json.dumps({"bars": 20}), "{}")
            )
        if n % 31 == 0:  # a new session high, between two bar starts
            at = ts + timedelta(seconds=17)
            detail = json.dumps({"previous": close - 0.1})
            events.append((symbol, at, f"h{n}", "highlow", "session_high", None, "up", 1.0, close, 0, "{}", detail))
        if warm and n % 37 == 0:
            rule, severity = rng.choice(alert_rules)
            indicator = rule.split("_")[0]
            alerts.append(
                (symbol, ts, f"a{n}", rule, severity, "1m", "up", 0.9, indicator, 71.0, 70.0, f"{rule} {symbol}", 0, "{}")
            )
    with db.cursor() as cur:
        cur.executemany(f"INSERT INTO events VALUES ({', '.join(['%s'] * 12)})", events)
        cur.executemany(f"INSERT INTO indicator_values VALUES ({', '.join(['%s'] * 15)})", indicators)
        cur.executemany(f"INSERT INTO alerts VALUES ({', '.join(['%s'] * 14)})", alerts)


@pytest.mark.parametrize(("title", "query"), recipes(), ids=[title for title, _ in recipes()])
def test_recipe_runs_and_returns_rows(two_days: psycopg.Connection, title: str, query: str) -> None:
    rows = two_days.execute(query).fetchall()
    assert rows, f"{title!r} returned no rows"
