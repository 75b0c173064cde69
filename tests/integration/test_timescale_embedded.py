"""The embedded TimescaleDB (infra/timescale: PGlite + TimescaleDB 2.23) and the migrations on it.

The tests share one server of this module's (in memory, on a free port), emptied before each to
what a fresh server holds (the extension and nothing else, `tests.support.databases.empty_timescale`;
a start costs ~3 s, ~12 s on a loaded machine), so each has the one database to itself; the one
with another queue timeout and the restart test start servers of their own. Two kinds of facts: what the server gives a client (one session at a time, a clean
session for each, whole messages and COPY), and that every migration path keeps the triggers and
functions working on hypertables (up, down, up again, with data in place). Skips, saying why,
only where the server cannot start (no Node.js or packages: `bash infra/timescale.sh`); under CI
that is a failure.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal

from infra import migrate
from infra.embedded_timescale import EmbeddedTimescale, TimescaleUnavailable
from tests.support.databases import empty_timescale, unavailable
from tests.support.rollups import COLUMNS, assert_views_match, insert, one_minute_rows, table

pytestmark = [pytest.mark.integration, pytest.mark.cost(30)]


def quiet(_: str) -> None:
    pass


def _server(queue_timeout_s: float = 30.0) -> EmbeddedTimescale:
    server = EmbeddedTimescale(port=0, queue_timeout_s=queue_timeout_s)
    try:
        server.start()
    except TimescaleUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the embedded TimescaleDB must run under CI: {exc}", pytrace=False)
        pytest.skip(f"the embedded TimescaleDB cannot start here: {exc}")
    return server


@pytest.fixture(scope="module")
def _shared() -> Iterator[list[EmbeddedTimescale]]:
    """The module's server, in a list so that `timescale` can replace one that died."""
    servers = [_server()]
    try:
        yield servers
    finally:
        servers[-1].stop()


@pytest.fixture
def timescale(_shared: list[EmbeddedTimescale]) -> str:
    """The URL of an embedded TimescaleDB holding what a fresh one holds, for this test alone."""
    server = _shared[-1]
    if server.process is None or server.process.poll() is not None:  # a test before ended it: a new one
        server = _server()
        _shared.append(server)
    assert server.url is not None
    empty_timescale(server.url)
    return server.url


@pytest.fixture
def impatient() -> Iterator[str]:
    """The same with a waiting client refused after one second."""
    server = _server(queue_timeout_s=1.0)
    try:
        assert server.url is not None
        yield server.url
    finally:
        server.stop()


def test_compressed_chunks_read_the_same_after_a_restart_on_a_data_directory(tmp_path: Path) -> None:
    """A server restarted on its files loads TimescaleDB before any client, as a preloaded server does:
    compressed chunks are read, not silently empty, and compression still works."""
    data_dir = tmp_path / "pgdata"
    for restarted in (False, True):
        server = EmbeddedTimescale(port=0, data_dir=data_dir)
        try:
            try:
                server.start()
            except TimescaleUnavailable as exc:
                unavailable(exc)
            assert server.url is not None
            with psycopg.connect(server.url, autocommit=True) as conn:
                if not restarted:
                    conn.execute("CREATE TABLE m (t TIMESTAMPTZ NOT NULL, s TEXT, v INTEGER)")
                    conn.execute("SELECT create_hypertable('m', 't')")
                    conn.execute("INSERT INTO m SELECT '2024-01-01'::timestamptz + i * interval '1 minute', 's' || i % 10, i"
                                 " FROM generate_series(1, 3000) i")  # fmt: skip
                    conn.execute("ALTER TABLE m SET (timescaledb.compress, timescaledb.compress_segmentby = 's')")
                    assert conn.execute("SELECT count(compress_chunk(c)) FROM show_chunks('m') c").fetchone() == (1,)
                assert conn.execute("SELECT count(*), sum(v) FROM m").fetchone() == (3000, 3000 * 3001 // 2)
                assert conn.execute("SELECT count(decompress_chunk(c)) FROM show_chunks('m') c").fetchone() == (1,)
                assert conn.execute("SELECT count(compress_chunk(c)) FROM show_chunks('m') c").fetchone() == (1,)
        finally:
            server.stop()


# --- what a client gets ------------------------------------------------------------------------------


def test_it_is_timescaledb_with_the_extension_in_place(timescale: str) -> None:
    with psycopg.connect(timescale, autocommit=True) as conn:
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone() == ("2.23.0-dev",)
        assert conn.info.server_version // 10000 == 17
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN"
                                     " ('search_path', 'enable_seqscan', 'client_min_messages', 'TimeZone')"))  # fmt: skip
    assert settings == {"search_path": '"$user", public', "enable_seqscan": "on", "client_min_messages": "notice",
                        "TimeZone": "Etc/UTC"}  # fmt: skip


def test_a_second_client_waits_for_the_first_to_close(timescale: str) -> None:
    served: list[tuple[int, bool]] = []
    first = psycopg.connect(timescale, autocommit=True)
    first_closed = threading.Event()

    def second() -> None:
        with psycopg.connect(timescale, autocommit=True) as conn:
            served.append((conn.execute("SELECT 2").fetchone()[0], first_closed.is_set()))  # type: ignore[index]

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive() and served == []  # still waiting while the first holds the session
    assert first.execute("SELECT 1").fetchone() == (1,)
    first_closed.set()
    first.close()
    thread.join(30)
    assert served == [(2, True)]


def test_a_client_that_waits_too_long_is_refused_with_the_reason(impatient: str) -> None:
    with psycopg.connect(impatient, autocommit=True) as holder:
        with pytest.raises(psycopg.OperationalError, match="serves one client at a time"):
            psycopg.connect(impatient, autocommit=True)
        assert holder.execute("SELECT 1").fetchone() == (1,)  # the session is unharmed
    with psycopg.connect(impatient, autocommit=True) as after:
        assert after.execute("SELECT 1").fetchone() == (1,)


def test_a_cancel_request_is_answered_at_once_while_a_session_runs(timescale: str) -> None:
    with psycopg.connect(timescale, autocommit=True) as holder:
        with socket.create_connection((holder.info.host, holder.info.port), timeout=5) as raw:
            raw.sendall(struct.pack("!iiii", 16, 80877102, 1, 2))  # CancelRequest
            assert raw.recv(1) == b""  # closed, not queued behind the session
        assert holder.execute("SELECT 1").fetchone() == (1,)


def test_each_client_starts_a_clean_session(timescale: str) -> None:
    left = psycopg.connect(timescale, autocommit=True)
    left.execute("SET TIME ZONE 'America/New_York'")
    left.execute("CREATE TEMP TABLE leftover (x int)")
    left.execute("PREPARE leftover_statement AS SELECT 1")
    left.execute("SELECT pg_advisory_lock(7)")
    left.execute("CREATE TABLE half_done (x int)")
    left.execute("BEGIN")
    left.execute("INSERT INTO half_done VALUES (1)")
    left.close()  # gone mid-transaction
    with psycopg.connect(timescale, autocommit=True) as conn:
        assert conn.execute("SHOW TimeZone").fetchone() == ("Etc/UTC",)
        assert conn.execute("SELECT to_regclass('pg_temp.leftover')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM half_done").fetchone() == (0,)  # rolled back
        for _ in range(7):  # psycopg prepares a query run 5 times; names restart per connection
            conn.execute("SELECT %s::int", (1,))
    with psycopg.connect(timescale, autocommit=True) as conn:
        for _ in range(7):
            assert conn.execute("SELECT %s::int", (1,)).fetchone() == (1,)


def test_large_messages_pipelines_and_copy(timescale: str) -> None:
    with psycopg.connect(timescale, autocommit=True) as conn:
        text = "x" * 3_000_000  # one message of 3 MB: many TCP reads
        assert conn.execute("SELECT length(%s::text)", (text,)).fetchone() == (len(text),)
        conn.execute("CREATE TABLE t (x int, s text)")
        with conn.cursor() as cur:  # a pipeline of 20,000 statements
            cur.executemany("INSERT INTO t VALUES (%s, 'p')", [(i,) for i in range(20_000)])
        with conn.cursor().copy("COPY t FROM STDIN") as copy:
            for i in range(100_000):
                copy.write_row((i, "c"))
        assert conn.execute("SELECT count(*) FILTER (WHERE s = 'p'), count(*) FILTER (WHERE s = 'c') FROM t").fetchone() == (
            20_000,
            100_000,
        )
        with pytest.raises(psycopg.errors.InvalidTextRepresentation), conn.cursor().copy("COPY t FROM STDIN") as copy:
            copy.write_row(("not a number", "c"))
        with conn.cursor().copy("COPY (SELECT x FROM t WHERE s = 'p' ORDER BY x) TO STDOUT") as copy:
            assert [int(row[0]) for row in copy.rows()] == list(range(20_000))


# --- the migrations on TimescaleDB ---------------------------------------------------------------------


def latest_bars_match(conn: psycopg.Connection) -> None:
    minute = table(conn, "ohlcv_1min")
    expected = minute.group_by("symbol").agg(pl.all().sort_by("timestamp").last()).sort("symbol").select(COLUMNS)
    assert_frame_equal(table(conn, "latest_bars"), expected, check_dtypes=False)


def writes_of_every_kind(conn: psycopg.Connection) -> None:
    """An insert of a new minute, an upsert revising one, an update and a delete, then the derived tables."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    conn.execute(
        "INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades)"
        " VALUES ('TSLA', %s, 1, 2, 1, 2, 10, 1.5, 1)",
        (now,),
    )
    conn.execute(
        "INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades, revision)"
        " VALUES ('TSLA', %s, 1, 3, 1, 3, 11, 2, 2, 1) ON CONFLICT (symbol, timestamp) DO UPDATE SET"
        " high = excluded.high, close = excluded.close, revision = excluded.revision",
        (now,),
    )
    conn.execute("UPDATE ohlcv_1min SET close = close + 1, revision = revision + 1 WHERE symbol = 'AAPL'")
    conn.execute("DELETE FROM ohlcv_1min WHERE symbol = 'MSFT' AND timestamp >= %s", (datetime(2024, 1, 3, 2, tzinfo=UTC),))
    latest_bars_match(conn)
    conn.execute("DELETE FROM ohlcv_1min WHERE symbol = 'TSLA' AND timestamp >= %s", (now - timedelta(days=1),))
    latest_bars_match(conn)
    assert_views_match(conn)  # the rollup (0004), or 0002's real-time aggregates with nothing materialized


def test_migrations_make_hypertables_then_the_rollup_replaces_the_continuous_aggregates(timescale: str) -> None:
    migrate.up(timescale, to=3, log=quiet)
    with psycopg.connect(timescale, autocommit=True) as conn:
        hypertables = {r[0] for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")}
        aggregates = dict(conn.execute("SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"))
    assert {"ohlcv_1min", "events", "indicator_values", "alerts"} <= hypertables
    assert aggregates == {"ohlcv_5min": False, "ohlcv_15min": False, "ohlcv_1hour": False, "ohlcv_1day": False}
    migrate.up(timescale, log=quiet)  # 0004 on TimescaleDB 2.18+: the rollup, kept current by the writes' triggers
    with psycopg.connect(timescale, autocommit=True) as conn:
        assert to_regnamespace(conn, "rollups") == "rollups"
        assert conn.execute("SELECT count(*) FROM timescaledb_information.continuous_aggregates").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name ="
                            " 'policy_refresh_continuous_aggregate'").fetchone() == (0,)  # fmt: skip
        triggers = dict(conn.execute(
            "SELECT tgname, CASE WHEN tgtype & 1 = 1 THEN 'row' ELSE 'statement' END FROM pg_trigger"
            " WHERE tgrelid = 'ohlcv_1min'::regclass AND NOT tgisinternal AND tgname <> 'ts_insert_blocker'"
        ).fetchall())  # fmt: skip
    # transition tables for INSERT and UPDATE; DELETE row by row (compression refuses DELETE transition tables)
    assert triggers == {
        "latest_bars_on_truncate": "statement", "rollups_after_truncate": "statement",
        "latest_bars_after_insert": "statement", "latest_bars_after_update": "statement",
        "latest_bars_after_delete": "row", "rollups_after_insert": "statement",
        "rollups_after_update": "statement", "rollups_after_delete": "row",
    }  # fmt: skip


def to_regnamespace(conn: psycopg.Connection, name: str) -> object:
    return conn.execute("SELECT to_regnamespace(%s)", (name,)).fetchone()[0]  # type: ignore[index]


def test_writes_work_at_every_migration_step_with_data_in_place(timescale: str) -> None:
    """0002's row-level triggers (up to 0003, and again after 0004 is reverted) and 0004's, on a
    hypertable with chunks: NEW and OLD have the chunk's row type there."""
    migrate.up(timescale, to=3, log=quiet)
    with psycopg.connect(timescale, autocommit=True) as conn:
        insert(conn, one_minute_rows(("AAPL", "MSFT", "TSLA"), minutes=400))  # spans two daily chunks
        assert conn.execute("SELECT count(*) FROM show_chunks('ohlcv_1min')").fetchone()[0] >= 2  # type: ignore[index]
        latest_bars_match(conn)
        writes_of_every_kind(conn)
        before = {view: table(conn, view) for view in ("ohlcv_5min", "ohlcv_1hour", "ohlcv_1day")}
    for step in (lambda: migrate.up(timescale, log=quiet),
                 lambda: migrate.down(timescale, to=3, log=quiet),
                 lambda: migrate.up(timescale, log=quiet)):  # fmt: skip
        step()
        with psycopg.connect(timescale, autocommit=True) as conn:
            latest_bars_match(conn)
            for view, frame in before.items():
                assert_frame_equal(table(conn, view), frame, check_dtypes=False)
            writes_of_every_kind(conn)
            before = {view: table(conn, view) for view in before}


def test_down_to_nothing_and_up_again(timescale: str) -> None:
    migrate.up(timescale, log=quiet)
    with psycopg.connect(timescale, autocommit=True) as conn:
        insert(conn, one_minute_rows(minutes=30))
    migrate.down(timescale, to=0, log=quiet)
    with psycopg.connect(timescale, autocommit=True) as conn:
        left = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert left == {"schema_migrations"}
        assert conn.execute("SELECT count(*) FROM timescaledb_information.hypertables").fetchone() == (0,)
    migrate.up(timescale, log=quiet)
    with psycopg.connect(timescale, autocommit=True) as conn:
        insert(conn, one_minute_rows(minutes=30))
        latest_bars_match(conn)
        assert_views_match(conn)
