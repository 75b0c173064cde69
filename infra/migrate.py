"""Versioned SQL migrations: plain reviewable files, each applied atomically with its bookkeeping row.

Files are `NNNN_name.up.sql` / `NNNN_name.down.sql` in `infra/migrations`. Each runs in its own
transaction together with its row in `schema_migrations`, so a failing file leaves the database
exactly as it was; re-running is a no-op. A file whose first line is `-- migrate: no-transaction`
runs statement by statement instead, each committed on its own, for what PostgreSQL refuses in a
transaction (CREATE INDEX CONCURRENTLY: building an index on a live table without blocking its
writers). Its statements are separated by lines `-- statement`, or `-- statement when <query>`
to run the next one only when that query returns true (the database's kind, say); the bookkeeping
row follows the last one. Such a file must be safe to re-run from the start: a failure leaves the
statements before it done, and says which one failed. A Postgres advisory lock keeps two processes (two test
runs, two deploys) from migrating the same database at once.

    python -m infra.migrate [up] [--to N]      apply pending migrations (up to N), then the TimescaleDB
                                               policies of infra/policies.py (a no-op without TimescaleDB)
    python -m infra.migrate down --to N        revert every migration above N (0 = all)
    python -m infra.migrate status             list applied and pending migrations
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from pydantic import ValidationError

from infra.databases import DatabaseUnreachable, connect, describe
from infra.policies import PolicyError, PolicySettings
from infra.policies import apply as apply_policies

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
LOCK_KEY = 0x7469636B_6D696772  # "tick" "migr": constant so every process contends for the same lock
NO_TRANSACTION = "-- migrate: no-transaction"
_STATEMENT = re.compile(r"^-- statement(?: when (?P<when>.+))?$", re.MULTILINE)
_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.(?P<direction>up|down)\.sql$")

Log = Callable[[str], None]


class MigrationError(RuntimeError):
    """A migration could not be found, applied or reverted; the database is left consistent."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: Path
    down: Path | None

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in `directory`, by version. A stray or duplicate `.sql` file is an error, not skipped."""
    ups: dict[int, tuple[str, Path]] = {}
    downs: dict[int, tuple[str, Path]] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path}: name must be NNNN_name.up.sql or NNNN_name.down.sql")
        version, name = int(match["version"]), match["name"]
        side = ups if match["direction"] == "up" else downs
        if version in side:
            raise MigrationError(f"{path}: version {version:04d} is also {side[version][1].name}")
        side[version] = (name, path)
    for version, (name, path) in downs.items():
        if version not in ups:
            raise MigrationError(f"{path}: no matching up file")
        if ups[version][0] != name:
            raise MigrationError(f"{path}: name differs from {ups[version][1].name}")
    return [
        Migration(version, name, path, downs[version][1] if version in downs else None)
        for version, (name, path) in sorted(ups.items())
    ]


@contextmanager
def _locked(database_url: str, log: Log) -> Iterator[psycopg.Connection]:
    """An autocommit connection holding the migration lock, with `schema_migrations` in place."""
    with connect(database_url) as conn:
        # Polled, not a blocking pg_advisory_lock(): a session blocked in that statement holds a
        # snapshot, which CREATE INDEX CONCURRENTLY (0005) in the lock holder's session waits for: a deadlock.
        waited = 0.0
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:  # type: ignore[index]  # SELECT of a function always returns one row
            if waited == 0.0:
                log("waiting for another process that is migrating this database ...")
            pause = min(1.0, 0.05 + waited / 10)
            time.sleep(pause)
            waited += pause
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        conn.add_notice_handler(lambda diag: log(f"  notice: {diag.message_primary}"))  # e.g. plain table or hypertable
        yield conn  # the session-level lock goes with the connection


def applied(conn: psycopg.Connection) -> dict[int, str]:
    """Applied versions and their names, from `schema_migrations`."""
    return dict(conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall())


def _run(conn: psycopg.Connection, migration: Migration, script: Path, record: bool) -> None:
    """Run one file and its bookkeeping in one transaction; on error nothing of it stays."""
    text = script.read_bytes()
    if text.startswith(NO_TRANSACTION.encode()):
        _run_each(conn, migration, script, text.decode(), record)
        return
    try:
        with conn.transaction():
            if text.strip():
                conn.execute(text)
            _record(conn, migration, record)
    except psycopg.Error as exc:
        raise MigrationError(f"{script.name} failed and was rolled back: {str(exc).strip()}") from exc


def _record(conn: psycopg.Connection, migration: Migration, record: bool) -> None:
    if record:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (migration.version, migration.name))
    else:
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (migration.version,))


def statements(text: str) -> list[tuple[str | None, str]]:
    """A no-transaction file's statements, each with its `when` query (None: always)."""
    parts = _STATEMENT.split(text)
    # split() yields: the header, then (when, body) pairs
    found = [(when.strip() if when else None, body.strip()) for when, body in zip(parts[1::2], parts[2::2], strict=True)]
    if not found or any(not body for _, body in found):
        raise MigrationError("a no-transaction migration needs `-- statement` lines, each followed by one statement")
    return found


def _run_each(conn: psycopg.Connection, migration: Migration, script: Path, text: str, record: bool) -> None:
    """A no-transaction file: each statement committed on its own (the connection is autocommit)."""
    steps = statements(text)
    for n, (when, body) in enumerate(steps, 1):
        try:
            if when is not None:
                row = conn.execute(when).fetchone()
                if row is None or not isinstance(row[0], bool):
                    raise MigrationError(f"{script.name} statement {n}: `when {when}` must return one boolean")
                if not row[0]:
                    continue
            conn.execute(body)
        except psycopg.Error as exc:
            raise MigrationError(
                f"{script.name} statement {n} of {len(steps)} failed ({str(exc).strip()}); the statements before it"
                " stay done, and the file is written to be run again from the start"
            ) from exc
    try:
        with conn.transaction():
            _record(conn, migration, record)
    except psycopg.Error as exc:
        raise MigrationError(f"{script.name}: recording it failed: {str(exc).strip()}") from exc


def up(database_url: str, *, to: int | None = None, directory: Path = MIGRATIONS_DIR, log: Log = print) -> list[Migration]:
    """Apply every pending migration (up to version `to`) in order. Returns those applied."""
    migrations = discover(directory)
    with _locked(database_url, log) as conn:
        done = applied(conn)
        unknown = sorted(set(done) - {m.version for m in migrations})
        if unknown:
            log(f"warning: {describe(database_url)} has migrations this checkout lacks: {unknown}")
        pending = [m for m in migrations if m.version not in done and (to is None or m.version <= to)]
        if not pending:
            log(f"migrate {describe(database_url)}: up to date (at {max(done, default=0):04d})")
        for migration in pending:
            log(f"migrate {describe(database_url)}: applying {migration.label}")
            _run(conn, migration, migration.up, record=True)
        return pending


def down(database_url: str, *, to: int, directory: Path = MIGRATIONS_DIR, log: Log = print) -> list[Migration]:
    """Revert every applied migration above version `to`, newest first. Returns those reverted."""
    by_version = {m.version: m for m in discover(directory)}
    with _locked(database_url, log) as conn:
        targets = sorted((v for v in applied(conn) if v > to), reverse=True)
        missing = [v for v in targets if v not in by_version or by_version[v].down is None]
        if missing:
            raise MigrationError(f"no down file for applied version(s) {missing}; nothing reverted")
        if not targets:
            log(f"migrate {describe(database_url)}: nothing above {to:04d} to revert")
        for version in targets:
            migration = by_version[version]
            log(f"migrate {describe(database_url)}: reverting {migration.label}")
            assert migration.down is not None
            _run(conn, migration, migration.down, record=False)
        return [by_version[v] for v in targets]


def status(database_url: str, *, directory: Path = MIGRATIONS_DIR, log: Log = print) -> None:
    """Print each known migration as applied or pending."""
    with _locked(database_url, log) as conn:
        done = applied(conn)
    for migration in discover(directory):
        log(f"{migration.label}: {'applied' if migration.version in done else 'pending'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.migrate",
        description="Apply or revert the versioned SQL migrations.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", choices=["up", "down", "status"], default="up")
    parser.add_argument("--to", type=int, help="target version (up: apply up to it; down: revert above it)")
    parser.add_argument("--database-url", help="default: DATABASE_URL from the settings")
    parser.add_argument("--migrations-dir", type=Path, default=MIGRATIONS_DIR)
    args = parser.parse_args(argv)
    if args.command == "down" and args.to is None:
        parser.error("down needs --to N (revert every migration above N; 0 reverts all)")
    try:
        if args.database_url is None:
            from flows.settings import Settings  # only when needed: a given URL must not depend on other env vars

            args.database_url = Settings().database_url
        if args.command == "up":
            up(args.database_url, to=args.to, directory=args.migrations_dir)
            apply_policies(args.database_url, PolicySettings())  # TimescaleDB policies follow the schema
        elif args.command == "down":
            down(args.database_url, to=args.to, directory=args.migrations_dir)
        else:
            status(args.database_url, directory=args.migrations_dir)
    except (MigrationError, PolicyError, DatabaseUnreachable, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
