"""Derived timeframes (0002, 0004's rollup) against an independent polars computation from the 1-minute rows,
on plain PostgreSQL and on the embedded TimescaleDB (the `storage` fixture's two ids)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal

from connectors.postgres.analyst import InvalidRange, UnknownSymbol, UnknownTimeframe, bars
from infra import migrate
from schemas.bars import Bar
from tests.support.databases import Storage
from tests.support.rollups import COLUMNS, EVERY, START, assert_views_match, insert, one_minute_rows, table

pytestmark = pytest.mark.integration


@pytest.fixture
def bars_db(storage: Storage) -> Iterator[psycopg.Connection]:
    """The test's session on a migrated database with no bars (plain PostgreSQL or TimescaleDB; on
    both the views read 0004's rollup, kept current by the writes' triggers)."""
    yield storage.conn


def has_timescaledb(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is not None


def test_derived_bars_equal_polars_reference(bars_db: psycopg.Connection) -> None:
    insert(bars_db, one_minute_rows())
    assert_views_match(bars_db)
    days = table(bars_db, "ohlcv_1day")
    assert days["timestamp"].unique().sort().to_list() == [
        datetime(2024, 1, 2, tzinfo=UTC),
        datetime(2024, 1, 3, tzinfo=UTC),
    ]  # 1-day buckets are UTC calendar days


def test_revised_minute_flows_into_coarser_bars(bars_db: psycopg.Connection) -> None:
    insert(bars_db, one_minute_rows())
    ts = bars_db.execute(
        "SELECT max(timestamp) FROM ohlcv_1min WHERE symbol = 'AAPL' AND close IS NOT NULL AND volume > 0"
    ).fetchone()[0]  # type: ignore[index]
    before = bars_db.execute("SELECT high, close FROM ohlcv_1hour WHERE symbol = 'AAPL' ORDER BY timestamp DESC").fetchone()
    bars_db.execute(
        "UPDATE ohlcv_1min SET high = 999, close = 998, volume = volume + 1000, revision = revision + 1"
        " WHERE symbol = 'AAPL' AND timestamp = %s",
        (ts,),
    )
    after = bars_db.execute("SELECT high, close FROM ohlcv_1hour WHERE symbol = 'AAPL' ORDER BY timestamp DESC").fetchone()
    assert before != after and after is not None and float(after[0]) == 999 and float(after[1]) == 998
    assert_views_match(bars_db)


def test_symbol_and_time_filters_are_index_conditions(bars_db: psycopg.Connection) -> None:
    """Plain PostgreSQL, 60 days of 3 symbols: every view answers one symbol-day, and one day of every
    symbol, with the time filter (and the symbol) as index conditions on the rollup (its primary key,
    its BRIN index, or both ANDed): never the whole history, aggregated, then filtered."""
    if bars_db.execute("SELECT to_regnamespace('rollups')").fetchone() == (None,):
        pytest.skip("TimescaleDB before 2.18: the views are continuous aggregates with their own indexes")
    bars_db.execute("INSERT INTO symbols VALUES ('AAPL'), ('MSFT'), ('NVDA')")
    bars_db.execute(
        "INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades)"
        " SELECT s, d + INTERVAL '14 hours 30 minutes' + m * INTERVAL '1 minute', 10, 11, 9, 10, 100, 10, 1"
        " FROM unnest(ARRAY['AAPL', 'MSFT', 'NVDA']) AS s,"
        " generate_series(TIMESTAMPTZ '2024-01-01 00:00+00', TIMESTAMPTZ '2024-02-29 00:00+00', INTERVAL '1 day') AS d,"
        " generate_series(0, 389) AS m"
    )
    bars_db.execute("ANALYZE rollups.bars_5min")
    day = "timestamp >= '2024-02-01 00:00+00' AND timestamp < '2024-02-02 00:00+00'"
    for view in EVERY:
        for where in (f"symbol = 'AAPL' AND {day}", day):
            plan = "\n".join(r[0] for r in bars_db.execute(f"EXPLAIN SELECT * FROM {view} WHERE {where}"))
            conditions = [line for line in plan.splitlines() if "Index Cond:" in line]
            assert "on bars_5min" in plan and "ohlcv_1min" not in plan and "Seq Scan" not in plan, plan
            assert any('"timestamp"' in c and ">= '2024-02-01 00:00:00+00'" in c for c in conditions), plan
            if "symbol" in where:  # an index condition too, or a filter when a symbol is a third of the rows
                assert "(symbol)::text = 'AAPL'::text" in plan, plan


def test_latest_bars_is_the_last_minute_of_each_symbol(bars_db: psycopg.Connection) -> None:
    insert(bars_db, one_minute_rows())
    expected = table(bars_db, "ohlcv_1min").group_by("symbol").agg(pl.all().sort_by("timestamp").last()).sort("symbol")
    assert_frame_equal(table(bars_db, "latest_bars"), expected.select(COLUMNS), check_dtypes=False)


def test_analyst_bars_match_the_views(storage: Storage) -> None:
    insert(storage.conn, one_minute_rows())
    start, end = datetime(2024, 1, 2, 23, tzinfo=UTC), datetime(2024, 1, 3, 1, tzinfo=UTC)
    expected = table(storage.conn, "ohlcv_15min").filter(pl.col("timestamp").is_between(start, end, closed="left"))
    storage.release()  # the analyst API connects on its own (one session at a time on TimescaleDB)
    frame = bars(["MSFT", "AAPL"], start, end, "15m", database_url=storage.url)
    assert frame.height == 16
    assert_frame_equal(frame, expected, check_dtypes=False)
    assert bars("AAPL", start, end, database_url=storage.url)["symbol"].unique().to_list() == ["AAPL"]


def test_analyst_refuses_bad_requests(storage: Storage) -> None:
    insert(storage.conn, one_minute_rows())
    storage.release()  # the analyst API connects on its own
    start, end = datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC)
    with pytest.raises(UnknownTimeframe, match=r"'1w'.*1m, 5m, 15m, 1h, 1d"):
        bars("AAPL", start, end, "1w", database_url=storage.url)
    with pytest.raises(UnknownSymbol, match="AAPL; DROP TABLE symbols, ZZZZ"):
        bars(["AAPL", "ZZZZ", "AAPL; DROP TABLE symbols"], start, end, database_url=storage.url)
    with pytest.raises(InvalidRange, match="before"):
        bars("AAPL", end, start, database_url=storage.url)
    with pytest.raises(InvalidRange, match="no symbols"):
        bars([], start, end, database_url=storage.url)
    assert all(isinstance(e(), ValueError) for e in (UnknownTimeframe, UnknownSymbol, InvalidRange))


def test_continuous_aggregates(fresh_timescale: str) -> None:
    """0002's path on TimescaleDB (what stays before 2.18, and what 0004 down restores): real-time
    continuous aggregates, equal to the reference once refreshed."""
    migrate.up(fresh_timescale, to=3, log=lambda _: None)
    with psycopg.connect(fresh_timescale, autocommit=True) as db:
        rows = db.execute(
            "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates ORDER BY view_name"
        ).fetchall()
        assert {name: only for name, only in rows if name in EVERY} == dict.fromkeys(EVERY, False)
        insert(db, one_minute_rows())
        for view in EVERY:
            db.execute("CALL refresh_continuous_aggregate(%s, NULL, NULL)", (view,))
        assert_views_match(db)


def test_latest_bars_follow_upserts_revisions_deletes_and_truncate(bars_db: psycopg.Connection) -> None:
    def latest_matches() -> None:
        expected = table(bars_db, "ohlcv_1min").group_by("symbol").agg(pl.all().sort_by("timestamp").last())
        assert_frame_equal(table(bars_db, "latest_bars"), expected.sort("symbol").select(COLUMNS), check_dtypes=False)

    insert(bars_db, one_minute_rows())
    upsert = (
        "INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades, revision)"
        " VALUES ('AAPL', %s, 1, 1, 1, 1, 1, 1, 1, 1) ON CONFLICT (symbol, timestamp) DO UPDATE SET"
        " close = EXCLUDED.close, revision = ohlcv_1min.revision + 1"
    )
    bars_db.execute(upsert, (START,))  # revision of an old minute: the latest bar stays
    latest_matches()
    newest = bars_db.execute("SELECT timestamp FROM latest_bars WHERE symbol = 'AAPL'").fetchone()[0]  # type: ignore[index]
    bars_db.execute(upsert, (newest,))  # revision of the latest minute
    assert bars_db.execute("SELECT close, revision FROM latest_bars WHERE symbol = 'AAPL'").fetchone() == (1, 1)
    bars_db.execute(upsert, (newest + timedelta(minutes=1),))  # a new minute
    latest_matches()
    bars_db.execute("DELETE FROM ohlcv_1min WHERE symbol = 'AAPL' AND timestamp >= %s", (newest,))
    latest_matches()
    bars_db.execute("DELETE FROM ohlcv_1min WHERE symbol = 'MSFT'")
    assert bars_db.execute("SELECT symbol FROM latest_bars").fetchall() == [("AAPL",)]
    bars_db.execute("TRUNCATE ohlcv_1min")
    assert bars_db.execute("SELECT count(*) FROM latest_bars").fetchone() == (0,)


def bar(symbol: str, minute: int, revision: int, rng: random.Random) -> Bar:
    """A final 1-minute bar `minute` minutes after START; now and then volume-only (no prices)."""
    ms = int((START + timedelta(minutes=minute)).timestamp() * 1000)
    if rng.random() < 0.1:
        return Bar(symbol=symbol, timestamp=ms, open=None, high=None, low=None, close=None, volume=rng.randint(0, 50),
                   vwap=None, trades=1, revision=revision, status="final")  # fmt: skip
    o = round(rng.uniform(99, 101), 2)
    c = round(rng.uniform(99, 101), 2)
    return Bar(symbol=symbol, timestamp=ms, open=o, high=round(max(o, c) + rng.uniform(0, 1), 2),
               low=round(min(o, c) - rng.uniform(0, 1), 2), close=c, volume=rng.randint(0, 900),
               vwap=round((o + c) / 2, 3), trades=rng.randint(1, 30), revision=revision, status="final")  # fmt: skip


def test_views_follow_the_sinks_upserts_with_revisions_in_the_same_batch(storage: Storage) -> None:
    """The sink's INSERT .. ON CONFLICT inserts new minutes and revises earlier ones in one statement,
    often in the same 5-minute bucket (PostgreSQL fires its UPDATE triggers, then its INSERT triggers);
    revisions may lower a high, raise a low or drop the prices of the minute that set them."""
    rng = random.Random(66)
    revisions: dict[tuple[str, int], int] = {}
    for step in range(14):
        batch = []
        for symbol in ("AAPL", "MSFT", "TSLA"):
            for minute in (3 * step, 3 * step + 1):  # two new minutes per symbol and batch
                if rng.random() < 0.9:
                    batch.append(bar(symbol, minute, 0, rng))
                    revisions[symbol, minute] = 0
            for minute in rng.sample(sorted(m for s, m in revisions if s == symbol), min(2, step)):  # late trades
                revisions[symbol, minute] += 1
                batch.append(bar(symbol, minute, revisions[symbol, minute], rng))
        storage.upsert(batch)  # the sink's session, then the test's (one at a time on TimescaleDB)
        assert_views_match(storage.conn)
    assert storage.execute("SELECT count(*) FROM ohlcv_1min WHERE revision > 0").fetchone()[0] > 20  # type: ignore[index]


def test_a_revision_reaches_every_timeframe_when_its_minute_commits(storage: Storage) -> None:
    """Issue 11, item 2: a late trade's revision of a minute is in the 5m/15m/1h/1d bars by the time the
    sink's transaction that writes it commits (the rollup's triggers run in it), on both databases: the
    first read after the commit sees it, with no refresh and no wait; so does the writing transaction."""
    rng = random.Random(11)
    day = [bar(symbol, minute, 0, rng) for symbol in ("AAPL", "MSFT") for minute in range(150)]
    minute = START + timedelta(minutes=97)  # 23:37 UTC: buckets 23:35, 23:30, 23:00 and the day
    original = next(b for b in day if b.symbol == "AAPL" and b.timestamp == int(minute.timestamp() * 1000))
    late = msgspec.structs.replace(original, high=500.0, low=1.0, close=250.0, volume=original.volume + 10_000, revision=1)
    storage.upsert(day)
    before = {view: table(storage.conn, view) for view in EVERY}
    committed_s = storage.upsert([late])  # the sink's session; returns once committed
    for view, every in EVERY.items():
        after = table(storage.conn, view)
        start = pl.Series([minute]).dt.truncate(every)[0]
        bucket = after.filter((pl.col("symbol") == "AAPL") & (pl.col("timestamp") == start))
        was = before[view].filter((pl.col("symbol") == "AAPL") & (pl.col("timestamp") == start))
        assert (bucket["high"][0], bucket["low"][0]) == (500.0, 1.0), view
        assert bucket["volume"][0] - was["volume"][0] == 10_000, view
        assert_frame_equal(after.filter(pl.col("symbol") == "MSFT"), before[view].filter(pl.col("symbol") == "MSFT"))
    assert_views_match(storage.conn)
    # inside the writing transaction too: the coarse bars change with the minute, not after it
    with storage.conn.transaction(force_rollback=True):
        storage.execute("UPDATE ohlcv_1min SET high = 900, revision = 2 WHERE symbol = 'AAPL' AND timestamp = %s", (minute,))
        for view in EVERY:
            assert storage.execute(f"SELECT max(high) FROM {view} WHERE symbol = 'AAPL'").fetchone() == (900,), view
    print(f"{storage.kind}: the revision's upsert committed in {committed_s * 1000:.0f} ms, visible at every timeframe then")


def test_views_follow_sql_updates_deletes_key_moves_and_truncate(storage: Storage) -> None:
    bars_db = storage.conn
    insert(bars_db, one_minute_rows())
    # TimescaleDB refuses an UPDATE moving a row into another chunk (1-day chunks, UTC): there the
    # minutes moved stay in their day, here they cross midnight
    moved = (130, 160) if storage.timescaledb else (100, 130)
    if storage.timescaledb:
        with pytest.raises(psycopg.errors.CheckViolation):
            bars_db.execute(f"UPDATE ohlcv_1min SET timestamp = timestamp + INTERVAL '3 hours' WHERE symbol = 'AAPL'"
                            f" AND timestamp = '{START + timedelta(minutes=100)}'")  # fmt: skip
    steps = [
        # the minute holding each hour's high gets a lower one; each hour's first priced minute loses its prices
        "UPDATE ohlcv_1min o SET high = o.high - 5 FROM (SELECT DISTINCT ON (symbol, date_trunc('hour', timestamp))"
        " symbol, timestamp FROM ohlcv_1min WHERE high IS NOT NULL ORDER BY symbol, date_trunc('hour', timestamp), high DESC)"
        " h WHERE (o.symbol, o.timestamp) = (h.symbol, h.timestamp)",
        "UPDATE ohlcv_1min o SET open = NULL, high = NULL, low = NULL, close = NULL, vwap = NULL FROM (SELECT DISTINCT ON"
        " (symbol, date_trunc('hour', timestamp)) symbol, timestamp FROM ohlcv_1min WHERE open IS NOT NULL"
        " ORDER BY symbol, date_trunc('hour', timestamp), timestamp) f WHERE (o.symbol, o.timestamp) = (f.symbol, f.timestamp)",
        # a whole 5-minute bucket, and single minutes
        f"DELETE FROM ohlcv_1min WHERE symbol = 'AAPL' AND timestamp >= '{START + timedelta(minutes=10)}'"
        f" AND timestamp < '{START + timedelta(minutes=15)}'",
        "DELETE FROM ohlcv_1min WHERE symbol = 'MSFT' AND extract(minute FROM timestamp)::int % 7 = 3",
        # key changes: minutes move to another bucket, another hour, another symbol
        "UPDATE ohlcv_1min SET timestamp = timestamp + INTERVAL '3 hours 2 minutes' WHERE symbol = 'AAPL'"
        f" AND timestamp >= '{START + timedelta(minutes=moved[0])}' AND timestamp < '{START + timedelta(minutes=moved[1])}'",
        "INSERT INTO symbols VALUES ('NVDA')",
        f"UPDATE ohlcv_1min SET symbol = 'NVDA' WHERE symbol = 'MSFT' AND timestamp < '{START + timedelta(minutes=50)}'",
        # one statement inserting into buckets that exist, and new ones
        "INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades)"
        " SELECT symbol, timestamp + INTERVAL '7 hours', 50, 60, 40, 55,"
        " volume, 52, trades FROM ohlcv_1min WHERE symbol = 'NVDA'"
        " ON CONFLICT (symbol, timestamp) DO UPDATE SET high = excluded.high",
    ]
    for statement in steps:
        bars_db.execute(statement)
        assert_views_match(bars_db)
    bars_db.execute("DELETE FROM ohlcv_1min WHERE symbol = 'NVDA'")
    assert_views_match(bars_db)
    assert bars_db.execute("SELECT count(*) FROM ohlcv_5min WHERE symbol = 'NVDA'").fetchone() == (0,)
    bars_db.execute("TRUNCATE ohlcv_1min, symbols")
    for view in EVERY:
        assert bars_db.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,)


def test_rollup_migration_backfills_and_reverts_with_data_in_place(empty_database: Storage) -> None:
    """0004 on a database that already has bars (a deployed one): the rollup it builds gives the same
    bars as 0002's query-time views (TimescaleDB: its real-time continuous aggregates) did; going back
    to 0003 and up again keeps them equal."""
    database_url = empty_database.url
    migrate.up(database_url, to=3, log=lambda _: None)
    with psycopg.connect(database_url, autocommit=True) as conn:
        insert(conn, one_minute_rows(("AAPL", "MSFT", "TSLA"), minutes=400))
        before = {view: table(conn, view) for view in EVERY}
        assert_views_match(conn)
    for step in (lambda: migrate.up(database_url, log=lambda _: None),
                 lambda: migrate.down(database_url, to=3, log=lambda _: None),
                 lambda: migrate.up(database_url, log=lambda _: None)):  # fmt: skip
        step()
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert_views_match(conn)
            for view, frame in before.items():
                assert_frame_equal(table(conn, view), frame, check_dtypes=False)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE ohlcv_1min SET close = close + 1, revision = 1 WHERE symbol = 'TSLA'")
        assert_views_match(conn)  # the triggers are back too
