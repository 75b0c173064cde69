"""The SQL of users' watchlists and universes (migration 0008), for the gateway's REST and sessions.

Every statement is parameterised and scoped to one user: no function here reads or writes
another user's rows, so isolation between users does not depend on the caller's checks.
Writes run in one transaction each, under a per-user advisory lock, so the per-user bound
on the number of lists holds under concurrent requests (two PUTs of new names cannot both
pass the count). Revisions come from the sequence `watchlist_revisions` (only ever grows).

Symbols are validated by the caller (schemas/symbols.py, the grants); `unknown_symbols` says
which of them the pipeline has never seen (the `symbols` table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

# 0x77617463 = "watc": the advisory-lock class of watchlist writes (the key is the user's hash)
LOCK_CLASS = 0x77617463


@dataclass(frozen=True)
class Watchlist:
    name: str
    symbols: list[str]
    revision: int


@dataclass(frozen=True)
class Universe:
    symbols: list[str]
    revision: int  # 0: never set


class TooManyWatchlists(Exception):
    """The user already has the most lists allowed; the message says how many."""


async def _lock_user(conn: psycopg.AsyncConnection, user: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, user))


async def watchlists(conn: psycopg.AsyncConnection, user: str) -> list[Watchlist]:
    """The user's lists, by name."""
    cur = await conn.execute("SELECT name, symbols, revision FROM watchlists WHERE user_id = %s ORDER BY name", (user,))
    return [Watchlist(name, list(symbols), revision) for name, symbols, revision in await cur.fetchall()]


async def watchlist(conn: psycopg.AsyncConnection, user: str, name: str) -> Watchlist | None:
    cur = await conn.execute("SELECT symbols, revision FROM watchlists WHERE user_id = %s AND name = %s", (user, name))
    row = await cur.fetchone()
    return None if row is None else Watchlist(name, list(row[0]), row[1])


async def put_watchlist(
    conn: psycopg.AsyncConnection, user: str, name: str, symbols: Sequence[str], *, max_lists: int
) -> tuple[Watchlist, bool]:
    """Create or replace the list; (the list as stored, whether it was created). TooManyWatchlists."""
    async with conn.transaction():
        await _lock_user(conn, user)
        cur = await conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE name = %s) FROM watchlists WHERE user_id = %s", (name, user)
        )
        row = await cur.fetchone()
        assert row is not None  # an aggregate always returns a row
        count, exists = row
        if not exists and count >= max_lists:
            raise TooManyWatchlists(f"you already have {count} watchlists (at most {max_lists}); delete one first")
        cur = await conn.execute(
            "INSERT INTO watchlists (user_id, name, symbols, revision) VALUES (%s, %s, %s, nextval('watchlist_revisions'))"
            " ON CONFLICT (user_id, name) DO UPDATE"
            " SET symbols = EXCLUDED.symbols, revision = EXCLUDED.revision, updated_at = now()"
            " RETURNING revision",
            (user, name, list(symbols)),
        )
        stored = await cur.fetchone()
        assert stored is not None  # RETURNING of an upsert
    return Watchlist(name, list(symbols), stored[0]), not exists


async def delete_watchlist(conn: psycopg.AsyncConnection, user: str, name: str) -> int | None:
    """Delete the list; the revision of the deletion (a fresh one), or None if there was no such list."""
    async with conn.transaction():
        await _lock_user(conn, user)
        cur = await conn.execute(
            "DELETE FROM watchlists WHERE user_id = %s AND name = %s RETURNING nextval('watchlist_revisions')", (user, name)
        )
        row = await cur.fetchone()
    return None if row is None else row[0]


async def universe(conn: psycopg.AsyncConnection, user: str) -> Universe:
    cur = await conn.execute("SELECT symbols, revision FROM user_universes WHERE user_id = %s", (user,))
    row = await cur.fetchone()
    return Universe([], 0) if row is None else Universe(list(row[0]), row[1])


async def put_universe(conn: psycopg.AsyncConnection, user: str, symbols: Sequence[str]) -> Universe:
    cur = await conn.execute(
        "INSERT INTO user_universes (user_id, symbols, revision) VALUES (%s, %s, nextval('watchlist_revisions'))"
        " ON CONFLICT (user_id) DO UPDATE SET symbols = EXCLUDED.symbols, revision = EXCLUDED.revision, updated_at = now()"
        " RETURNING revision",
        (user, list(symbols)),
    )
    row = await cur.fetchone()
    assert row is not None  # RETURNING of an upsert
    return Universe(list(symbols), row[0])


async def unknown_symbols(conn: psycopg.AsyncConnection, symbols: Sequence[str]) -> list[str]:
    """Those of `symbols` the pipeline has never seen, in the order given."""
    if not symbols:
        return []
    cur = await conn.execute("SELECT symbol FROM symbols WHERE symbol = ANY(%s)", (list(symbols),))
    known = {r[0] for r in await cur.fetchall()}
    return [s for s in symbols if s not in known]
