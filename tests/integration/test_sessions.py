"""Daily bars by US/Eastern trading day (0006_sessions: ohlcv_1day_regular, ohlcv_1day_extended) against an
independent polars computation from the 1-minute rows, across the start of daylight saving time (2024-03-10)
and across after-hours minutes that fall on the next UTC day, on plain PostgreSQL and on the embedded
TimescaleDB; through the migration's up, down and up with data in place, a late trade's revision, and the
analyst API."""

from __future__ import annotations

import random
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal

from connectors.postgres.analyst import SESSION_SCHEMA, bars
from connectors.postgres.bars import BarStore
from infra import migrate
from schemas.bars import Bar
from schemas.sessions import SESSIONS
from tests.support.databases import Storage
from tests.support.rollups import COLUMNS, session_reference, table

pytestmark = pytest.mark.integration

NEW_YORK = ZoneInfo("America/New_York")
# Friday before the clocks went forward, the Saturday its after-hours reach in UTC, and the Monday after
DAYS = (date(2024, 3, 8), date(2024, 3, 11))
EDGES = ((3, 59), (4, 0), (9, 29), (9, 30), (15, 59), (16, 0), (19, 59), (20, 0))  # New York wall-clock minutes


SESSIONS_VERSION = next(m.version for m in migrate.discover() if m.label == "0006_sessions")


def quiet(_: str) -> None:
    pass


def minute_bars(symbols: tuple[str, ...] = ("AAPL", "MSFT")) -> list[Bar]:
    """A fifth of the minutes 03:50-20:10 New York of each day (and every session edge), with volume-only
    and zero-volume minutes: 19:00-20:00 New York is 00:00-01:00 UTC on the next day (both sides of DST)."""
    rng, out = random.Random(15), []
    for symbol in symbols:
        price = 100.0
        for day in DAYS:
            first = datetime(day.year, day.month, day.day, 3, 50, tzinfo=NEW_YORK)
            for m in range(16 * 60 + 21):
                local = first + timedelta(minutes=m)
                if (local.hour, local.minute) not in EDGES and rng.random() > 0.2:
                    continue
                ms = int(local.timestamp() * 1000)
                volume = rng.randint(1, 500) if rng.random() < 0.95 else 0
                if rng.random() < 0.08:  # volume-only trades: no price at all
                    out.append(Bar(symbol=symbol, timestamp=ms, open=None, high=None, low=None, close=None,
                                   volume=volume, vwap=None, trades=1, revision=0, status="final"))  # fmt: skip
                    continue
                price = round(price + rng.uniform(-0.5, 0.5), 2)
                o, c = price, round(price + rng.uniform(-0.3, 0.3), 2)
                out.append(Bar(symbol=symbol, timestamp=ms, open=o, high=round(max(o, c) + 0.1, 2), low=round(min(o, c) - 0.1, 2),
                               close=c, volume=volume, vwap=round((o + c) / 2, 3), trades=rng.randint(1, 40), revision=0,
                               status="final"))  # fmt: skip
    return out


def session_table(conn: psycopg.Connection, name: str) -> pl.DataFrame:
    assert name in {s.table for s in SESSIONS.values()}
    rows = conn.execute(
        f"SELECT symbol, timestamp, open::float8, high::float8, low::float8, close::float8, volume, vwap::float8, trades, day"
        f" FROM {name} WHERE timestamp >= '2024-03-01 00:00+00' AND timestamp < '2024-04-01 00:00+00'"  # as analysts ask
        f" ORDER BY symbol, timestamp"
    ).fetchall()
    frame = pl.DataFrame(rows, schema=[*COLUMNS, "day"], orient="row", infer_schema_length=None)
    return frame.with_columns(pl.col("timestamp").dt.convert_time_zone("UTC"))


def assert_sessions_match(url: str) -> dict[str, pl.DataFrame]:
    """Both views equal the reference from ohlcv_1min; returns them."""
    with psycopg.connect(url, autocommit=True) as conn:
        minutes = table(conn, "ohlcv_1min")
        found = {name: session_table(conn, s.table) for name, s in SESSIONS.items()}
    for name, s in SESSIONS.items():
        assert_frame_equal(found[name], session_reference(minutes, s.opens, s.closes), check_dtypes=False, rel_tol=1e-9)
    return found


def test_session_views_equal_the_reference_through_a_revision_and_down_up(storage: Storage) -> None:
    """On the migrated test database (cheaper than a fresh one per database); at the end 0006 (and any later
    migration) is reverted and applied again with the bars in place, re-applied whatever happens. From an
    empty database, every migration up, down and up: test_migrate.py's test_down_then_up."""
    url = storage.url
    storage.upsert(minute_bars())  # the sink's way, in one statement
    found = assert_sessions_match(url)

    regular, extended = found["regular"], found["extended"]
    assert regular["day"].unique().sort().to_list() == list(DAYS)
    opens = regular.filter(pl.col("symbol") == "AAPL")["timestamp"].to_list()
    assert opens == [datetime(2024, 3, 8, 14, 30, tzinfo=UTC), datetime(2024, 3, 11, 13, 30, tzinfo=UTC)]  # EST, then EDT
    # Friday's extended bar holds its 19:00-20:00 New York minutes, which are Saturday 00:00-01:00 in UTC
    with psycopg.connect(url, autocommit=True) as conn:
        saturday_utc = conn.execute(
            "SELECT sum(volume) FROM ohlcv_1min WHERE symbol = 'AAPL' AND timestamp >= '2024-03-09 00:00+00'"
            " AND timestamp < '2024-03-09 01:00+00'"
        ).fetchone()[0]  # type: ignore[index]
        friday_utc = conn.execute(
            "SELECT volume FROM ohlcv_1day WHERE symbol = 'AAPL' AND timestamp = '2024-03-08 00:00+00'"
        ).fetchone()[0]  # type: ignore[index]
    friday = extended.filter((pl.col("symbol") == "AAPL") & (pl.col("day") == DAYS[0]))
    assert saturday_utc > 0 and friday["volume"][0] > friday_utc - saturday_utc  # the UTC day lost them, this one did not

    # late trades revise a minute of Friday's after-hours (in Saturday UTC) and one of Monday's regular session
    late = [
        Bar(symbol="AAPL", timestamp=int(datetime(2024, 3, 8, 19, 30, tzinfo=NEW_YORK).timestamp() * 1000), open=101.0,
            high=900.0, low=1.0, close=102.0, volume=77_777, vwap=100.0, trades=3, revision=1, status="final"),
        Bar(symbol="AAPL", timestamp=int(datetime(2024, 3, 11, 9, 30, tzinfo=NEW_YORK).timestamp() * 1000), open=55.5,
            high=800.0, low=50.0, close=56.0, volume=5, vwap=55.0, trades=1, revision=1, status="final"),
    ]  # fmt: skip
    storage.upsert(late)
    revised = assert_sessions_match(url)
    aapl = revised["extended"].filter(pl.col("symbol") == "AAPL")
    assert aapl["high"].to_list() == [900.0, 800.0]
    assert revised["regular"].filter(pl.col("symbol") == "AAPL")["open"].to_list()[1] == 55.5  # 09:30 is the open

    # the analyst API serves the views, with the US/Eastern day
    frame = bars(["MSFT", "AAPL"], datetime(2024, 3, 8, tzinfo=UTC), datetime(2024, 3, 12, tzinfo=UTC), "1d",
                 session="extended", database_url=url)  # fmt: skip
    assert frame.schema == SESSION_SCHEMA
    assert_frame_equal(frame, revised["extended"], check_dtypes=False)
    monday = bars("AAPL", datetime(2024, 3, 11, 13, 30, tzinfo=UTC), datetime(2024, 3, 11, 13, 31, tzinfo=UTC), "1d",
                  session="regular", database_url=url)  # fmt: skip
    assert monday["day"].to_list() == [DAYS[1]]

    with psycopg.connect(url, autocommit=True) as conn:
        kept = table(conn, "ohlcv_1min")
    try:
        migrate.down(url, to=SESSIONS_VERSION - 1, log=quiet)
        with psycopg.connect(url, autocommit=True) as conn:
            gone = conn.execute("SELECT to_regclass('ohlcv_1day_regular'), to_regclass('eastern_days')").fetchone()
            assert gone == (None, None)
            assert_frame_equal(table(conn, "ohlcv_1min"), kept)
    finally:
        migrate.up(url, log=quiet)
    for name, frame in assert_sessions_match(url).items():
        assert_frame_equal(frame, revised[name])


def test_eastern_days_hold_the_sessions_hours(storage: Storage) -> None:
    """The migration's calendar (the server's time zone rules) is schemas.sessions' definition on every
    day 2000-2059 (every DST change of the US rules of 1987 and of 2007 included)."""
    rows = storage.execute(
        "SELECT day, regular_open, regular_close, extended_open, extended_close FROM eastern_days ORDER BY day"
    ).fetchall()
    assert (rows[0][0], rows[-1][0], len(rows)) == (date(2000, 1, 1), date(2059, 12, 31), 21_915)
    regular, extended = SESSIONS["regular"], SESSIONS["extended"]
    wrong = [
        r[0]
        for r in rows
        if (*regular.bounds_ms(r[0]), *extended.bounds_ms(r[0])) != tuple(int(t.timestamp() * 1000) for t in r[1:])
    ]
    assert wrong == []


def test_a_symbol_range_is_an_index_range(storage: Storage) -> None:
    """A symbol and time range on either view reads eastern_days' open index and a key range of the rollup
    per day: no sequential scan, whatever the history (three symbols, 12 days here)."""
    db = storage.conn
    if db.execute("SELECT to_regclass('rollups.bars_5min')").fetchone() == (None,):
        pytest.skip("TimescaleDB before 2.18: no rollup, the views read ohlcv_1min")
    db.execute("INSERT INTO symbols VALUES ('AAPL'), ('MSFT'), ('NVDA')")
    db.execute(
        "INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades)"
        " SELECT s, d + INTERVAL '9 hours' + m * INTERVAL '5 minutes', 10, 11, 9, 10, 100, 10, 1"
        " FROM unnest(ARRAY['AAPL', 'MSFT', 'NVDA']) AS s,"
        " generate_series(TIMESTAMPTZ '2024-01-25 00:00+00', TIMESTAMPTZ '2024-02-05 00:00+00', INTERVAL '1 day') AS d,"
        " generate_series(0, 191) AS m"
    )
    db.execute("ANALYZE rollups.bars_5min")
    for s in SESSIONS.values():
        plan = "\n".join(
            r[0]
            for r in db.execute(
                f"EXPLAIN SELECT * FROM {s.table} WHERE symbol = 'AAPL'"
                " AND timestamp >= '2024-02-01 00:00+00' AND timestamp < '2024-02-03 00:00+00'"
            )
        )
        assert "Seq Scan" not in plan and "ohlcv_1min" not in plan, plan
        assert f"using eastern_days_{s.name}_open_key" in plan and f"({s.name}_open >= '2024-02-01" in plan, plan
        assert "on bars_5min" in plan and f'("timestamp" >= d.{s.name}_open)' in plan, plan
        assert db.execute(f"SELECT count(*) FROM {s.table} WHERE symbol = 'AAPL'").fetchone() == (12,)


def test_without_the_rollup_the_views_read_the_minutes(database_url: str, tmp_path: Path) -> None:
    """0006 on a schema without 0004's rollup (what TimescaleDB before 2.18 keeps): the same views over
    ohlcv_1min, equal to the same reference (plain PostgreSQL, 0001-0003 then 0006)."""
    for path in migrate.MIGRATIONS_DIR.glob("000[1236]_*.sql"):
        shutil.copy(path, tmp_path)
    migrate.up(database_url, directory=tmp_path, log=quiet)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('rollups.bars_5min')").fetchone() == (None,)
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT * FROM ohlcv_1day_regular WHERE symbol = 'AAPL'"))
        assert "ohlcv_1min" in plan
    store = BarStore(database_url)
    try:
        store.upsert(minute_bars())
    finally:
        store.close()
    assert_sessions_match(database_url)
    migrate.down(database_url, to=0, directory=tmp_path, log=quiet)
