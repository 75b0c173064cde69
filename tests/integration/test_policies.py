"""TimescaleDB policies (infra/policies.py): settings, the statements planned, and applying them.

The settings and the plan are plain Python and always run. Applying needs the timescaledb
extension: those tests run on the embedded TimescaleDB (the session's server, emptied and migrated
for each), skipping only when it cannot start (failing under CI); on plain PostgreSQL `apply` must
be a no-op that says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from pydantic import ValidationError

from connectors.postgres.bars import BarStore
from infra import migrate
from infra.policies import TABLES, PolicyError, PolicySettings, apply, plan
from schemas.bars import Bar
from tests.support.services import TEST_DATABASE_URL

OHLCV = next(t for t in TABLES if t.name == "ohlcv_1min")
EVENTS = next(t for t in TABLES if t.name == "events")
DAY = timedelta(days=1)
FRESH = {"chunk_interval": 7 * DAY, "compression_enabled": False, "compress_after": None, "drop_after": None}


def rendered(statements: list[sql.Composed]) -> list[str]:
    with psycopg.connect(TEST_DATABASE_URL) as conn:
        return [s.as_string(conn) for s in statements]


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = PolicySettings()
    assert (defaults.chunk_interval_bars, defaults.chunk_interval_events) == ("1 day", "7 days")
    assert (defaults.compress_after, defaults.retention_bars, defaults.retention_detection) == ("7 days", None, None)
    monkeypatch.setenv("TIMESCALE_COMPRESS_AFTER", "off")
    monkeypatch.setenv("TIMESCALE_RETENTION_BARS", "2 Years")
    monkeypatch.setenv("TIMESCALE_CHUNK_INTERVAL_BARS", "12 hours")
    s = PolicySettings()
    assert (s.compress_after, s.retention_bars, s.chunk_interval_bars) == (None, "2 years", "12 hours")
    monkeypatch.setenv("TIMESCALE_RETENTION_DETECTION", "30 days; DROP TABLE events")
    with pytest.raises(ValidationError, match="retention_detection"):
        PolicySettings()


def test_plan_for_a_fresh_hypertable() -> None:
    statements = rendered(plan(PolicySettings(), OHLCV, FRESH))
    assert statements == [
        "SELECT set_chunk_time_interval('ohlcv_1min', '1 day'::interval)",
        "ALTER TABLE \"ohlcv_1min\" SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',"
        " timescaledb.compress_orderby = 'timestamp DESC')",
        "SELECT add_compression_policy('ohlcv_1min', compress_after => '7 days'::interval)",
    ]
    assert any("compress_orderby = 'timestamp DESC, id'" in s for s in rendered(plan(PolicySettings(), EVENTS, FRESH)))


def test_plan_changes_only_what_differs() -> None:
    settings = PolicySettings(retention_bars="1 year")
    in_place = {"chunk_interval": DAY, "compression_enabled": True, "compress_after": 7 * DAY, "drop_after": 365 * DAY}
    assert plan(settings, OHLCV, in_place) == []

    changed = rendered(plan(PolicySettings(compress_after="30 days", retention_bars="off"), OHLCV, in_place))
    assert changed == [
        "SELECT remove_compression_policy('ohlcv_1min', if_exists => true)",
        "SELECT add_compression_policy('ohlcv_1min', compress_after => '30 days'::interval)",
        "SELECT remove_retention_policy('ohlcv_1min', if_exists => true)",
    ]
    off = rendered(plan(PolicySettings(compress_after="off"), OHLCV, in_place | {"drop_after": None}))
    assert off == ["SELECT remove_compression_policy('ohlcv_1min', if_exists => true)"]  # compressed chunks stay


@pytest.mark.integration
def test_plain_postgresql_needs_no_policies(db: psycopg.Connection) -> None:
    if db.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
        pytest.skip("TimescaleDB present: the plain-PostgreSQL no-op is not what runs here")
    said: list[str] = []
    assert apply(TEST_DATABASE_URL, PolicySettings(retention_bars="1 day"), log=said.append) == []
    assert "TimescaleDB absent" in said[0]


# --- with TimescaleDB --------------------------------------------------------------------------


@pytest.fixture
def timescale_url(fresh_timescale: str) -> Iterator[str]:
    """A fresh, migrated database with TimescaleDB and no policies applied yet (the embedded one)."""
    migrate.up(fresh_timescale, log=lambda _: None)
    yield fresh_timescale


@pytest.mark.integration
def test_policies_are_applied_once(timescale_url: str) -> None:
    settings = PolicySettings(retention_bars="1 year", retention_detection="90 days")
    assert apply(timescale_url, settings, log=lambda _: None)
    assert apply(timescale_url, settings, log=lambda _: None) == []  # re-applying changes nothing
    with psycopg.connect(timescale_url) as conn:
        jobs = conn.execute(
            "SELECT hypertable_name, proc_name, coalesce(config->>'compress_after', config->>'drop_after')::interval"
            " FROM timescaledb_information.jobs WHERE proc_name IN ('policy_compression', 'policy_retention')"
        ).fetchall()
        assert {(t, p): v for t, p, v in jobs} == {
            **{(t.name, "policy_compression"): 7 * DAY for t in TABLES},
            ("ohlcv_1min", "policy_retention"): 365 * DAY,
            **{(t, "policy_retention"): 90 * DAY for t in ("events", "indicator_values", "alerts")},
        }
        assert conn.execute(
            "SELECT time_interval FROM timescaledb_information.dimensions WHERE hypertable_name = 'events'"
        ).fetchone() == (7 * DAY,)


@pytest.mark.integration
def test_revised_bars_upsert_into_compressed_chunks(timescale_url: str) -> None:
    apply(timescale_url, PolicySettings(), log=lambda _: None)
    day = int(datetime(2024, 1, 2, 14, 30, tzinfo=UTC).timestamp() * 1000)

    def minute_bar(revision: int, close: float) -> Bar:
        return Bar(symbol="AAPL", timestamp=day, open=10.0, high=max(11.0, close), low=9.0, close=close,
                   volume=100 + revision, vwap=10.0, trades=1, revision=revision, status="final")  # fmt: skip

    def upsert(bar: Bar) -> None:  # a session of its own each time: the embedded server serves one at a time
        store = BarStore(timescale_url)
        try:
            store.upsert([bar])
        finally:
            store.close()

    upsert(minute_bar(0, 10.5))
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        compressed = conn.execute("SELECT count(compress_chunk(c)) FROM show_chunks('ohlcv_1min') c").fetchone()
        assert compressed == (1,)
    upsert(minute_bar(1, 12.5))  # a late correction lands in the compressed chunk
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        assert conn.execute("SELECT close, revision FROM ohlcv_1min").fetchall() == [(12.5, 1)]
        assert conn.execute("SELECT close, revision FROM latest_bars").fetchall() == [(12.5, 1)]
        # the rollup (0004) has it too, without a refresh
        assert conn.execute("SELECT high, close, volume FROM ohlcv_1hour").fetchall() == [(12.5, 12.5, 101)]


@pytest.mark.integration
def test_retention_that_would_undo_aggregated_history_is_refused(fresh_timescale: str) -> None:
    """With 0002's continuous aggregates (up to 0003, and what TimescaleDB before 2.18 keeps): not
    inside a refresh window. With 0004's rollup (no refresh window: dropping raw chunks fires no
    triggers, its buckets stay): not within the reach of a revision (a day at most)."""
    migrate.up(fresh_timescale, to=3, log=lambda _: None)
    with pytest.raises(PolicyError, match=r"TIMESCALE_RETENTION_BARS=3 days.*refresh"):
        apply(fresh_timescale, PolicySettings(retention_bars="3 days"), log=lambda _: None)
    migrate.up(fresh_timescale, log=lambda _: None)
    for too_short in ("1 day", "12 hours"):
        with pytest.raises(PolicyError, match=rf"TIMESCALE_RETENTION_BARS={too_short} .*revision"):
            apply(fresh_timescale, PolicySettings(retention_bars=too_short), log=lambda _: None)
    assert apply(fresh_timescale, PolicySettings(retention_bars="3 days"), log=lambda _: None)


def _bar(symbol: str, at: datetime, close: float, revision: int = 0, volume: int = 100) -> Bar:
    return Bar(symbol=symbol, timestamp=int(at.timestamp() * 1000), open=10.0, high=max(11.0, close), low=9.0,
               close=close, volume=volume, vwap=10.0, trades=1, revision=revision, status="final")  # fmt: skip


def _upsert(url: str, bars: list[Bar]) -> None:
    """As the sink writes (a session of its own: the embedded server serves one at a time)."""
    store = BarStore(url)
    try:
        store.upsert(bars)
    finally:
        store.close()


_DETECTION = (  # one statement each (parameters)
    "INSERT INTO events (symbol, timestamp, id, kind, type, timeframe, direction, confidence, price, params, detail)"
    " VALUES ('AAPL', %(at)s, 'e', 'trend', 'up', '1m', 'up', 0.9, 10, '{}', '{}')",
    "INSERT INTO indicator_values (symbol, timeframe, timestamp, sma) VALUES ('AAPL', '1m', %(at)s, 10)",
    "INSERT INTO alerts (symbol, timestamp, id, rule, severity, timeframe, direction, confidence, indicator, value,"
    " threshold, message, params) VALUES ('AAPL', %(at)s, 'a', 'rsi', 'warning', '1m', 'up', 0.9, 'rsi', 75, 70, 'm', '{}')",
)


@pytest.mark.integration
def test_compression_and_retention_jobs_run_from_settings(timescale_url: str) -> None:
    """The policies as `make migrate` applies them, their jobs run by id (PGlite has no background
    workers): retention drops old raw chunks only, the rollup and latest_bars keep what they
    aggregated, compressed chunks take revisions visible at every timeframe."""
    settings = PolicySettings(compress_after="7 days", retention_bars="30 days", retention_detection="30 days")
    apply(timescale_url, settings, log=lambda _: None)
    today = datetime.now(UTC).replace(hour=14, minute=30, second=0, microsecond=0)
    old, middle, recent = today - 60 * DAY, today - 10 * DAY, today - DAY
    # AAPL trades on all three days; GONE only on the old one (its latest bar is in a dropped chunk)
    _upsert(timescale_url, [_bar("AAPL", d + timedelta(minutes=m), 10.0 + m) for d in (old, middle, recent) for m in range(3)])
    _upsert(timescale_url, [_bar("GONE", old, 20.0)])
    day_bars = "SELECT timestamp, open, high, low, close, volume FROM ohlcv_1day WHERE symbol = 'AAPL' ORDER BY 1"
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        for at in (old, middle, recent):
            for statement in _DETECTION:
                conn.execute(statement, {"at": at})
        rollup_before = conn.execute("SELECT * FROM rollups.bars_5min ORDER BY symbol, timestamp").fetchall()
        days_before = conn.execute(day_bars).fetchall()
        latest_before = conn.execute("SELECT * FROM latest_bars ORDER BY symbol").fetchall()
        assert [d.date() for d, *_ in days_before] == [old.date(), middle.date(), recent.date()]

        jobs = dict(
            conn.execute(
                "SELECT hypertable_name || ' ' || proc_name, job_id FROM timescaledb_information.jobs"
                " WHERE proc_name IN ('policy_compression', 'policy_retention')"
            ).fetchall()
        )
        assert len(jobs) == 8  # compression and retention on each of the four tables
        for table in ("ohlcv_1min", "events", "indicator_values", "alerts"):
            conn.execute(f"CALL run_job({jobs[table + ' policy_compression']})")
        compressed = conn.execute(
            "SELECT range_start::date, is_compressed FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'ohlcv_1min' ORDER BY 1"
        ).fetchall()
        assert compressed == [(old.date(), True), (middle.date(), True), (recent.date(), False)]
        for table in ("ohlcv_1min", "events", "indicator_values", "alerts"):
            conn.execute(f"CALL run_job({jobs[table + ' policy_retention']})")

        assert conn.execute(
            "SELECT range_start::date, is_compressed FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'ohlcv_1min' ORDER BY 1"
        ).fetchall() == [(middle.date(), True), (recent.date(), False)]
        assert conn.execute("SELECT DISTINCT timestamp::date FROM ohlcv_1min ORDER BY 1").fetchall() == [
            (middle.date(),),
            (recent.date(),),
        ]
        for table in ("events", "indicator_values", "alerts"):  # 7-day chunks: the old week goes, the rest stays
            kept = conn.execute(f"SELECT timestamp FROM {table} ORDER BY 1").fetchall()
            assert kept == [(middle,), (recent,)], table
        # dropping raw minutes fires no trigger: aggregated history and the latest bars stay as they were
        assert conn.execute("SELECT * FROM rollups.bars_5min ORDER BY symbol, timestamp").fetchall() == rollup_before
        assert conn.execute(day_bars).fetchall() == days_before
        assert conn.execute("SELECT * FROM latest_bars ORDER BY symbol").fetchall() == latest_before
        assert ("GONE", old) in [(s, t) for s, t, *_ in latest_before]

    # a late correction of a minute in the compressed middle chunk: written, and seen at every timeframe
    _upsert(timescale_url, [_bar("AAPL", middle + timedelta(minutes=1), 30.0, revision=1, volume=500)])
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT close, volume, revision FROM ohlcv_1min WHERE symbol = 'AAPL' AND timestamp = %s",
            (middle + timedelta(minutes=1),),
        ).fetchone() == (30.0, 500, 1)
        for view in ("ohlcv_5min", "ohlcv_15min", "ohlcv_1hour", "ohlcv_1day"):
            row = conn.execute(
                f"SELECT high, close, volume FROM {view} WHERE symbol = 'AAPL' AND timestamp <= %s"
                " AND timestamp > %s - interval '1 day' ORDER BY timestamp DESC LIMIT 1",
                (middle, middle),
            ).fetchone()
            assert row == (30.0, 12.0, 100 + 500 + 100), view  # minute 2 still closes the bucket
        assert conn.execute("SELECT timestamp FROM latest_bars WHERE symbol = 'AAPL'").fetchone() == (
            recent + timedelta(minutes=2),
        )
