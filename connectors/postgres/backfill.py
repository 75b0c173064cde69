"""Bars of a past day rebuilt from flat files, into `ohlcv_1min` beside what the live flow wrote.

The flat files are the record of the day, so a backfilled bar replaces the stored one when any of
its values differ (a bar the live flow missed trades of, while the bridge was down), with the
stored revision + 1: readers that keep the highest revision they have seen take the correction.
A bar whose values are the same is not written at all, whatever its revision (the live flow may
have reached the same values through revisions): running a backfill twice, or over a day the live
flow got complete, rewrites no row, so neither the rollup triggers of `0004_rollups` nor
`latest_bars` do any work, and every row keeps its revision.

The live flow's own rule (`bars.BarStore`) differs on purpose: there a revision is a newer
version of the same trades, and one counter orders them; here the day is over (the backfill
refuses a day the live flow can still revise) and the files win.

Also here, what the backfill needs to know of the database around the day: the continuous
aggregates that must be refreshed over it (TimescaleDB before 2.18 keeps 0002's; from 2.18 the
rollup triggers keep every timeframe current in the same transaction), and a retention policy
that would drop the day again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from connectors.postgres.bars import _NEW_SYMBOLS, _STAGE, COLUMNS, _copy_line
from connectors.postgres.database import Database, connect, raise_refused
from schemas.bars import Bar

VALUES = "open, high, low, close, volume, vwap, trades"
_MAX_REVISION = 2**31 - 1  # ohlcv_1min.revision is an INTEGER

_UPSERT = f"""
INSERT INTO ohlcv_1min ({COLUMNS})
SELECT DISTINCT ON (symbol, ts_ms)
  symbol, to_timestamp(ts_ms / 1000.0), open, high, low, close, volume, vwap, trades, revision
FROM bar_stage
ORDER BY symbol, ts_ms, revision DESC
ON CONFLICT (symbol, timestamp) DO UPDATE SET
  open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
  volume = excluded.volume, vwap = excluded.vwap, trades = excluded.trades,
  revision = least(ohlcv_1min.revision, {_MAX_REVISION - 1}) + 1
WHERE ({", ".join(f"ohlcv_1min.{c}" for c in VALUES.split(", "))})
      IS DISTINCT FROM
      ({", ".join(f"excluded.{c}" for c in VALUES.split(", "))})
RETURNING (xmax = 0) AS inserted
"""


@dataclass
class Tally:
    """What the backfill's writes did, summed over the sink's batches (thread-safe)."""

    bars: int = 0  # bars the flow produced
    inserted: int = 0  # new rows
    corrected: int = 0  # stored rows whose values differed: replaced, revision + 1
    first_ms: int | None = None  # earliest and latest bar start written or matched
    last_ms: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def unchanged(self) -> int:
        return self.bars - self.inserted - self.corrected

    def add(self, bars: Sequence[Bar], inserted: int, corrected: int) -> None:
        with self._lock:
            self.bars += len(bars)
            self.inserted += inserted
            self.corrected += corrected
            for b in bars:
                self.first_ms = b.timestamp if self.first_ms is None else min(self.first_ms, b.timestamp)
                self.last_ms = b.timestamp if self.last_ms is None else max(self.last_ms, b.timestamp)


class BackfillBarStore:
    """Writes a past day's bars: new ones inserted, differing ones corrected, equal ones left alone."""

    def __init__(self, url: str, tally: Tally, *, max_backoff_s: float = 30.0, start_wait_s: float = 60.0) -> None:
        self._db = Database(url, max_backoff_s=max_backoff_s, start_wait_s=start_wait_s)
        self._tally = tally

    def upsert(self, bars: Sequence[Bar], rejected: Callable[[Bar, str], None] | None = None) -> list[Bar]:
        """Write `bars` in one transaction (retried while the server is down); returns those written."""
        if not bars:
            return []
        # (batch, inserted, corrected) per transaction that reached its end; a retry of the same batch
        # (the commit was lost) replaces its entry, a batch split after a refusal never had one
        done: list[tuple[Sequence[Bar], int, int]] = []

        def work(cur: psycopg.Cursor, batch: Sequence[Bar]) -> None:
            cur.execute(_STAGE)
            with cur.copy("COPY bar_stage FROM STDIN") as copy:
                copy.write("".join(map(_copy_line, batch)))
            cur.execute(_NEW_SYMBOLS)
            cur.execute(_UPSERT)
            inserted = [row[0] for row in cur.fetchall()]
            done[:] = [d for d in done if d[0] is not batch]
            done.append((batch, sum(inserted), len(inserted) - sum(inserted)))

        what = f"writing {len(bars)} backfilled bars to PostgreSQL"
        written = self._db.run_each(bars, work, what, rejected or raise_refused)
        self._tally.add(written, sum(d[1] for d in done), sum(d[2] for d in done))
        return written

    def close(self) -> None:
        self._db.close()


# --- the database around the day ---------------------------------------------------------------

_AGGREGATES = """
SELECT view_name FROM timescaledb_information.continuous_aggregates
WHERE hypertable_name = 'ohlcv_1min' ORDER BY view_name
"""
_RETENTION = """
SELECT (config->>'drop_after')::interval FROM timescaledb_information.jobs
WHERE proc_name = 'policy_retention' AND hypertable_name = 'ohlcv_1min'
"""


@dataclass(frozen=True)
class Surroundings:
    """What the database does with a backfilled day besides storing its minutes."""

    timescaledb: str | None  # the extension's version, None on plain PostgreSQL
    aggregates: list[str]  # continuous aggregates over ohlcv_1min (refreshed after a backfill)
    retention: timedelta | None  # ohlcv_1min's retention policy (chunks older are dropped)


def surroundings(url: str) -> Surroundings:
    """Read the extension, the continuous aggregates over `ohlcv_1min` and its retention policy;
    DatabaseUnavailable when the server cannot be reached or is not migrated."""
    conn = connect(url)
    try:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        if row is None:
            return Surroundings(None, [], None)
        aggregates = [r[0] for r in conn.execute(_AGGREGATES).fetchall()]
        retention = conn.execute(_RETENTION).fetchone()
        return Surroundings(row[0], aggregates, retention[0] if retention else None)
    finally:
        conn.rollback()
        conn.close()


def refresh_aggregates(url: str, aggregates: Sequence[str], start: datetime, end: datetime) -> None:
    """Materialize `aggregates` over [start, end) (a continuous aggregate serves materialized buckets
    below its watermark as they are: a backfilled day stays invisible there until refreshed).
    `refresh_continuous_aggregate` cannot run inside a transaction: autocommit."""
    conn = connect(url)
    try:
        conn.rollback()
        conn.autocommit = True
        for name in aggregates:
            conn.execute(sql.SQL("CALL refresh_continuous_aggregate({}, %s, %s)").format(sql.Literal(name)), (start, end))
    finally:
        conn.close()


def stored_bars(url: str, symbols: Sequence[str] | None, start: datetime, end: datetime) -> int:
    """How many 1-minute bars (of `symbols`, or all) `ohlcv_1min` holds in [start, end)."""
    conn = connect(url)
    try:
        query = "SELECT count(*) FROM ohlcv_1min WHERE timestamp >= %s AND timestamp < %s"
        params: tuple = (start, end)
        if symbols is not None:
            query += " AND symbol = ANY(%s)"
            params = (start, end, list(symbols))
        row = conn.execute(query, params).fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.rollback()
        conn.close()
