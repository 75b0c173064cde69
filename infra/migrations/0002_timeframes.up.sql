-- 0002_timeframes: 5-minute, 15-minute, 1-hour and 1-day bars derived from ohlcv_1min, and latest_bars.
--
-- Same names and columns on both servers (symbol, timestamp = bucket start, open, high, low, close,
-- volume, vwap, trades):
--   * plain PostgreSQL: ordinary VIEWs over ohlcv_1min (date_bin, PostgreSQL 14+), so a revised
--     1-minute bar shows in every coarser bar at once. `WHERE symbol = ...` is pushed through the
--     GROUP BY into the scan of ohlcv_1min and uses its primary key (symbol, timestamp).
--   * TimescaleDB (2.7+: finalized form, FILTER allowed): continuous aggregates with refresh policies and real-time aggregation
--     (materialized_only = false): buckets after the last refresh are computed live; a revision
--     of an already materialized bucket shows after the next policy run (start_offset covers
--     ALLOWED_LATENESS_S many times over).
-- Buckets are aligned to UTC: a 1-day bar is the UTC calendar day 00:00-24:00 (not the US/Eastern
-- trading day), hours start on the hour UTC.
-- open = first non-null open by time, close = last non-null close by time (volume-only minutes have
-- no prices), vwap = volume-weighted mean of the minutes' vwap over minutes that have one and volume.

DO $$
DECLARE
    frame RECORD;
BEGIN
    FOR frame IN
        SELECT * FROM (VALUES
            ('ohlcv_5min',  INTERVAL '5 minutes',  INTERVAL '1 day',  INTERVAL '5 minutes', INTERVAL '1 minute'),
            ('ohlcv_15min', INTERVAL '15 minutes', INTERVAL '1 day',  INTERVAL '15 minutes', INTERVAL '5 minutes'),
            ('ohlcv_1hour', INTERVAL '1 hour',     INTERVAL '3 days', INTERVAL '1 hour',    INTERVAL '15 minutes'),
            ('ohlcv_1day',  INTERVAL '1 day',      INTERVAL '7 days', INTERVAL '1 day',     INTERVAL '1 hour')
        ) AS f (name, width, start_offset, end_offset, schedule)
    LOOP
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
            -- WITH NO DATA: allowed inside the migration's transaction; the policy fills it.
            EXECUTE format($sql$
                CREATE MATERIALIZED VIEW %I
                WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
                SELECT symbol,
                       time_bucket(%L::interval, timestamp) AS timestamp,
                       first(open, timestamp) FILTER (WHERE open IS NOT NULL) AS open,
                       max(high) AS high,
                       min(low) AS low,
                       last(close, timestamp) FILTER (WHERE close IS NOT NULL) AS close,
                       sum(volume)::bigint AS volume,
                       sum(vwap * volume) FILTER (WHERE vwap IS NOT NULL AND volume > 0)
                         / NULLIF(sum(volume) FILTER (WHERE vwap IS NOT NULL AND volume > 0), 0) AS vwap,
                       sum(trades)::bigint AS trades
                FROM ohlcv_1min
                GROUP BY symbol, time_bucket(%L::interval, timestamp)
                WITH NO DATA
            $sql$, frame.name, frame.width, frame.width);
            PERFORM add_continuous_aggregate_policy(
                frame.name::regclass,
                start_offset => frame.start_offset,
                end_offset => frame.end_offset,
                schedule_interval => frame.schedule
            );
        ELSE
            EXECUTE format($sql$
                CREATE VIEW %I AS
                SELECT symbol,
                       date_bin(%L::interval, timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS timestamp,
                       (array_agg(open ORDER BY timestamp) FILTER (WHERE open IS NOT NULL))[1] AS open,
                       max(high) AS high,
                       min(low) AS low,
                       (array_agg(close ORDER BY timestamp DESC) FILTER (WHERE close IS NOT NULL))[1] AS close,
                       sum(volume)::bigint AS volume,
                       sum(vwap * volume) FILTER (WHERE vwap IS NOT NULL AND volume > 0)
                         / NULLIF(sum(volume) FILTER (WHERE vwap IS NOT NULL AND volume > 0), 0) AS vwap,
                       sum(trades)::bigint AS trades
                FROM ohlcv_1min
                GROUP BY 1, 2
            $sql$, frame.name, frame.width);
            EXECUTE format('COMMENT ON VIEW %I IS %L', frame.name,
                format('%s bars from ohlcv_1min, buckets aligned to UTC (timestamp = bucket start)', frame.width));
        END IF;
    END LOOP;
END
$$;

-- latest_bars: the latest 1-minute bar of every symbol, kept by triggers on ohlcv_1min. A query over
-- ohlcv_1min (one primary-key probe per symbol) takes ~80 ms for 4,000 symbols; this table answers
-- in a few. Plain PostgreSQL: statement-level triggers over transition tables, one upsert per write
-- batch of the sink. TimescaleDB hypertables do not support transition tables: row-level triggers.
CREATE TABLE latest_bars (
    symbol    VARCHAR(20) PRIMARY KEY,
    timestamp TIMESTAMPTZ NOT NULL,
    open      NUMERIC,
    high      NUMERIC,
    low       NUMERIC,
    close     NUMERIC,
    volume    BIGINT      NOT NULL,
    vwap      NUMERIC,
    trades    INTEGER     NOT NULL,
    revision  INTEGER     NOT NULL
);
COMMENT ON TABLE latest_bars IS 'latest ohlcv_1min row per symbol, maintained by triggers on ohlcv_1min';

INSERT INTO latest_bars
SELECT b.*
FROM symbols s
CROSS JOIN LATERAL (
    SELECT o.symbol, o.timestamp, o.open, o.high, o.low, o.close, o.volume, o.vwap, o.trades, o.revision
    FROM ohlcv_1min o WHERE o.symbol = s.symbol ORDER BY o.timestamp DESC LIMIT 1
) b;

-- A written row replaces a symbol's latest bar unless that one is newer (a revision of an old minute).
CREATE FUNCTION latest_bars_upsert(changed ohlcv_1min[]) RETURNS void LANGUAGE sql AS $fn$
    INSERT INTO latest_bars
    SELECT DISTINCT ON (c.symbol) c.symbol, c.timestamp, c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trades, c.revision
    FROM unnest(changed) AS c
    ORDER BY c.symbol, c.timestamp DESC
    ON CONFLICT (symbol) DO UPDATE SET
        timestamp = EXCLUDED.timestamp, open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
        close = EXCLUDED.close, volume = EXCLUDED.volume, vwap = EXCLUDED.vwap, trades = EXCLUDED.trades,
        revision = EXCLUDED.revision
    WHERE EXCLUDED.timestamp >= latest_bars.timestamp;
$fn$;

-- Deleted rows: symbols whose latest bar went get their new latest (or none).
CREATE FUNCTION latest_bars_forget(gone ohlcv_1min[]) RETURNS void LANGUAGE sql AS $fn$
    DELETE FROM latest_bars l USING unnest(gone) AS g WHERE l.symbol = g.symbol AND l.timestamp = g.timestamp;
    INSERT INTO latest_bars
    SELECT b.*
    FROM (SELECT DISTINCT g.symbol FROM unnest(gone) AS g) s
    CROSS JOIN LATERAL (
        SELECT o.symbol, o.timestamp, o.open, o.high, o.low, o.close, o.volume, o.vwap, o.trades, o.revision
        FROM ohlcv_1min o WHERE o.symbol = s.symbol ORDER BY o.timestamp DESC LIMIT 1
    ) b
    ON CONFLICT (symbol) DO NOTHING;
$fn$;

-- Row level (a hypertable): TimescaleDB fires the trigger on the chunk, so NEW and OLD have the
-- chunk's row type (_timescaledb_internal._hyper_N_M_chunk), which no ohlcv_1min[] parameter takes:
-- the row is rebuilt as an ohlcv_1min by column name.
CREATE FUNCTION latest_bars_track() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        IF TG_OP = 'DELETE' THEN
            PERFORM latest_bars_forget((SELECT array_agg(ROW(g.*)::ohlcv_1min) FROM gone g));
        ELSE
            PERFORM latest_bars_upsert((SELECT array_agg(ROW(c.*)::ohlcv_1min) FROM changed c));
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM latest_bars_forget(ARRAY[ROW(OLD.symbol, OLD.timestamp, OLD.open, OLD.high, OLD.low, OLD.close,
                                             OLD.volume, OLD.vwap, OLD.trades, OLD.revision)::ohlcv_1min]);
    ELSE
        PERFORM latest_bars_upsert(ARRAY[ROW(NEW.symbol, NEW.timestamp, NEW.open, NEW.high, NEW.low, NEW.close,
                                             NEW.volume, NEW.vwap, NEW.trades, NEW.revision)::ohlcv_1min]);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION latest_bars_clear() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE latest_bars;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER latest_bars_on_truncate AFTER TRUNCATE ON ohlcv_1min
    FOR EACH STATEMENT EXECUTE FUNCTION latest_bars_clear();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        CREATE TRIGGER latest_bars_on_write AFTER INSERT OR UPDATE ON ohlcv_1min
            FOR EACH ROW EXECUTE FUNCTION latest_bars_track();
        CREATE TRIGGER latest_bars_on_delete AFTER DELETE ON ohlcv_1min
            FOR EACH ROW EXECUTE FUNCTION latest_bars_track();
    ELSE
        CREATE TRIGGER latest_bars_on_insert AFTER INSERT ON ohlcv_1min
            REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION latest_bars_track();
        CREATE TRIGGER latest_bars_on_update AFTER UPDATE ON ohlcv_1min
            REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION latest_bars_track();
        CREATE TRIGGER latest_bars_on_delete AFTER DELETE ON ohlcv_1min
            REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION latest_bars_track();
    END IF;
END
$$;
