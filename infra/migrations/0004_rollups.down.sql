-- Reverts 0004_rollups: 0002's query-time views (plain PostgreSQL) or continuous aggregates
-- (TimescaleDB, re-created empty with their refresh policies: real-time aggregation computes every
-- bucket until a policy run) and latest_bars triggers come back; ohlcv_1min and latest_bars' rows
-- are untouched.
-- 0004's triggers (which of them exist depends on the server): whichever exist
DO $$
DECLARE
    name TEXT;
BEGIN
    FOR name IN SELECT tgname FROM pg_trigger WHERE tgrelid = 'ohlcv_1min'::regclass
                AND (tgname LIKE 'rollups\_after\_%' OR tgname LIKE 'latest\_bars\_after\_%')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON ohlcv_1min', name);
    END LOOP;
END
$$;
DROP FUNCTION latest_bars_after_write(), latest_bars_after_write_row(), latest_bars_refill(text[]);
ALTER TABLE latest_bars RESET (fillfactor);

-- 0002's latest_bars function and triggers. The function is re-created as 0002 defines it today: in a
-- database migrated with an earlier 0002, its row-level branch (a hypertable's) passes NEW, which has
-- the chunk's row type, to latest_bars_upsert(ohlcv_1min[]), and every write fails ("function
-- latest_bars_upsert(_timescaledb_internal._hyper_1_1_chunk[]) does not exist"). 0004's triggers never
-- call it, so it is safe to replace here.
CREATE OR REPLACE FUNCTION latest_bars_track() RETURNS trigger LANGUAGE plpgsql AS $fn$
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

-- 0002's query-time views or continuous aggregates in place of the rollup-backed views
DO $$
DECLARE
    frame RECORD;
    hypertable BOOLEAN := false;
BEGIN
    IF to_regnamespace('rollups') IS NULL THEN
        RETURN;  -- TimescaleDB before 2.18: the continuous aggregates were never replaced
    END IF;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        -- nested: PL/pgSQL would plan the catalog query even without the extension
        hypertable := EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'ohlcv_1min');
    END IF;
    FOR frame IN
        SELECT * FROM (VALUES
            ('ohlcv_5min',  INTERVAL '5 minutes',  INTERVAL '1 day',  INTERVAL '5 minutes', INTERVAL '1 minute'),
            ('ohlcv_15min', INTERVAL '15 minutes', INTERVAL '1 day',  INTERVAL '15 minutes', INTERVAL '5 minutes'),
            ('ohlcv_1hour', INTERVAL '1 hour',     INTERVAL '3 days', INTERVAL '1 hour',    INTERVAL '15 minutes'),
            ('ohlcv_1day',  INTERVAL '1 day',      INTERVAL '7 days', INTERVAL '1 day',     INTERVAL '1 hour')
        ) AS f (name, width, start_offset, end_offset, schedule)
    LOOP
        EXECUTE format('DROP VIEW %I', frame.name);
        IF hypertable THEN  -- as 0002 creates them
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
            CONTINUE;
        END IF;
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
    END LOOP;
    DROP TABLE rollups.bars_5min;
    DROP FUNCTION IF EXISTS rollups.after_delete_row();  -- created with a hypertable only
    DROP FUNCTION rollups.after_write(), rollups.clear(), rollups.recompute_prices(text[], timestamptz[]);
    DROP SCHEMA rollups;
END
$$;
