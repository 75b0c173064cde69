-- Reverts 0002_timeframes: the derived bars only; ohlcv_1min is untouched.
DROP TRIGGER IF EXISTS latest_bars_on_insert ON ohlcv_1min;
DROP TRIGGER IF EXISTS latest_bars_on_update ON ohlcv_1min;
DROP TRIGGER IF EXISTS latest_bars_on_write ON ohlcv_1min;
DROP TRIGGER latest_bars_on_delete ON ohlcv_1min;
DROP TRIGGER latest_bars_on_truncate ON ohlcv_1min;
DROP FUNCTION latest_bars_track(), latest_bars_clear(), latest_bars_upsert(ohlcv_1min[]), latest_bars_forget(ohlcv_1min[]);
DROP TABLE latest_bars;

DO $$
DECLARE
    frame_name TEXT;
    is_cagg BOOLEAN;
BEGIN
    FOREACH frame_name IN ARRAY ARRAY['ohlcv_1day', 'ohlcv_1hour', 'ohlcv_15min', 'ohlcv_5min'] LOOP
        is_cagg := false;
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
            -- nested, not AND: PL/pgSQL would plan the catalog query even without the extension
            is_cagg := EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates
                               WHERE view_name = frame_name);
        END IF;
        IF is_cagg THEN
            EXECUTE format('DROP MATERIALIZED VIEW %I', frame_name);  -- also removes its refresh policy
        ELSE
            EXECUTE format('DROP VIEW %I', frame_name);
        END IF;
    END LOOP;
END
$$;
