"""Sinks keep what they accepted when their server goes away, and fail fast when it was never there.

The bar sink's revision rule and its refusal of an unmigrated database run on plain PostgreSQL and
on the embedded TimescaleDB; killing the sink's session takes a second session beside it (the
embedded server serves one at a time), so that one is PostgreSQL's only.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import psycopg
import pytest
import redis

from connectors.postgres.bars import BarStore
from connectors.postgres.database import DatabaseUnavailable
from connectors.redis.publish import BarPublisher, RedisUnavailable
from schemas.bars import Bar, decode_bar
from schemas.channels import Channels
from tests.support.databases import Storage
from tests.support.proxy import KafkaProxy
from tests.support.services import TEST_DATABASE_URL, free_port, private_redis

pytestmark = pytest.mark.integration

T0 = 1_762_094_400_000


def bar(symbol: str, minute: int, revision: int = 0, close: float = 10.0) -> Bar:
    return Bar(symbol=symbol, timestamp=T0 + minute * 60_000, open=10.0, high=11.0, low=9.5, close=close,
               volume=100, vwap=10.1, trades=3, revision=revision, status="final")  # fmt: skip


def rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT symbol, close::float8, revision FROM ohlcv_1min ORDER BY symbol, timestamp").fetchall()


def test_postgres_write_survives_a_killed_connection(db):
    """PostgreSQL only: pg_terminate_backend from a second session while the sink's is open."""
    store = BarStore(TEST_DATABASE_URL, max_backoff_s=0.5)
    store.upsert([bar("AAA", 0), bar("BBB", 0)])
    pid = store._db._conn.info.backend_pid
    db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    store.upsert([bar("AAA", 1), bar("CCC", 1)])
    assert rows(db) == [("AAA", 10.0, 0), ("AAA", 10.0, 0), ("BBB", 10.0, 0), ("CCC", 10.0, 0)]
    assert db.execute("SELECT count(*) FROM symbols").fetchone()[0] == 3
    store.close()


def test_older_revision_never_overwrites_newer(storage: Storage) -> None:
    storage.upsert([bar("AAA", 0, revision=2, close=12.0)])  # each in a sink session of its own
    storage.upsert([bar("AAA", 0, revision=1, close=11.0)])
    storage.upsert([bar("AAA", 0, revision=0, close=10.0), bar("AAA", 0, revision=3, close=13.0)])
    assert rows(storage.conn) == [("AAA", 13.0, 3)]


def test_unreachable_or_unmigrated_database_fails_fast_with_the_fix(services):
    """Creates a second database on the server (the embedded TimescaleDB has one: see the next test)."""
    with pytest.raises(DatabaseUnavailable, match="make services"):
        BarStore("postgresql://postgres@127.0.0.1:1/none", start_wait_s=0)
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS tickstock_unmigrated")
        conn.execute("CREATE DATABASE tickstock_unmigrated")
    with pytest.raises(DatabaseUnavailable, match="make migrate"):
        BarStore(TEST_DATABASE_URL.rsplit("/", 1)[0] + "/tickstock_unmigrated")


def test_a_store_started_while_postgres_is_unreachable_waits_for_it(services):
    """Seen in the chaos run's PostgreSQL outage: a sink partition opened during it crashed the flow.
    The server is reached through a TCP proxy that refuses connections, then listens again."""
    port = free_port()
    head, _, tail = TEST_DATABASE_URL.partition("@127.0.0.1:5432")
    assert tail, TEST_DATABASE_URL
    with KafkaProxy(port, 5432) as proxy:
        proxy.cut()
        restorer = threading.Timer(1.5, proxy.restore)
        restorer.start()
        try:
            store = BarStore(f"{head}@127.0.0.1:{port}{tail}", start_wait_s=30)  # the server answers 1.5 s later
            store.close()
        finally:
            restorer.join()
        assert proxy.connections >= 1
    with pytest.raises(DatabaseUnavailable, match="unreachable"):
        BarStore(f"{head}@127.0.0.1:{free_port()}{tail}", start_wait_s=0.5)  # waited for, then refused


def test_unmigrated_timescaledb_fails_fast_with_the_fix(fresh_timescale: str) -> None:
    with pytest.raises(DatabaseUnavailable, match="make migrate"):
        BarStore(fresh_timescale)


def test_unreachable_redis_fails_fast_with_the_fix():
    with pytest.raises(RedisUnavailable, match="REDIS_URL"):
        BarPublisher("redis://127.0.0.1:1/0", Channels(), start_wait_s=0)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary (Debian redis-server)")
def test_a_publisher_started_while_redis_is_down_waits_for_it():
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server: list[subprocess.Popen] = []
    starter = threading.Timer(1.0, lambda: server.append(private_redis(port)))
    starter.start()
    try:
        publisher = BarPublisher(url, Channels("t"), start_wait_s=30)  # Redis comes up a second later
        assert publisher._client.ping()
    finally:
        starter.join()
        for s in server:
            s.terminate()
            s.wait(10)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary (Debian redis-server)")
def test_redis_publish_waits_for_the_server_to_return_and_then_delivers():
    port = free_port()
    server = private_redis(port)
    url = f"redis://127.0.0.1:{port}/0"
    publisher = BarPublisher(url, Channels("t"), max_backoff_s=0.2)
    publisher.publish_final([bar("AAA", 0)])
    server.kill()
    server.wait()

    done = threading.Event()
    worker = threading.Thread(target=lambda: (publisher.publish_final([bar("BBB", 1)]), done.set()), daemon=True)
    worker.start()
    time.sleep(0.6)
    assert not done.is_set(), "publishing must block while Redis is down, not drop the bars"

    server = private_redis(port)
    worker.join(10)
    # What the publisher delivered once Redis was back, read from the channel's history (a live
    # subscriber could only start listening after the restart, racing the publisher's retry).
    entries = redis.Redis(port=port).xrange("history:t.market.ohlcv.BBB")
    server.kill()
    assert done.is_set()
    assert [decode_bar(fields[b"m"]).symbol for _, fields in entries] == ["BBB"]
