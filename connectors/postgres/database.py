"""PostgreSQL for the flows: a connection that rides out server restarts.

`Database` checks at start-up that the server answers and is migrated (failing fast with the
fix), then runs each unit of work in a transaction, reconnecting and retrying with backoff
while the server is down or refuses for reasons of its own (shutting down, out of connections,
disk full, a lost lock, a missing grant): a writer blocks rather than drops what it accepted.
A refusal of the data itself (a value out of its column's range, a constraint) is not retried:
`run_each` splits the batch until it finds the records refused, hands them back with the
reason (the sinks dead-letter them) and writes the rest.

Its writers: `bars.BarStore` (final bars), `events.EventStore` (detection records).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import psycopg

from connectors.backoff import with_backoff, within
from connectors.monitoring.metrics import RECONNECTS
from connectors.unavailable import ServiceUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Refusals of the data: retrying the same rows cannot succeed (SQLSTATE classes 22 and 23).
DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError)


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL cannot be reached or is not migrated: say which and how to fix it."""

    service = "PostgreSQL"


def connect(url: str, tables: Sequence[str] = ("ohlcv_1min",), timeout_s: int = 5, wait_s: float = 0.0) -> psycopg.Connection:
    """Connect and check `tables` exist, failing fast with a message that says what to do.

    A server that does not answer is waited for, with backoff and a warning per try, for `wait_s`
    (a flow whose sink starts during a PostgreSQL restart rides it out, as its writes do), then
    refused with where and how to fix it. Missing tables are refused at once: waiting cannot fix them.
    """
    conn = within(
        lambda: psycopg.connect(url, connect_timeout=timeout_s, autocommit=False),
        retry_on=(psycopg.OperationalError,),
        wait_s=wait_s,
        refused=lambda exc: DatabaseUnavailable(
            f"PostgreSQL at {_redact(url)} is unreachable ({str(exc).strip()}); start it with `make services` or set DATABASE_URL"
        ),
        what=f"PostgreSQL at {_redact(url)}",
        log=log,
        dependency="postgresql",
    )
    with conn.cursor() as cur:
        cur.execute("SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NULL", (list(tables),))
        missing = [row[0] for row in cur.fetchall()]
    conn.rollback()
    if missing:
        conn.close()
        raise DatabaseUnavailable(f"table {', '.join(missing)} is missing in {_redact(url)}; run `make migrate`")
    return conn


class Database:
    """One connection, checked at start, used one transaction at a time, re-opened when it breaks."""

    def __init__(
        self, url: str, *, tables: Sequence[str] = ("ohlcv_1min",), max_backoff_s: float = 30.0, start_wait_s: float = 60.0
    ) -> None:
        self._url = url
        self._max_backoff_s = max_backoff_s
        self._conn: psycopg.Connection | None = connect(url, tables, wait_s=start_wait_s)

    def run(self, work: Callable[[psycopg.Cursor], T], what: str) -> T:
        """`work(cursor)` in one transaction; blocks and retries while the server is down."""

        def attempt() -> T:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._url, connect_timeout=5, autocommit=False)
            with self._conn.transaction(), self._conn.cursor() as cur:
                return work(cur)

        return with_backoff(
            attempt,
            retry_on=(psycopg.Error,),
            give_up_on=DATA_ERRORS,
            what=what,
            log=log,
            max_backoff_s=self._max_backoff_s,
            on_retry=self._reconnect,
            dependency="postgresql",
        )

    def run_each(
        self,
        items: Sequence[R],
        work: Callable[[psycopg.Cursor, Sequence[R]], None],
        what: str,
        rejected: Callable[[R, str], None],
    ) -> list[R]:
        """`work(cursor, items)` in one transaction; returns the items written.

        When the database refuses the batch for its data, the halves are tried on their own
        until each refused item is alone: it goes to `rejected` with the reason, every other
        item is written. (Only a failing batch pays for this.)
        """
        try:
            self.run(lambda cur: work(cur, items), what)
            return list(items)
        except DATA_ERRORS as exc:
            if len(items) == 1:
                rejected(items[0], refusal(exc))
                return []
            log.warning("%s: the database refused a value (%s); finding the record(s) it refuses", what, refusal(exc))
            mid = len(items) // 2
            return self.run_each(items[:mid], work, what, rejected) + self.run_each(items[mid:], work, what, rejected)

    def _reconnect(self) -> None:
        """After a failure: the next attempt opens a new connection (counted)."""
        RECONNECTS.labels("postgresql").inc()
        self._drop_connection()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error as exc:
                log.debug("closing a broken connection: %s", exc)
            self._conn = None

    def close(self) -> None:
        self._drop_connection()


def refusal(exc: psycopg.Error) -> str:
    """Why the database refused a record: SQLSTATE and its primary message (never the connection string)."""
    return f"PostgreSQL refused it: {exc.sqlstate} {exc.diag.message_primary or type(exc).__name__}"


def raise_refused(item: object, reason: str) -> None:
    """For callers with no use for refused records: a refusal is an error."""
    raise ValueError(f"{reason}: {item!r}"[:1000])


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())
