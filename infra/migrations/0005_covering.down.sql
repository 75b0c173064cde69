-- migrate: no-transaction
-- 0005_covering down: the narrow primary keys of 0001 and 0004 again, built the same way (concurrently,
-- then swapped in one short ALTER TABLE); re-runnable from the start.

-- statement
-- ohlcv_1min is a plain table (no TimescaleDB, or not a hypertable), as in 0004; for this session
CREATE OR REPLACE FUNCTION pg_temp.bars_are_plain() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN true;
    END IF;
    RETURN NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'ohlcv_1min');
END
$$;
-- statement when SELECT to_regclass('rollups.bars_5min') IS NOT NULL AND pg_backend_pid() <> 0
DROP INDEX CONCURRENTLY IF EXISTS rollups.bars_5min_narrow;
-- statement when SELECT to_regclass('rollups.bars_5min') IS NOT NULL AND pg_backend_pid() = 0
DROP INDEX IF EXISTS rollups.bars_5min_narrow;
-- statement when SELECT to_regclass('rollups.bars_5min') IS NOT NULL AND pg_backend_pid() <> 0
CREATE UNIQUE INDEX CONCURRENTLY bars_5min_narrow ON rollups.bars_5min (symbol, timestamp);
-- statement when SELECT to_regclass('rollups.bars_5min') IS NOT NULL AND pg_backend_pid() = 0
CREATE UNIQUE INDEX bars_5min_narrow ON rollups.bars_5min (symbol, timestamp);
-- statement when SELECT to_regclass('rollups.bars_5min') IS NOT NULL
ALTER TABLE rollups.bars_5min
    DROP CONSTRAINT bars_5min_pkey,
    ADD CONSTRAINT bars_5min_pkey PRIMARY KEY USING INDEX bars_5min_narrow;
-- statement when SELECT pg_temp.bars_are_plain() AND pg_backend_pid() <> 0
DROP INDEX CONCURRENTLY IF EXISTS ohlcv_1min_narrow;
-- statement when SELECT pg_temp.bars_are_plain() AND pg_backend_pid() = 0
DROP INDEX IF EXISTS ohlcv_1min_narrow;
-- statement when SELECT pg_temp.bars_are_plain() AND pg_backend_pid() <> 0
CREATE UNIQUE INDEX CONCURRENTLY ohlcv_1min_narrow ON ohlcv_1min (symbol, timestamp);
-- statement when SELECT pg_temp.bars_are_plain() AND pg_backend_pid() = 0
CREATE UNIQUE INDEX ohlcv_1min_narrow ON ohlcv_1min (symbol, timestamp);
-- statement when SELECT pg_temp.bars_are_plain()
ALTER TABLE ohlcv_1min
    DROP CONSTRAINT ohlcv_1min_pkey,
    ADD CONSTRAINT ohlcv_1min_pkey PRIMARY KEY USING INDEX ohlcv_1min_narrow;
-- statement when SELECT pg_temp.bars_are_plain()
ALTER TABLE ohlcv_1min RESET (autovacuum_vacuum_insert_threshold, autovacuum_vacuum_insert_scale_factor);
