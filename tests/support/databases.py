"""The two databases the storage tests run on: plain PostgreSQL and the embedded TimescaleDB.

`tests/conftest.py` parametrizes its `storage` and `empty_database` fixtures with the ids
`postgres` and `timescaledb`; what a test needs to know about the one it got is here.

The embedded TimescaleDB (infra/embedded_timescale.py) serves ONE session at a time, and one
database: a test there must close its own connection before anything else connects (a BarStore,
the analyst API, a flow's sink), or that connection waits in the server's queue and is refused
after 30 s. `Storage.release()` does that, on both databases alike, so a test reads the same on
each. A TimescaleDB variant skips, saying why, only when the server cannot start here; with the
environment variable CI set (`.ci/run`) that is a failure instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import psycopg

from infra.embedded_timescale import EmbeddedTimescale, TimescaleUnavailable
from schemas.bars import Bar

KINDS = ("postgres", "timescaledb")
TABLES = "ohlcv_1min, symbols, events, indicator_values, alerts"


def unavailable(exc: TimescaleUnavailable) -> NoReturn:
    """Skip the TimescaleDB variant with the reason, or fail under CI, where it must run."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"the embedded TimescaleDB must run under CI: {exc}", pytrace=False)
    pytest.skip(f"the embedded TimescaleDB cannot start here: {exc}")


def start_timescale(**options: Any) -> EmbeddedTimescale:
    """A private embedded TimescaleDB (a free port, in memory), started; skips or fails as above."""
    server = EmbeddedTimescale(port=0, **options)
    try:
        server.start()
    except TimescaleUnavailable as exc:
        unavailable(exc)
    return server


# Everything the migrations (or a test) made in the one database, leaving the extension (PGlite cannot
# create it again in the same process: "has already been loaded with another version"). Continuous
# aggregates first (they hold their hypertables), then what is in `public` and not the extension's.
_EMPTY = """
DO $$
DECLARE
    r RECORD;
BEGIN
    FOR r IN SELECT view_schema, view_name FROM timescaledb_information.continuous_aggregates LOOP
        EXECUTE format('DROP MATERIALIZED VIEW %I.%I CASCADE', r.view_schema, r.view_name);
    END LOOP;
    DROP SCHEMA IF EXISTS rollups CASCADE;
    FOR r IN SELECT c.oid::regclass AS name, c.relkind FROM pg_class c
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e') LOOP
        EXECUTE format('DROP %s IF EXISTS %s CASCADE',
                       CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, r.name);
    END LOOP;
    -- sequences of their own (0008's revisions); a column's went with its table above
    FOR r IN SELECT c.oid::regclass AS name FROM pg_class c
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e') LOOP
        EXECUTE format('DROP SEQUENCE IF EXISTS %s CASCADE', r.name);
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure AS name FROM pg_proc p
             WHERE p.pronamespace = 'public'::regnamespace
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') LOOP
        EXECUTE format('DROP ROUTINE IF EXISTS %s CASCADE', r.name);
    END LOOP;
END
$$
"""


def empty_timescale(url: str) -> None:
    """Make the embedded server's one database as a fresh server's: the extension and nothing else."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_EMPTY)
        left = conn.execute(
            "SELECT count(*) FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
            " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')"
        ).fetchone()
        hypertables = conn.execute("SELECT count(*) FROM timescaledb_information.hypertables").fetchone()
    assert left == (0,) and hypertables == (0,), (left, hypertables)


def migrate_timescale(url: str) -> None:
    """All migrations, then the TimescaleDB policies, as `make migrate` does."""
    from infra.migrate import up
    from infra.policies import PolicySettings, apply

    up(url, log=lambda *_: None)
    apply(url, PolicySettings(), log=lambda *_: None)


class Storage:
    """One of the two databases, migrated, and this test's own session on it (opened when first used)."""

    def __init__(self, kind: str, url: str) -> None:
        assert kind in KINDS
        self.kind, self.url = kind, url
        self._conn: psycopg.Connection | None = None

    @property
    def timescaledb(self) -> bool:
        return self.kind == "timescaledb"

    @property
    def conn(self) -> psycopg.Connection:
        """The test's session (autocommit), reopened after `release()`."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True)
        return self._conn

    def execute(self, query: Any, params: Any = None) -> psycopg.Cursor:
        return self.conn.execute(query, params)

    def release(self) -> None:
        """Close the test's session, so that the next client is served (the one-session server)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def upsert(self, bars: Sequence[Bar]) -> float:
        """Write `bars` as the sink does (BarStore, a session of its own, after `release()`); returns the
        seconds until its transaction had committed."""
        from connectors.postgres.bars import BarStore

        self.release()
        store = BarStore(self.url)
        try:
            began = time.monotonic()
            store.upsert(bars)
            return time.monotonic() - began
        finally:
            store.close()

    def clear(self) -> None:
        """Empty the bar and detection tables (and, through the triggers, latest_bars and the rollup)."""
        self.execute(f"TRUNCATE {TABLES}")

    def __repr__(self) -> str:
        return f"Storage({self.kind})"
