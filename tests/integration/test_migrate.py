"""Migrations on plain PostgreSQL and on the embedded TimescaleDB, each test in an empty database of its own
(a throwaway one on PostgreSQL, a private server on TimescaleDB)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from polars.testing import assert_frame_equal

from connectors.postgres.queries import BARS_IN_RANGE
from infra import migrate
from schemas.bars import Bar
from tests.support.databases import Storage
from tests.support.rollups import START, assert_views_match, insert, one_minute_rows, table

BASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tickstock_test")
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


SHIPPED = [m.version for m in migrate.discover()]


def quiet(_: str) -> None:
    pass


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def versions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def test_fresh_apply_creates_the_bar_schema(empty_database: Storage) -> None:
    database_url = empty_database.url
    applied = migrate.up(database_url, log=quiet)

    assert [m.label for m in applied] == [m.label for m in migrate.discover()]
    assert [m.label for m in applied][:3] == ["0001_ohlcv", "0002_timeframes", "0003_detection"]
    assert {"symbols", "ohlcv_1min", "schema_migrations", "events", "indicator_values", "alerts"} <= tables(database_url)
    with psycopg.connect(database_url) as conn:
        nullable: dict[str, str] = dict(
            conn.execute(
                "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = 'ohlcv_1min'"
            ).fetchall()
        )
        assert {c for c, n in nullable.items() if n == "YES"} == {"open", "high", "low", "close", "vwap"}
        # a minute of volume-only trades: no price, still a bar
        conn.execute("INSERT INTO symbols (symbol) VALUES ('AAPL')")
        conn.execute("INSERT INTO ohlcv_1min (symbol, timestamp, volume, trades) VALUES ('AAPL', '2024-01-02 14:30+00', 5, 1)")
        assert conn.execute("SELECT revision FROM ohlcv_1min").fetchone() == (0,)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO ohlcv_1min (symbol, timestamp, volume, trades) VALUES ('NOPE', now(), 1, 1)")


def test_reapplying_is_a_no_op(empty_database: Storage) -> None:
    database_url = empty_database.url
    migrate.up(database_url, log=quiet)
    with psycopg.connect(database_url) as conn:
        before = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()

    assert migrate.up(database_url, log=quiet) == []

    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall() == before


def test_down_then_up(empty_database: Storage) -> None:
    database_url = empty_database.url
    migrate.up(database_url, log=quiet)

    reverted = migrate.down(database_url, to=0, log=quiet)
    assert [m.version for m in reverted] == SHIPPED[::-1]
    assert tables(database_url) == {"schema_migrations"}
    assert versions(database_url) == []

    assert [m.version for m in migrate.up(database_url, log=quiet)] == SHIPPED
    assert {"symbols", "ohlcv_1min"} <= tables(database_url)
    assert versions(database_url) == SHIPPED


@pytest.fixture
def broken_dir(tmp_path: Path) -> Path:
    """0001 as shipped, then a 0002 that fails half-way, then a 0003 that must never run."""
    for path in migrate.MIGRATIONS_DIR.glob("0001_*.sql"):
        shutil.copy(path, tmp_path)
    (tmp_path / "0002_broken.up.sql").write_text(
        "CREATE TABLE half_done (x INTEGER);\n"
        "INSERT INTO half_done VALUES (1);\n"
        "ALTER TABLE ohlcv_1min ADD COLUMN doomed INTEGER;\n"
        "SELECT 1 / 0;\n"
    )
    (tmp_path / "0002_broken.down.sql").write_text("DROP TABLE half_done;\n")
    (tmp_path / "0003_later.up.sql").write_text("CREATE TABLE later (x INTEGER);\n")
    return tmp_path


def test_failing_migration_is_rolled_back(empty_database: Storage, broken_dir: Path) -> None:
    database_url = empty_database.url
    with pytest.raises(migrate.MigrationError, match=r"0002_broken.up.sql failed and was rolled back"):
        migrate.up(database_url, directory=broken_dir, log=quiet)

    # 0001 committed in its own transaction; nothing of 0002 remains; 0003 never ran
    assert versions(database_url) == [1]
    assert tables(database_url) == {"symbols", "ohlcv_1min", "schema_migrations"}
    with psycopg.connect(database_url) as conn:
        columns = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'ohlcv_1min'"
        )}  # fmt: skip
    assert "doomed" not in columns


def test_failing_down_leaves_the_schema(empty_database: Storage, tmp_path: Path) -> None:
    database_url = empty_database.url
    (tmp_path / "0001_t.up.sql").write_text("CREATE TABLE t (x INTEGER);\n")
    (tmp_path / "0001_t.down.sql").write_text("DROP TABLE t;\nDROP TABLE not_there;\n")
    migrate.up(database_url, directory=tmp_path, log=quiet)

    with pytest.raises(migrate.MigrationError, match="rolled back"):
        migrate.down(database_url, to=0, directory=tmp_path, log=quiet)

    assert "t" in tables(database_url)
    assert versions(database_url) == [1]


def test_concurrent_runs_apply_each_migration_once(empty_database: Storage) -> None:
    database_url = empty_database.url
    results: list[list[migrate.Migration]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate.up(database_url, log=quiet))
        except BaseException as exc:  # noqa: BLE001 - every failure of the thread is surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, len(SHIPPED)]
    assert versions(database_url) == SHIPPED


def test_cli_reports_failure_and_needs_a_target_for_down(empty_database: Storage, broken_dir: Path) -> None:
    database_url = empty_database.url
    command = [sys.executable, "-m", "infra.migrate", "--database-url", database_url]

    failed = subprocess.run([*command, "--migrations-dir", str(broken_dir)], cwd=REPO, capture_output=True, text=True)
    assert failed.returncode == 1
    assert "0002_broken.up.sql failed and was rolled back" in failed.stderr

    usage = subprocess.run([*command, "down"], cwd=REPO, capture_output=True, text=True)
    assert usage.returncode == 2
    assert "--to" in usage.stderr

    ok = subprocess.run([*command, "status"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0
    assert "0001_ohlcv: applied" in ok.stdout


@pytest.mark.parametrize("name", ["1_short.up.sql", "0001_ok.sideways.sql", "0001_Upper.up.sql"])
def test_stray_sql_files_are_errors_not_skipped(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("SELECT 1;\n")
    with pytest.raises(migrate.MigrationError, match="name must be"):
        migrate.discover(tmp_path)


def test_hypertable_when_timescaledb_is_present(empty_database: Storage) -> None:
    database_url = empty_database.url
    with psycopg.connect(database_url) as conn:
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        preloaded = "timescaledb" in str(conn.execute("SHOW shared_preload_libraries").fetchone())
        created = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()  # PGlite: at start
    if not (available and preloaded) and not created:
        assert not empty_database.timescaledb
        pytest.skip("TimescaleDB is not installed/preloaded on this server; the plain-table path is tested above")

    migrate.up(database_url, log=quiet)

    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'ohlcv_1min'").fetchone()
    assert row is not None


def test_a_no_transaction_migration_runs_statement_by_statement(empty_database: Storage, tmp_path: Path) -> None:
    """Each statement commits on its own (VACUUM, like CREATE INDEX CONCURRENTLY, refuses a transaction); `when`
    skips one; a failure says which statement, keeps the ones before and records nothing."""
    database_url = empty_database.url
    body = (
        "-- migrate: no-transaction\n-- statement\nCREATE TABLE IF NOT EXISTS t (x INTEGER);\n"
        "-- statement\nCREATE INDEX IF NOT EXISTS t_x ON t (x);\n-- statement\nVACUUM t;\n"
        "-- statement when SELECT false\nDROP TABLE t;\n"
        "-- statement when SELECT NOT EXISTS (SELECT 1 FROM t)\nSELECT 1 / 0;\n"
    )
    (tmp_path / "0001_t.up.sql").write_text(body)
    with pytest.raises(migrate.MigrationError, match=r"0001_t.up.sql statement 5 of 5 failed .*division by zero"):
        migrate.up(database_url, directory=tmp_path, log=quiet)
    assert "t" in tables(database_url) and versions(database_url) == []
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('t_x') IS NOT NULL").fetchone() == (True,)
        conn.execute("INSERT INTO t VALUES (1)")  # now the 5th statement is skipped: re-running completes it
    assert [m.version for m in migrate.up(database_url, directory=tmp_path, log=quiet)] == [1]
    assert versions(database_url) == [1]

    (tmp_path / "0002_bad.up.sql").write_text("-- migrate: no-transaction\n-- statement when SELECT 1\nSELECT 2;\n")
    with pytest.raises(migrate.MigrationError, match="must return one boolean"):
        migrate.up(database_url, directory=tmp_path, log=quiet)
    (tmp_path / "0002_bad.up.sql").write_text("-- migrate: no-transaction\nSELECT 2;\n")
    with pytest.raises(migrate.MigrationError, match="needs `-- statement` lines"):
        migrate.up(database_url, directory=tmp_path, log=quiet)


def _keys(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return dict(
            conn.execute(
                "SELECT conrelid::regclass::text, pg_get_indexdef(conindid) FROM pg_constraint"
                " WHERE contype = 'p' AND conrelid IN ('ohlcv_1min'::regclass, 'rollups.bars_5min'::regclass)"
            ).fetchall()
        )


def test_covering_keys_up_down_up_with_data_in_place(empty_database: Storage) -> None:
    """0005: the primary keys of the rollup (both) and of ohlcv_1min (plain PostgreSQL; TimescaleDB keeps
    its key and has compression) cover the analyst columns; closed days are read by index-only scans;
    data, views and writes survive every step."""
    url = empty_database.url
    migrate.up(url, to=4, log=quiet)
    with psycopg.connect(url, autocommit=True) as conn:
        insert(conn, one_minute_rows(("AAPL", "MSFT"), minutes=60))
        frames = {v: table(conn, v) for v in ("ohlcv_1min", "ohlcv_5min", "ohlcv_1hour", "ohlcv_1day", "latest_bars")}
    narrow = _keys(url)
    assert all("INCLUDE" not in d for d in narrow.values())
    minute = int((START + timedelta(minutes=7)).timestamp() * 1000)
    for revision, step in enumerate((lambda: migrate.up(url, log=quiet), lambda: migrate.down(url, to=4, log=quiet),
                                     lambda: migrate.up(url, log=quiet)), 1):  # fmt: skip
        step()
        keys = _keys(url)
        covering = 5 in versions(url)  # 0005 applied (later migrations may be too)
        assert ("INCLUDE (open, open_at, high" in keys["rollups.bars_5min"]) is covering
        assert ("INCLUDE (open, high, low, close, volume, vwap, trades)" in keys["ohlcv_1min"]) is (
            covering and not empty_database.timescaledb
        )
        with psycopg.connect(url, autocommit=True) as conn:
            for view, frame in frames.items():
                assert_frame_equal(table(conn, view), frame, check_dtypes=False)
        # a revision through the sink's upsert (ON CONFLICT on the key) reaches every timeframe
        empty_database.upsert([Bar(symbol="AAPL", timestamp=minute, open=1.0, high=999.0 + revision, low=0.5, close=2.0,
                                   volume=7, vwap=1.5, trades=1, revision=revision, status="final")])  # fmt: skip
        with psycopg.connect(url, autocommit=True) as conn:
            assert_views_match(conn)
            assert conn.execute("SELECT max(high) FROM ohlcv_1day").fetchone() == (999 + revision,)
            frames = {v: table(conn, v) for v in frames}
    if not empty_database.timescaledb:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE ohlcv_1min")
            conn.execute("VACUUM ANALYZE rollups.bars_5min")
            conn.execute("SET enable_seqscan = off")  # a table this small is otherwise read whole
            plans = [
                "\n".join(r[0] for r in conn.execute(f"EXPLAIN SELECT * FROM ({q}) q", params))
                for q, params in (
                    (
                        BARS_IN_RANGE["1m"].as_string(conn),
                        {"symbols": ["AAPL"], "start": START, "end": START + timedelta(days=1)},
                    ),
                    (
                        BARS_IN_RANGE["1h"].as_string(conn),
                        {"symbols": ["AAPL"], "start": START, "end": START + timedelta(days=1)},
                    ),
                )
            ]
        assert "Index Only Scan using ohlcv_1min_pkey" in plans[0]
        assert "Index Only Scan using bars_5min_pkey" in plans[1]


_EVENT_ROW = (
    "INSERT INTO events (symbol, timestamp, id, kind, type, timeframe, direction, confidence, price, revision, params, detail)"
    " VALUES ('AAPL', to_timestamp(%s / 1000.0), %s, 'surge', 'volume_surge', '5m', 'up', 0.9, 190.0, 0, '{}', '{}')"
)
_ALERT_ROW = (
    "INSERT INTO alerts (symbol, timestamp, id, rule, severity, timeframe, direction, confidence, indicator, value,"
    " threshold, message, revision, params)"
    " VALUES ('AAPL', to_timestamp(%s / 1000.0), %s, 'rsi_overbought', 'warning', '5m', 'up', 1, 'rsi', 71, 70, 'm', 0, '{}')"
)


def test_event_status_up_down_up_with_rows_in_place(empty_database: Storage) -> None:
    """0007: events and alerts gain `status` (rows from before: detected), also with compressed chunks on
    TimescaleDB; an amendment replaces its row, a lower revision never does; down and up keep the rows."""
    from connectors.postgres.events import EventStore
    from schemas.events import Alert, SurgeEvent, stable_id

    url = empty_database.url
    migrate.up(url, to=6, log=quiet)
    t = 1_793_629_800_000
    surge = SurgeEvent(id=stable_id("surge", "AAPL", "5m", t, "volume_surge"), type="volume_surge", symbol="AAPL",
                       timestamp=t, confidence=0.9, direction="up", params={}, timeframe="5m", ratio=4.0, close=190.0,
                       volume=100)  # fmt: skip
    alert = Alert(id=stable_id("alert", "AAPL", "5m", t, "rsi_overbought"), type="rsi_overbought", symbol="AAPL",
                  timestamp=t, confidence=1.0, direction="up", params={}, timeframe="5m", severity="warning",
                  indicator="rsi", value=71.0, threshold=70.0, message="m")  # fmt: skip
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_EVENT_ROW, (t, surge.id))
        conn.execute(_ALERT_ROW, (t, alert.id))
    if empty_database.timescaledb:  # (the embedded server takes one connection at a time)
        from infra.policies import PolicySettings, apply

        apply(url, PolicySettings(), log=quiet)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT compress_chunk(c) FROM show_chunks('events') c UNION ALL "
                         "SELECT compress_chunk(c) FROM show_chunks('alerts') c")  # fmt: skip

    def rows() -> list[tuple]:
        with psycopg.connect(url) as conn:
            return [conn.execute(f"SELECT id, revision, status FROM {table}").fetchone() for table in ("events", "alerts")]

    def upsert(records: list, **options: bool) -> None:
        store = EventStore(url, **options)
        store.upsert(records)
        store.close()

    for step in range(3):
        if step == 1:
            assert "0007_event_status" in [m.label for m in migrate.down(url, to=6, log=quiet)]  # later ones first
            with psycopg.connect(url) as conn:
                columns = conn.execute("SELECT count(*) FROM information_schema.columns WHERE column_name = 'status'"
                                       " AND table_name IN ('events', 'alerts')").fetchone()  # fmt: skip
            assert columns == (0,)
        migrate.up(url, log=quiet)
        assert rows() == [(surge.id, 0, "detected"), (alert.id, 0, "detected")]
        upsert([surge.__replace__(status="amended", revision=1, ratio=3.5), alert.__replace__(status="retracted", revision=1)])
        assert rows() == [(surge.id, 1, "amended"), (alert.id, 1, "retracted")]
        upsert([surge, alert])  # the first word again (a replay): the later one stays
        assert rows() == [(surge.id, 1, "amended"), (alert.id, 1, "retracted")]
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT detail->>'ratio' FROM events").fetchone() == ("3.5",)
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute("UPDATE events SET status = 'maybe'")
        upsert([surge, alert], any_revision=True)  # the backfill's decision from the day's files replaces it
        assert rows() == [(surge.id, 0, "detected"), (alert.id, 0, "detected")]


def test_watchlists_up_down_up_and_their_bounds(empty_database: Storage) -> None:
    """0008: users' watchlists and universes; the database refuses what the gateway would (names,
    sizes, nulls), and the down migration removes exactly its tables and sequence."""
    url = empty_database.url
    migrate.up(url, log=quiet)
    below = max(v for v in SHIPPED if v < 8)
    add = "INSERT INTO watchlists (user_id, name, symbols, revision) VALUES (%s, %s, %s, nextval('watchlist_revisions'))"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(add, ("alice", "tech", ["AAPL", "MSFT"]))
        conn.execute(add, ("bob", "tech", []))
        for user, name, symbols in (
            ("alice", "a b", []),  # a name the gateway refuses
            ("alice", "x" * 65, []),
            ("alice", "ok\n", []),
            ("", "ok", []),
            ("alice", "nulls", ["AAPL", None]),
            ("alice", "huge", ["AAPL"] * 501),
        ):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(add, (user, name, symbols))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO user_universes (user_id, symbols, revision) VALUES ('alice', %s, 1)", (["A"] * 5001,))
        revisions = [r[0] for r in conn.execute("SELECT revision FROM watchlists ORDER BY revision")]
        assert len(revisions) == 2 and revisions[0] < revisions[1]

    assert [m.version for m in migrate.down(url, to=below, log=quiet)] == [8]
    assert not {"watchlists", "user_universes"} & tables(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('watchlist_revisions')").fetchone() == (None,)

    assert [m.version for m in migrate.up(url, log=quiet)] == [8]
    assert {"watchlists", "user_universes"} <= tables(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(add, ("alice", "tech", ["AAPL"]))
        assert conn.execute("SELECT name, symbols FROM watchlists").fetchall() == [("tech", ["AAPL"])]
