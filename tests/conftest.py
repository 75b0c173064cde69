"""Shared fixtures: real Kafka (Tansu or any broker), real PostgreSQL, real Redis.

`make test` starts and migrates all three; run alone, these fixtures fail with a message
saying what is missing rather than skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from confluent_kafka.admin import AdminClient

from flows.settings import Settings
from tests.support.services import TEST_DATABASE_URL, ChannelRecorder, base_settings, create_topics


@pytest.fixture(scope="session")
def services() -> None:
    s = Settings()
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap_servers})
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


@pytest.fixture
def database_url() -> Iterator[str]:
    """A throwaway database, created empty and dropped after the test (migration tests)."""
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
