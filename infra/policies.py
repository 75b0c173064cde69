"""TimescaleDB chunk intervals, compression and retention, from settings; a no-op on plain PostgreSQL.

    python -m infra.policies [--database-url URL] [--dry-run]

Also run by `python -m infra.migrate` after it applies migrations (so by `make migrate`, `make demo`,
`make test`). Idempotent: it reads what is in place and changes only what differs from the settings.

Chunk intervals (TimescaleDB's rule of thumb: the chunks being written, with their indexes, should fit
in about a quarter of memory):
  * `ohlcv_1min`, `indicator_values`: 1 day. 4,000 symbols x 390 regular-session minutes is 1.6M rows,
    about 0.3 GB with indexes (10-12k symbols trading 24 h: ~17M rows, ~3 GB): one chunk per trading
    day, and a compression or retention step drops or compresses whole days.
  * `events`, `alerts`: 7 days. Far fewer rows (a fraction of bars fire anything); day chunks would
    be tiny and many.
A new interval applies to chunks created afterwards. Where 0002's continuous aggregates remain
(TimescaleDB before 2.18, or a database not yet at 0004) they keep TimescaleDB's default for their
own hypertables (ten times the raw table's interval); 0004's rollup (`rollups.bars_5min`) is a
plain table.

Compression (the old, still supported `timescaledb.compress` API; TimescaleDB >= 2.11 is required
because the sink upserts revised bars, and INSERT .. ON CONFLICT DO UPDATE into compressed chunks
arrived in 2.11): segment by symbol (plus timeframe for indicator values), order by time descending
(plus id, so every primary-key column is a segment-by or order-by column, as TimescaleDB recommends
for unique checks on compressed data). Chunks older than `TIMESCALE_COMPRESS_AFTER` are compressed
by a background policy; late corrections arrive within minutes (ALLOWED_LATENESS_S), so they hit
uncompressed chunks except in replays of old days, which still work (decompressing the segments
they touch), and reach the rollup and latest_bars through the same triggers. Segmenting by symbol
is also what makes a closed day local on disk: one symbol-day is a few compressed batches found by
the compressed chunk's (symbol, min/max time) index, not ~390 heap pages in arrival order.

Retention drops whole chunks older than `TIMESCALE_RETENTION_BARS` (`ohlcv_1min`) or
`TIMESCALE_RETENTION_DETECTION` (events, indicator values, alerts): the raw tables only. Off by
default: these are the users' data. What is derived from the raw minutes stays: dropping raw
minutes must not delete aggregated history. How that holds depends on what derives it:
  * 0004's rollup (TimescaleDB 2.18+, as on plain PostgreSQL): dropping a chunk fires no trigger,
    so `rollups.bars_5min` (hence ohlcv_5min/15min/1hour/1day) and `latest_bars` keep the buckets
    and latest bars of dropped minutes; tests/integration/test_policies.py runs both jobs and
    checks it. The rollup's sums are maintained by deltas, so a write of a minute that was
    already dropped counts as a new minute on top of its kept bucket: retention must exceed the
    longest reach of a revision (ALLOWED_LATENESS_S is at most one day), and this command refuses
    one day or less. Replaying a day older than the retention would add to its kept buckets twice.
  * 0002's continuous aggregates (TimescaleDB before 2.18): retention must exceed every refresh
    window over `ohlcv_1min` (0002: up to 7 days), or a refresh would see the dropped minutes as
    deleted and remove aggregated buckets; this command refuses such a setting.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

import psycopg
from psycopg import sql
from pydantic import BeforeValidator, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.settings import DAY_S
from infra.databases import DatabaseUnreachable, connect, describe

_INTERVAL = re.compile(r"^\s*(\d+)\s*(minute|hour|day|week|month|year)s?\s*$", re.IGNORECASE)
OFF = ("", "off", "none", "0")
MIN_TIMESCALEDB = (2, 11)
REVISION_REACH = timedelta(seconds=DAY_S)  # the bound on ALLOWED_LATENESS_S (flows/settings.py)


def _interval(value: object) -> str:
    """'7 days', '1 day', '12 hours', '3 months' ... as PostgreSQL interval text; nothing else."""
    match = _INTERVAL.match(str(value))
    if not match or int(match[1]) == 0:
        raise ValueError(f"{value!r} is not an interval like '1 day', '12 hours', '7 days', '3 months'")
    count = int(match[1])
    return f"{count} {match[2].lower()}{'' if count == 1 else 's'}"


_UNIT = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400, "month": 30 * 86400, "year": 365 * 86400}


def duration(interval: str | None) -> timedelta | None:
    """A setting's interval as psycopg reads the same PostgreSQL interval (a month is 30 days, a year 365),
    to compare with what the catalog holds."""
    if interval is None:
        return None
    count, unit = interval.split()
    return timedelta(seconds=int(count) * _UNIT[unit.rstrip("s")])


def _optional_interval(value: object) -> str | None:
    return None if value is None or str(value).strip().lower() in OFF else _interval(value)


Interval = Annotated[str, BeforeValidator(_interval)]
OptionalInterval = Annotated[str | None, BeforeValidator(_optional_interval)]


class PolicySettings(BaseSettings):
    """TIMESCALE_* environment variables (README: TimescaleDB policies)."""

    model_config = SettingsConfigDict(env_prefix="TIMESCALE_", case_sensitive=False, extra="ignore")

    chunk_interval_bars: Interval = "1 day"  # ohlcv_1min, indicator_values
    chunk_interval_events: Interval = "7 days"  # events, alerts
    compress_after: OptionalInterval = "7 days"  # "off" disables compression policies
    retention_bars: OptionalInterval = None  # ohlcv_1min; off by default
    retention_detection: OptionalInterval = None  # events, indicator_values, alerts; off by default


@dataclass(frozen=True)
class Table:
    name: str
    chunk_setting: str  # PolicySettings field with its chunk interval
    retention_setting: str  # PolicySettings field with its retention
    segment_by: str
    order_by: str


TABLES = (
    Table("ohlcv_1min", "chunk_interval_bars", "retention_bars", "symbol", "timestamp DESC"),
    Table("indicator_values", "chunk_interval_bars", "retention_detection", "symbol, timeframe", "timestamp DESC"),
    Table("events", "chunk_interval_events", "retention_detection", "symbol", "timestamp DESC, id"),
    Table("alerts", "chunk_interval_events", "retention_detection", "symbol", "timestamp DESC, id"),
)


class PolicyError(RuntimeError):
    """The settings cannot be applied as they are; the message says why and what to change."""


def plan(settings: PolicySettings, table: Table, state: dict[str, object]) -> list[sql.Composed]:
    """Statements that bring `table` from `state` (what `_state` read) to `settings`, in order.

    A pure function of its inputs, so what would run can be shown (`--dry-run`) and tested without
    TimescaleDB. `state` keys: chunk_interval, compress_after, drop_after (timedelta, or None for no
    policy) and compression_enabled (bool).
    """
    name = sql.Identifier(table.name)
    regclass = sql.Literal(table.name)
    statements: list[sql.Composed] = []
    chunk = getattr(settings, table.chunk_setting)
    if state.get("chunk_interval") != duration(chunk):
        statements.append(sql.SQL("SELECT set_chunk_time_interval({}, {}::interval)").format(regclass, sql.Literal(chunk)))
    if settings.compress_after is not None and not state.get("compression_enabled"):
        statements.append(
            sql.SQL(
                "ALTER TABLE {} SET (timescaledb.compress, timescaledb.compress_segmentby = {},"
                " timescaledb.compress_orderby = {})"
            ).format(name, sql.Literal(table.segment_by), sql.Literal(table.order_by))
        )
    if state.get("compress_after") != duration(settings.compress_after):
        if state.get("compress_after") is not None:
            statements.append(sql.SQL("SELECT remove_compression_policy({}, if_exists => true)").format(regclass))
        if settings.compress_after is not None:
            statements.append(
                sql.SQL("SELECT add_compression_policy({}, compress_after => {}::interval)").format(
                    regclass, sql.Literal(settings.compress_after)
                )
            )
    retention = getattr(settings, table.retention_setting)
    if state.get("drop_after") != duration(retention):
        if state.get("drop_after") is not None:
            statements.append(sql.SQL("SELECT remove_retention_policy({}, if_exists => true)").format(regclass))
        if retention is not None:
            statements.append(
                sql.SQL("SELECT add_retention_policy({}, drop_after => {}::interval)").format(regclass, sql.Literal(retention))
            )
    return statements


def timescaledb_version(conn: psycopg.Connection) -> tuple[int, ...] | None:
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return None if row is None else tuple(int(p) for p in re.findall(r"\d+", row[0])[:3])


def _state(conn: psycopg.Connection, table: str) -> dict[str, object] | None:
    """What TimescaleDB has for `table` now; None when it is not a hypertable."""
    row = conn.execute(
        "SELECT h.compression_enabled, d.time_interval FROM timescaledb_information.hypertables h"
        " JOIN timescaledb_information.dimensions d USING (hypertable_schema, hypertable_name)"
        " WHERE h.hypertable_schema = current_schema() AND h.hypertable_name = %s AND d.dimension_number = 1",
        (table,),
    ).fetchone()
    if row is None:
        return None
    policies: dict[str, object] = dict(
        conn.execute(
            "SELECT proc_name, coalesce(config->>'compress_after', config->>'drop_after')::interval"
            " FROM timescaledb_information.jobs"
            " WHERE hypertable_schema = current_schema() AND hypertable_name = %s"
            " AND proc_name IN ('policy_compression', 'policy_retention')",
            (table,),
        ).fetchall()
    )
    return {
        "compression_enabled": row[0],
        "chunk_interval": row[1],
        "compress_after": policies.get("policy_compression"),
        "drop_after": policies.get("policy_retention"),
    }


def _check_retention(conn: psycopg.Connection, settings: PolicySettings) -> None:
    """Retention on ohlcv_1min must not undo what is derived from it: beyond every continuous-aggregate
    refresh window over it (0002's aggregates), and beyond the reach of a revision (0004's rollup)."""
    if settings.retention_bars is None:
        return
    widest = conn.execute(
        "SELECT max((j.config->>'start_offset')::interval)::text,"
        " bool_or(%s::interval <= (j.config->>'start_offset')::interval)"
        " FROM timescaledb_information.jobs j"
        " JOIN timescaledb_information.continuous_aggregates c"  # the job names the view (2.13+) or its hypertable
        "   ON (j.hypertable_schema, j.hypertable_name) IN ((c.view_schema, c.view_name),"
        "       (c.materialization_hypertable_schema, c.materialization_hypertable_name))"
        " WHERE j.proc_name = 'policy_refresh_continuous_aggregate' AND c.hypertable_name = 'ohlcv_1min'",
        (settings.retention_bars,),
    ).fetchone()
    if widest and widest[1]:
        raise PolicyError(
            f"TIMESCALE_RETENTION_BARS={settings.retention_bars} does not exceed the widest continuous-aggregate refresh"
            f" window over ohlcv_1min ({widest[0]}): a refresh would delete aggregated buckets; set it longer"
        )
    rollup = conn.execute("SELECT to_regclass('rollups.bars_5min') IS NOT NULL").fetchone()
    reach = duration(settings.retention_bars)
    if rollup == (True,) and reach is not None and reach <= REVISION_REACH:
        raise PolicyError(
            f"TIMESCALE_RETENTION_BARS={settings.retention_bars} does not exceed how far back a revision can reach"
            " (ALLOWED_LATENESS_S, at most 1 day): a revision of a dropped minute would be counted twice in the"
            " 5-minute rollup; set it longer"
        )


def apply(database_url: str, settings: PolicySettings, *, dry_run: bool = False, log: Callable[[str], None] = print) -> list[str]:
    """Bring every hypertable's policies to `settings`, in one transaction. Returns the SQL run (or,
    with `dry_run`, that would run)."""
    done: list[str] = []
    with connect(database_url, autocommit=False) as conn:
        version = timescaledb_version(conn)
        if version is None:
            log(f"policies {describe(database_url)}: TimescaleDB absent, plain PostgreSQL: nothing to apply")
            return done
        if settings.compress_after is not None and version < MIN_TIMESCALEDB:
            raise PolicyError(
                f"TimescaleDB {'.'.join(map(str, version))} cannot upsert revised bars into compressed chunks (needs 2.11+);"
                " upgrade it or set TIMESCALE_COMPRESS_AFTER=off"
            )
        _check_retention(conn, settings)
        for table in TABLES:
            state = _state(conn, table.name)
            if state is None:
                log(f"policies: {table.name} is not a hypertable, skipped")
                continue
            for statement in plan(settings, table, state):
                text = statement.as_string(conn)
                done.append(text)
                log(f"policies: {text}")
                if not dry_run:
                    try:
                        conn.execute(statement)
                    except psycopg.Error as exc:
                        conn.rollback()
                        raise PolicyError(f"{text} failed, no policy changed: {str(exc).strip()}") from exc
        if dry_run:
            conn.rollback()
        else:
            conn.commit()
    if not done:
        log(f"policies {describe(database_url)}: in place")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.policies", description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: DATABASE_URL from the settings")
    parser.add_argument("--dry-run", action="store_true", help="print the statements, change nothing")
    args = parser.parse_args(argv)
    try:
        if args.database_url is None:
            from flows.settings import Settings

            args.database_url = Settings().database_url
        apply(args.database_url, PolicySettings(), dry_run=args.dry_run)
    except (PolicyError, DatabaseUnreachable, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
