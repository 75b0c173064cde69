"""What the database already holds about a symbol, for detectors that start cold.

- `recent_bars`: the last bars of a timeframe before a symbol's first bar of it in this flow,
  so its indicators are valid from that first bar (warm start from `ohlcv_1min`, or the
  timeframe's view, `ohlcv_5min` etc., which the flow's own coarser bars equal).
- `session_references`: the session's extremes so far and the previous sessions' highs and
  lows, for the trade-level high/low detector.

Both read with one query per call for many symbols (the primary key's (symbol, timestamp)
order makes each symbol one index range scan; the views read their rollup the same way),
and retry while the server is down, like the sinks.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
from psycopg import sql

from connectors.postgres.database import Database
from schemas.sessions import Reference, session_of
from schemas.timeframes import TIMEFRAMES

BarRow = tuple[int, float, float, float, float, float, float]  # start ms, open, high, low, close, volume, vwap

_RECENT_OF = """
SELECT w.symbol, (extract(epoch FROM b.timestamp) * 1000)::bigint,
       b.open::float8, b.high::float8, b.low::float8, b.close::float8, b.volume::float8, b.vwap::float8
FROM unnest(%(symbols)s::text[], %(before)s::bigint[]) AS w(symbol, before_ms)
CROSS JOIN LATERAL (
    SELECT o.timestamp, o.open, o.high, o.low, o.close, o.volume, o.vwap
    FROM {table} o
    WHERE o.symbol = w.symbol AND o.timestamp < to_timestamp(w.before_ms / 1000.0) AND o.close IS NOT NULL
    ORDER BY o.timestamp DESC
    LIMIT %(limit)s
) b
ORDER BY w.symbol, b.timestamp
"""
_RECENT = {name: sql.SQL(_RECENT_OF).format(table=sql.Identifier(t.table)) for name, t in TIMEFRAMES.items()}

_TODAY = """
SELECT w.symbol, max(o.high)::float8, min(o.low)::float8
FROM unnest(%(symbols)s::text[], %(starts)s::timestamptz[], %(ends)s::timestamptz[]) AS w(symbol, since, until)
JOIN ohlcv_1min o ON o.symbol = w.symbol AND o.timestamp >= w.since AND o.timestamp < w.until
GROUP BY w.symbol
"""

# Previous sessions by US/Eastern day, newest first, at most n per symbol, looking back `span` days.
_PRIOR = """
SELECT symbol, day::text, high::float8, low::float8
FROM (
    SELECT symbol, day, high, low, row_number() OVER (PARTITION BY symbol ORDER BY day DESC) AS n
    FROM (
        SELECT o.symbol, (o.timestamp AT TIME ZONE 'America/New_York')::date AS day, max(o.high) AS high, min(o.low) AS low
        FROM unnest(%(symbols)s::text[], %(starts)s::timestamptz[]) AS w(symbol, session_start)
        JOIN ohlcv_1min o ON o.symbol = w.symbol
             AND o.timestamp >= w.session_start - make_interval(days => %(span)s) AND o.timestamp < w.session_start
        WHERE o.high IS NOT NULL
        GROUP BY 1, 2
    ) days
) ranked
WHERE n <= %(n)s
ORDER BY symbol, day DESC
"""


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class BarHistory:
    """Reads of the bar tables for warm starts; connects at once so a missing database fails the start-up."""

    def __init__(self, url: str, *, max_backoff_s: float = 30.0, start_wait_s: float = 60.0) -> None:
        self._db = Database(url, max_backoff_s=max_backoff_s, start_wait_s=start_wait_s)

    def recent_bars(self, before: dict[str, int], limit: int, timeframe: str = "1m") -> dict[str, list[BarRow]]:
        """Each symbol's last `limit` bars of `timeframe` with prices that start before `before[symbol]` (ms), oldest first."""
        if not before:
            return {}
        rows = self._query(_RECENT[timeframe], {"symbols": list(before), "before": list(before.values()), "limit": limit})
        out: dict[str, list[BarRow]] = {}
        for symbol, *bar in rows:
            out.setdefault(symbol, []).append(tuple(bar))
        return out

    def session_references(self, first_trades: dict[str, int], gap_ms: int, n_days: int) -> dict[str, Reference]:
        """For each symbol, its session's extremes from bars before its cutoff and its previous sessions'.

        The session is the one containing the symbol's first trade (the first this flow has
        for it, or the first since its state was dropped for idleness). Its cutoff is that
        trade's minute less `gap_ms` (the allowed lateness and a minute): bars from there on may
        have been written by this flow's own input, before a restart, and must not count twice;
        bars before it this input cannot reach, so a replay sees what the first run saw.
        """
        if not first_trades:
            return {}
        symbols = list(first_trades)
        sessions = [session_of(t) for t in first_trades.values()]
        starts = [_utc(s.start_ms) for s in sessions]
        cutoffs = [t - gap_ms - (t - gap_ms) % 60_000 for t in first_trades.values()]
        today = {
            symbol: (high, low)
            for symbol, high, low in self._query(
                _TODAY,
                {"symbols": symbols, "starts": starts,
                 "ends": [_utc(min(s.end_ms, c)) for s, c in zip(sessions, cutoffs, strict=True)]},
            )
        }  # fmt: skip
        prior: dict[str, list[tuple[str, float, float]]] = {}
        if n_days > 0:
            span = n_days * 7 // 5 + 10  # calendar days that hold n_days sessions, with holidays to spare
            for symbol, day, high, low in self._query(_PRIOR, {"symbols": symbols, "starts": starts, "span": span, "n": n_days}):
                prior.setdefault(symbol, []).append((day, high, low))
        return {symbol: Reference(*today.get(symbol, (None, None)), prior.get(symbol, [])) for symbol in symbols}

    def _query(self, query: str | sql.Composed, params: dict) -> list[tuple]:
        def fetch(cur: psycopg.Cursor) -> list[tuple]:
            cur.execute(query, params)
            return cur.fetchall()

        return self._db.run(fetch, "reading bar history from PostgreSQL")

    def close(self) -> None:
        self._db.close()
