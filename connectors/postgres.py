"""PostgreSQL for the flow: a connection that rides out server restarts, and the bar store.

`Database` checks at start-up that the server answers and is migrated (failing fast with the
fix), then runs each unit of work in a transaction, reconnecting and retrying with backoff
while the server is down: a writer blocks rather than drops what it accepted.

`BarStore` writes bars into `ohlcv_1min`: COPY into a staging table, then one upsert.
Idempotent: writing the same bars again changes nothing, and an older revision never
overwrites a newer one, so replays and recovery re-emissions are harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import psycopg

from connectors.retry import with_backoff
from schemas.bars import Bar

log = logging.getLogger(__name__)
T = TypeVar("T")

COLUMNS = "symbol, timestamp, open, high, low, close, volume, vwap, trades, revision"

# Staging takes the bar as it is on the wire (epoch ms, decimal text), so the COPY text is one
# f-string per bar instead of per-value Python adaptation; SQL does the conversions.
_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS bar_stage (
  symbol text, ts_ms bigint, open numeric, high numeric, low numeric, close numeric,
  volume bigint, vwap numeric, trades integer, revision integer
) ON COMMIT DELETE ROWS
"""
_NEW_SYMBOLS = """
INSERT INTO symbols (symbol) SELECT DISTINCT symbol FROM bar_stage ON CONFLICT DO NOTHING
"""
_UPSERT = f"""
INSERT INTO ohlcv_1min ({COLUMNS})
SELECT DISTINCT ON (symbol, ts_ms)
  symbol, to_timestamp(ts_ms / 1000.0), open, high, low, close, volume, vwap, trades, revision
FROM bar_stage
ORDER BY symbol, ts_ms, revision DESC
ON CONFLICT (symbol, timestamp) DO UPDATE SET
  open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
  volume = excluded.volume, vwap = excluded.vwap, trades = excluded.trades,
  revision = excluded.revision
WHERE ohlcv_1min.revision <= excluded.revision
  AND (ohlcv_1min.open, ohlcv_1min.high, ohlcv_1min.low, ohlcv_1min.close, ohlcv_1min.volume,
       ohlcv_1min.vwap, ohlcv_1min.trades, ohlcv_1min.revision)
      IS DISTINCT FROM
      (excluded.open, excluded.high, excluded.low, excluded.close, excluded.volume,
       excluded.vwap, excluded.trades, excluded.revision)
"""


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL cannot be reached or is not migrated: say which and how to fix it."""


def connect(url: str, tables: Sequence[str] = ("ohlcv_1min",), timeout_s: int = 5) -> psycopg.Connection:
    """Connect and check `tables` exist, failing fast with a message that says what to do."""
    try:
        conn = psycopg.connect(url, connect_timeout=timeout_s, autocommit=False)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"PostgreSQL at {_redact(url)} is unreachable ({str(exc).strip()}); start it with "
            "`make services` or set DATABASE_URL"
        ) from exc
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

    def __init__(self, url: str, *, tables: Sequence[str] = ("ohlcv_1min",), max_backoff_s: float = 30.0) -> None:
        self._url = url
        self._max_backoff_s = max_backoff_s
        self._conn: psycopg.Connection | None = connect(url, tables)

    def run(self, work: Callable[[psycopg.Cursor], T], what: str) -> T:
        """`work(cursor)` in one transaction; blocks and retries while the server is down."""

        def attempt() -> T:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._url, connect_timeout=5, autocommit=False)
            with self._conn.transaction(), self._conn.cursor() as cur:
                return work(cur)

        return with_backoff(
            attempt,
            retry_on=(psycopg.OperationalError, psycopg.InterfaceError),
            what=what,
            log=log,
            max_backoff_s=self._max_backoff_s,
            on_retry=self._drop_connection,
        )

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error as exc:
                log.debug("closing a broken connection: %s", exc)
            self._conn = None

    def close(self) -> None:
        self._drop_connection()


class BarStore:
    """Writes final bars (and revisions) to `ohlcv_1min`, filling `symbols` as it goes."""

    def __init__(self, url: str, *, max_backoff_s: float = 30.0) -> None:
        self._db = Database(url, max_backoff_s=max_backoff_s)

    def upsert(self, bars: Sequence[Bar]) -> None:
        """Write `bars` in one transaction; blocks and retries while the server is down."""
        if bars:
            self._db.run(lambda cur: _upsert(cur, bars), f"writing {len(bars)} bars to PostgreSQL")

    def close(self) -> None:
        self._db.close()


def _upsert(cur: psycopg.Cursor, bars: Sequence[Bar]) -> None:
    cur.execute(_STAGE)
    with cur.copy("COPY bar_stage FROM STDIN") as copy:
        copy.write("".join(map(_copy_line, bars)))
    cur.execute(_NEW_SYMBOLS)
    cur.execute(_UPSERT)


def _copy_line(b: Bar) -> str:
    """One bar as a COPY text line (symbols are validated upstream: no tabs, no backslashes)."""
    return (
        f"{b.symbol}\t{b.timestamp}\t{_decimal(b.open)}\t{_decimal(b.high)}\t{_decimal(b.low)}\t"
        f"{_decimal(b.close)}\t{b.volume}\t{_decimal(b.vwap)}\t{b.trades}\t{b.revision}\n"
    )


def _decimal(value: float | None) -> str:
    return "\\N" if value is None else repr(value)


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())
