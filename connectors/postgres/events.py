"""Detection records into PostgreSQL/TimescaleDB: `events`, `indicator_values`, `alerts` (migrations 0003, 0007).

One transaction per batch, one upsert per table fed by a JSON array of the records.
Idempotent like the bar store: records are keyed by their stable id (indicator values by
symbol, timeframe and bar), so a replay or a recovery re-emission rewrites nothing, and a
recomputed value (after a bar revision) replaces the old one. An event or alert decided
again (`status` amended or retracted, a higher `revision`) replaces its row; one of a lower
revision than the row never does, so a replay that repeats an event's history from its
first decision leaves the row at its latest word, unwritten. (The backfill, which re-decides a
closed day from its files, replaces rows whatever their revision: `any_revision`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec
import psycopg

from connectors.postgres.database import Database, raise_refused
from schemas.events import Alert, Event, IndicatorValues

# Each batch goes to PostgreSQL as one JSON array per table (one C call to encode), and the server
# takes the fields apart: the Python side of the write costs ~1 us a record, not ~10, which
# matters because it shares the GIL with the flow. Within a batch the last record for a key wins
# (ordinality n); an unchanged row is not rewritten.
_UPSERT_EVENTS = """
INSERT INTO events (symbol, timestamp, id, kind, type, timeframe, direction, confidence, price, revision, params, detail,
                    status)
SELECT DISTINCT ON (e->>'symbol', (e->>'timestamp')::bigint, e->>'id')
  e->>'symbol', to_timestamp((e->>'timestamp')::bigint / 1000.0), e->>'id', e->>'kind', e->>'type', e->>'timeframe',
  e->>'direction', (e->>'confidence')::float8, (e->>(CASE e->>'kind' WHEN 'highlow' THEN 'price' ELSE 'close' END))::float8,
  coalesce((e->>'revision')::integer, 0), e->'params',
  e - ARRAY['kind', 'version', 'id', 'type', 'symbol', 'timestamp', 'confidence', 'direction', 'params', 'timeframe',
            'revision', 'status', CASE e->>'kind' WHEN 'highlow' THEN 'price' WHEN 'pattern' THEN '' ELSE 'close' END],
  coalesce(e->>'status', 'detected')
FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(e, n)
ORDER BY e->>'symbol', (e->>'timestamp')::bigint, e->>'id', n DESC
ON CONFLICT (symbol, timestamp, id) DO UPDATE SET
  kind = excluded.kind, type = excluded.type, timeframe = excluded.timeframe, direction = excluded.direction,
  confidence = excluded.confidence, price = excluded.price, revision = excluded.revision,
  params = excluded.params, detail = excluded.detail, status = excluded.status
WHERE excluded.revision >= events.revision AND ROW(events.*) IS DISTINCT FROM ROW(excluded.*)
"""
_LATEST_WORD = ("excluded.revision >= events.revision AND ", "excluded.revision >= alerts.revision AND ")
_UPSERT_INDICATORS = """
INSERT INTO indicator_values (symbol, timeframe, timestamp, sma, ema, rsi, macd, macd_signal, macd_hist,
                              bb_upper, bb_middle, bb_lower, atr, vwap, revision)
SELECT DISTINCT ON (e->>'symbol', e->>'timeframe', (e->>'timestamp')::bigint)
  e->>'symbol', e->>'timeframe', to_timestamp((e->>'timestamp')::bigint / 1000.0),
  (e->>'sma')::float8, (e->>'ema')::float8, (e->>'rsi')::float8, (e->>'macd')::float8, (e->>'macd_signal')::float8,
  (e->>'macd_hist')::float8, (e->>'bb_upper')::float8, (e->>'bb_middle')::float8, (e->>'bb_lower')::float8,
  (e->>'atr')::float8, (e->>'vwap')::float8, (e->>'revision')::integer
FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(e, n)
ORDER BY e->>'symbol', e->>'timeframe', (e->>'timestamp')::bigint, n DESC
ON CONFLICT (symbol, timeframe, timestamp) DO UPDATE SET
  sma = excluded.sma, ema = excluded.ema, rsi = excluded.rsi, macd = excluded.macd,
  macd_signal = excluded.macd_signal, macd_hist = excluded.macd_hist, bb_upper = excluded.bb_upper,
  bb_middle = excluded.bb_middle, bb_lower = excluded.bb_lower, atr = excluded.atr, vwap = excluded.vwap,
  revision = excluded.revision
WHERE ROW(indicator_values.*) IS DISTINCT FROM ROW(excluded.*)
"""
_UPSERT_ALERTS = """
INSERT INTO alerts (symbol, timestamp, id, rule, severity, timeframe, direction, confidence, indicator, value,
                    threshold, message, revision, params, status)
SELECT DISTINCT ON (e->>'symbol', (e->>'timestamp')::bigint, e->>'id')
  e->>'symbol', to_timestamp((e->>'timestamp')::bigint / 1000.0), e->>'id', e->>'type', e->>'severity',
  e->>'timeframe', e->>'direction', (e->>'confidence')::float8, e->>'indicator', (e->>'value')::float8,
  (e->>'threshold')::float8, e->>'message', (e->>'revision')::integer, e->'params', coalesce(e->>'status', 'detected')
FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(e, n)
ORDER BY e->>'symbol', (e->>'timestamp')::bigint, e->>'id', n DESC
ON CONFLICT (symbol, timestamp, id) DO UPDATE SET
  rule = excluded.rule, severity = excluded.severity, timeframe = excluded.timeframe,
  direction = excluded.direction, confidence = excluded.confidence, indicator = excluded.indicator,
  value = excluded.value, threshold = excluded.threshold, message = excluded.message,
  revision = excluded.revision, params = excluded.params, status = excluded.status
WHERE excluded.revision >= alerts.revision AND ROW(alerts.*) IS DISTINCT FROM ROW(excluded.*)
"""

_encode = msgspec.json.Encoder().encode


class EventStore:
    """Writes detection records; blocks and retries while the server is down."""

    def __init__(self, url: str, *, max_backoff_s: float = 30.0, start_wait_s: float = 60.0, any_revision: bool = False) -> None:
        self._db = Database(url, tables=("events", "indicator_values", "alerts"), max_backoff_s=max_backoff_s,
                            start_wait_s=start_wait_s)  # fmt: skip
        self._upserts = _UPSERTS_ANY_REVISION if any_revision else _UPSERTS

    def upsert(self, records: Sequence[Event], rejected: Callable[[Event, str], None] | None = None) -> list[Event]:
        """Write `records`; returns those written (the database may refuse some for their values: see BarStore)."""
        if not records:
            return []
        what = f"writing {len(records)} detection records to PostgreSQL"
        upserts = self._upserts

        def upsert(cur: psycopg.Cursor, batch: Sequence[Event]) -> None:
            _upsert(cur, batch, upserts)

        return self._db.run_each(records, upsert, what, rejected or raise_refused)

    def close(self) -> None:
        self._db.close()


_UPSERTS = (_UPSERT_EVENTS, _UPSERT_INDICATORS, _UPSERT_ALERTS)
_UPSERTS_ANY_REVISION = (
    _UPSERT_EVENTS.replace(_LATEST_WORD[0], ""),
    _UPSERT_INDICATORS,
    _UPSERT_ALERTS.replace(_LATEST_WORD[1], ""),
)


def _upsert(cur: psycopg.Cursor, records: Sequence[Event], upserts: tuple[str, str, str] = _UPSERTS) -> None:
    events: list[Event] = []
    values: list[Event] = []
    alerts: list[Event] = []
    for r in records:
        (values if r.__class__ is IndicatorValues else alerts if r.__class__ is Alert else events).append(r)
    for batch, upsert in zip((events, values, alerts), upserts, strict=True):
        if batch:
            cur.execute(upsert, (_encode(batch).decode(),))
