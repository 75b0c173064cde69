"""Create the application's databases if missing, so a fresh server is usable after `make services`.

`python -m infra.databases URL [URL ...]` connects to each URL's server through its `postgres`
maintenance database and creates the URL's database when it does not exist.
"""

from __future__ import annotations

import argparse
import sys

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from connectors.unavailable import ServiceUnavailable


class DatabaseUnreachable(ServiceUnavailable):
    """The server cannot be reached or refuses us; the message says how to fix it."""

    service = "PostgreSQL"


def describe(url: str) -> str:
    """`user@host:port/dbname` without the password, for messages and logs."""
    info = conninfo_to_dict(url)
    user = info.get("user") or "(default user)"
    host = info.get("host") or "(local socket)"
    return f"{user}@{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def public_url(url: str) -> str:
    """`url` as a `postgresql://` URL without its password (safe to print in a command line)."""
    info = conninfo_to_dict(url)
    user = f"{info['user']}@" if info.get("user") else ""
    host = str(info.get("host") or "")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{host}{port}/{info.get('dbname') or ''}"


def connect(url: str, *, autocommit: bool = True, timeout_s: int = 5) -> psycopg.Connection:
    """Connect or raise DatabaseUnreachable with the fix in the message."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=timeout_s)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnreachable(
            f"PostgreSQL {describe(url)} is unreachable or refused the connection ({reason}). "
            "Start it with `make services`, or set DATABASE_URL (credentials in the URL or PGPASSWORD)."
        ) from exc


def ensure_database(url: str) -> bool:
    """Create the database `url` names if it does not exist. True when it was created."""
    name = conninfo_to_dict(url).get("dbname")
    if not name or name == "postgres":
        return False
    with connect(make_conninfo(url, dbname="postgres")) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
        except psycopg.errors.DuplicateDatabase:  # another process created it meanwhile
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.databases", description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="+", metavar="URL", help="PostgreSQL URL whose database must exist")
    args = parser.parse_args(argv)
    try:
        for url in dict.fromkeys(args.urls):  # de-duplicated, order kept
            created = ensure_database(url)
            print(f"database {describe(url)}: {'created' if created else 'exists'}")
    except DatabaseUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
