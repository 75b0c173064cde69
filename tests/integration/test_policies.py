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
def test_retention_inside_a_refresh_window_is_refused(fresh_timescale: str) -> None:
    """With 0002's continuous aggregates (up to 0003, and what TimescaleDB before 2.18 keeps); 0004's
    rollup has no refresh window (dropping raw chunks fires no triggers, its buckets stay)."""
    migrate.up(fresh_timescale, to=3, log=lambda _: None)
    with pytest.raises(PolicyError, match=r"TIMESCALE_RETENTION_BARS=3 days.*refresh"):
        apply(fresh_timescale, PolicySettings(retention_bars="3 days"), log=lambda _: None)
    migrate.up(fresh_timescale, log=lambda _: None)
    assert apply(fresh_timescale, PolicySettings(retention_bars="3 days"), log=lambda _: None)
