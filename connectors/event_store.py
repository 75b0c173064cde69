"""Detection records into PostgreSQL/TimescaleDB: `events`, `indicator_values`, `alerts` (migration 0003).

One transaction per batch: COPY into temporary staging tables, then one upsert per table.
Idempotent like the bar store: records are keyed by their stable id (indicator values by
symbol, timeframe and bar), so a replay or a recovery re-emission rewrites nothing, and a
recomputed value (after a bar revision) replaces the old one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec
import psycopg

from connectors.postgres import DatabaseUnavailable, connect
from connectors.retry import with_backoff
from schemas.events import Alert, Event, IndicatorValues

log = logging.getLogger(__name__)

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS event_stage (
  n integer, symbol text, ts_ms bigint, id text, kind text, type text, timeframe text, direction text,
  confidence float8, price float8, revision integer, params jsonb, detail jsonb
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS indicator_stage (
  n integer, symbol text, timeframe text, ts_ms bigint, sma float8, ema float8, rsi float8, macd float8,
  macd_signal float8, macd_hist float8, bb_upper float8, bb_middle float8, bb_lower float8, atr float8,
  vwap float8, revision integer
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS alert_stage (
  n integer, symbol text, ts_ms bigint, id text, rule text, severity text, timeframe text, direction text,
  confidence float8, indicator text, value float8, threshold float8, message text, revision integer, params jsonb
) ON COMMIT DELETE ROWS
"""

# Within a batch the last record for a key wins (n), across batches an unchanged row is not rewritten.
_UPSERT_EVENTS = """
INSERT INTO events (symbol, timestamp, id, kind, type, timeframe, direction, confidence, price, revision, params, detail)
SELECT DISTINCT ON (symbol, ts_ms, id)
  symbol, to_timestamp(ts_ms / 1000.0), id, kind, type, timeframe, direction, confidence, price, revision, params, detail
FROM event_stage ORDER BY symbol, ts_ms, id, n DESC
ON CONFLICT (symbol, timestamp, id) DO UPDATE SET
  kind = excluded.kind, type = excluded.type, timeframe = excluded.timeframe, direction = excluded.direction,
  confidence = excluded.confidence, price = excluded.price, revision = excluded.revision,
  params = excluded.params, detail = excluded.detail
WHERE ROW(events.*) IS DISTINCT FROM ROW(excluded.*)
"""
_UPSERT_INDICATORS = """
INSERT INTO indicator_values (symbol, timeframe, timestamp, sma, ema, rsi, macd, macd_signal, macd_hist,
                              bb_upper, bb_middle, bb_lower, atr, vwap, revision)
SELECT DISTINCT ON (symbol, timeframe, ts_ms)
  symbol, timeframe, to_timestamp(ts_ms / 1000.0), sma, ema, rsi, macd, macd_signal, macd_hist,
  bb_upper, bb_middle, bb_lower, atr, vwap, revision
FROM indicator_stage ORDER BY symbol, timeframe, ts_ms, n DESC
ON CONFLICT (symbol, timeframe, timestamp) DO UPDATE SET
  sma = excluded.sma, ema = excluded.ema, rsi = excluded.rsi, macd = excluded.macd,
  macd_signal = excluded.macd_signal, macd_hist = excluded.macd_hist, bb_upper = excluded.bb_upper,
  bb_middle = excluded.bb_middle, bb_lower = excluded.bb_lower, atr = excluded.atr, vwap = excluded.vwap,
  revision = excluded.revision
WHERE ROW(indicator_values.*) IS DISTINCT FROM ROW(excluded.*)
"""
_UPSERT_ALERTS = """
INSERT INTO alerts (symbol, timestamp, id, rule, severity, timeframe, direction, confidence, indicator, value,
                    threshold, message, revision, params)
SELECT DISTINCT ON (symbol, ts_ms, id)
  symbol, to_timestamp(ts_ms / 1000.0), id, rule, severity, timeframe, direction, confidence, indicator, value,
  threshold, message, revision, params
FROM alert_stage ORDER BY symbol, ts_ms, id, n DESC
ON CONFLICT (symbol, timestamp, id) DO UPDATE SET
  rule = excluded.rule, severity = excluded.severity, timeframe = excluded.timeframe,
  direction = excluded.direction, confidence = excluded.confidence, indicator = excluded.indicator,
  value = excluded.value, threshold = excluded.threshold, message = excluded.message,
  revision = excluded.revision, params = excluded.params
WHERE ROW(alerts.*) IS DISTINCT FROM ROW(excluded.*)
"""

_json = msgspec.json.Encoder()
_COMMON = frozenset(("version", "id", "type", "symbol", "timestamp", "confidence", "direction", "params",
                     "timeframe", "revision"))  # fmt: skip
_PRICE = {"highlow": "price", "trend": "close", "surge": "close"}  # the price an event refers to, by kind


def _event_row(n: int, e: Event) -> tuple:
    kind = e.kind  # type: ignore[union-attr]
    detail = {f: getattr(e, f) for f in e.__struct_fields__ if f not in _COMMON and f != _PRICE.get(kind)}
    return (
        n, e.symbol, e.timestamp, e.id, kind, e.type, getattr(e, "timeframe", None), e.direction, e.confidence,
        getattr(e, _PRICE[kind]) if kind in _PRICE else None, getattr(e, "revision", 0),
        _json.encode(e.params).decode(), _json.encode(detail).decode(),
    )  # fmt: skip


def _indicator_row(n: int, v: IndicatorValues) -> tuple:
    return (n, v.symbol, v.timeframe, v.timestamp, v.sma, v.ema, v.rsi, v.macd, v.macd_signal, v.macd_hist,
            v.bb_upper, v.bb_middle, v.bb_lower, v.atr, v.vwap, v.revision)  # fmt: skip


def _alert_row(n: int, a: Alert) -> tuple:
    return (n, a.symbol, a.timestamp, a.id, a.type, a.severity, a.timeframe, a.direction, a.confidence, a.indicator,
            a.value, a.threshold, a.message, a.revision, _json.encode(a.params).decode())  # fmt: skip


class EventStore:
    """Writes detection records; blocks and retries while the server is down."""

    def __init__(self, url: str, *, max_backoff_s: float = 30.0) -> None:
        self._url = url
        self._max_backoff_s = max_backoff_s
        self._conn: psycopg.Connection | None = connect(url)
        with self._conn.cursor() as cur:
            cur.execute("SELECT to_regclass('events') IS NOT NULL AND to_regclass('indicator_values') IS NOT NULL")
            migrated = cur.fetchone()[0]  # type: ignore[index]
        self._conn.rollback()
        if not migrated:
            raise DatabaseUnavailable("the detection tables (events, indicator_values, alerts) are missing; run `make migrate`")

    def upsert(self, records: Sequence[Event]) -> None:
        if records:
            with_backoff(
                lambda: self._upsert_once(records),
                retry_on=(psycopg.OperationalError, psycopg.InterfaceError),
                what=f"writing {len(records)} detection records to PostgreSQL",
                log=log,
                max_backoff_s=self._max_backoff_s,
                on_retry=self._drop_connection,
            )

    def _upsert_once(self, records: Sequence[Event]) -> None:
        events, values, alerts = [], [], []
        for n, r in enumerate(records):
            if isinstance(r, IndicatorValues):
                values.append(_indicator_row(n, r))
            elif isinstance(r, Alert):
                alerts.append(_alert_row(n, r))
            else:
                events.append(_event_row(n, r))
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._url, connect_timeout=5, autocommit=False)
        conn = self._conn
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_STAGE)
            for rows, table, upsert in ((events, "event_stage", _UPSERT_EVENTS),
                                        (values, "indicator_stage", _UPSERT_INDICATORS),
                                        (alerts, "alert_stage", _UPSERT_ALERTS)):  # fmt: skip
                if rows:
                    with cur.copy(f"COPY {table} FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    cur.execute(upsert)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error as exc:
                log.debug("closing a broken connection: %s", exc)
            self._conn = None

    def close(self) -> None:
        self._drop_connection()
