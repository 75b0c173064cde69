"""Shared fixtures: real Kafka (Tansu or any broker), real PostgreSQL, real Redis, and the embedded TimescaleDB.

`make test` starts and migrates all three; run alone, these fixtures fail with a message
saying what is missing rather than skipping. The storage tests take `storage` (a migrated
database) or `empty_database` (an empty one), each run on plain PostgreSQL and on the embedded
TimescaleDB (ids `postgres` and `timescaledb`, tests/support/databases.py): one TimescaleDB server
for the whole session, started and migrated on first use; an empty one is a private server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import psycopg
import pytest
import redis
from hypothesis import settings as hypothesis_settings

from connectors.kafka import clients
from flows.settings import Settings
from tests.support.databases import KINDS, Storage, empty_timescale, migrate_timescale, start_timescale
from tests.support.examples import DEEP
from tests.support.services import TEST_DATABASE_URL, ChannelRecorder, base_settings, create_topics

# Hypothesis fails an example that takes longer than 200 ms by default: a wall-clock assertion that
# a busy machine breaks (seen: DeadlineExceeded in the frame tests at load 16). What the property
# tests assert is behaviour; their time belongs to `make test`'s budget, not to a test's verdict.
# TICKSTOCK_HYPOTHESIS=deep runs every property test with its deep example count (tests/support/examples.py),
# and those that set none with 1,000 instead of hypothesis's 100.
hypothesis_settings.register_profile("tickstock", deadline=None)
hypothesis_settings.register_profile("tickstock-deep", deadline=None, max_examples=1000)
hypothesis_settings.load_profile("tickstock-deep" if DEEP else "tickstock")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cost(seconds): a test file's rough serial time; the costliest files run first")


def _file_cost(item: pytest.Item) -> float:
    marker = item.get_closest_marker("cost")
    return float(marker.args[0]) if marker else 0.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files marked `pytest.mark.cost(seconds)` first, costliest first, then the rest in their order.

    `make test` hands whole files to two xdist workers (`--dist loadfile --no-loadscope-reorder`),
    one at a time as a worker runs dry: a long file that starts last keeps one worker busy while
    the other idles. Longest first, the short files at the end fill both workers evenly. The sort
    is stable: a file's tests keep their order. Every worker sorts alike (xdist needs that).
    """
    cost: dict[str, float] = {}
    for item in items:
        cost[item.path.as_posix()] = max(cost.get(item.path.as_posix(), 0.0), _file_cost(item))
    items.sort(key=lambda item: -cost[item.path.as_posix()])


def pytest_sessionstart(session: pytest.Session) -> None:
    """An xdist worker's own test database (tests/support/services.py names it) exists and is
    migrated before any test runs, as `make test` does for the single-process one."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from infra.databases import ensure_database
        from infra.migrate import up

        ensure_database(TEST_DATABASE_URL)
        up(TEST_DATABASE_URL, log=lambda *_: None)


@pytest.fixture(scope="session")
def services() -> None:
    s = Settings()
    admin = clients.admin(s)
    try:
        admin.list_topics(timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure here means the same thing
        pytest.fail(f"Kafka at {s.kafka_bootstrap_servers} is unreachable ({exc}); run `make test`", pytrace=False)
    try:
        redis.Redis.from_url(s.redis_url).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {s.redis_url} is unreachable ({exc}); run `make test`", pytrace=False)
    from infra.databases import ensure_database
    from infra.migrate import up

    ensure_database(TEST_DATABASE_URL)
    up(TEST_DATABASE_URL, log=lambda *_: None)


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A database on the test server, created empty, dropped afterwards."""
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from infra.databases import connect

    base = os.environ.get("DATABASE_URL", TEST_DATABASE_URL)
    name = f"tickstock_migtest_{uuid.uuid4().hex[:10]}"
    admin_url = make_conninfo(base, dbname="postgres")
    with connect(admin_url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(base, dbname=name)
    finally:
        with connect(admin_url) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url() -> Iterator[str]:
    """A throwaway database, created empty and dropped after the test (migration tests)."""
    with throwaway_database() as url:
        yield url


@pytest.fixture(scope="session")
def embedded_timescale() -> Iterator[str]:
    """The URL of the session's embedded TimescaleDB (PGlite + TimescaleDB 2.23), migrated with its
    policies; tests that need it empty take `fresh_timescale` or `empty_database`."""
    server = start_timescale()
    try:
        assert server.url is not None
        migrate_timescale(server.url)
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def fresh_timescale(embedded_timescale: str) -> Iterator[str]:
    """The session's embedded TimescaleDB emptied (the extension only, as a new server has) for this
    test, and migrated again afterwards for the next."""
    empty_timescale(embedded_timescale)
    try:
        yield embedded_timescale
    finally:
        empty_timescale(embedded_timescale)
        migrate_timescale(embedded_timescale)


@pytest.fixture(params=KINDS)
def storage(request: pytest.FixtureRequest) -> Iterator[Storage]:
    """A migrated database with empty bar and detection tables: the test database on PostgreSQL, or
    the session's embedded TimescaleDB (one session at a time: `Storage.release()` before another
    client connects)."""
    if request.param == "postgres":
        request.getfixturevalue("services")
        url = TEST_DATABASE_URL
    else:
        url = request.getfixturevalue("embedded_timescale")
    database = Storage(request.param, url)
    database.clear()
    try:
        yield database
    finally:
        database.release()


@pytest.fixture(params=KINDS)
def empty_database(request: pytest.FixtureRequest) -> Iterator[Storage]:
    """An empty database of this test's own: a throwaway one on PostgreSQL; on TimescaleDB the
    session's server emptied (`fresh_timescale`: a private server would cost ~3 s to start)."""
    with ExitStack() as stack:
        if request.param == "postgres":
            url = stack.enter_context(throwaway_database())
        else:
            url = request.getfixturevalue("fresh_timescale")
        database = Storage(request.param, url)
        stack.callback(database.release)
        yield database


@pytest.fixture
def db(services: None) -> Iterator[psycopg.Connection]:
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as conn:
        conn.execute("TRUNCATE ohlcv_1min, symbols, events, indicator_values, alerts")
        yield conn


@pytest.fixture
def settings(services: None) -> Settings:
    s = base_settings()
    create_topics(s)
    return s


@pytest.fixture
def recorder() -> Iterator[type[ChannelRecorder]]:
    made: list[ChannelRecorder] = []

    class Tracked(ChannelRecorder):
        def __init__(self, url: str, pattern: str) -> None:
            super().__init__(url, pattern)
            made.append(self)

    yield Tracked
    for r in made:
        r._stopped.set()
