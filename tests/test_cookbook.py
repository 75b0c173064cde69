"""Every ```sql block of docs/cookbook.md runs, and returns rows, on two generated trading days."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest


pytestmark = pytest.mark.integration

COOKBOOK = Path(__file__).resolve().parent.parent / "docs" / "cookbook.md"
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


@pytest.fixture
def two_days(db: psycopg.Connection) -> psycopg.Connection:
    """Regular sessions with holes, revisions, volume-only minutes and a price gap."""
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
    return db


@pytest.mark.parametrize(("title", "query"), recipes(), ids=[title for title, _ in recipes()])
def test_recipe_runs_and_returns_rows(two_days: psycopg.Connection, title: str, query: str) -> None:
    rows = two_days.execute(query).fetchall()
    assert rows, f"{title!r} returned no rows"
