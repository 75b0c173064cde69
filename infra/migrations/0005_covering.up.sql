-- migrate: no-transaction
-- 0005_covering: a symbol's closed days local on disk, without rewriting or locking the live tables.
--
-- Why: bars are written in arrival order (every symbol, minute by minute), so one symbol-day of
-- 1-minute bars is ~390 heap pages and one symbol-month of 5-minute rollup rows ~2,300: read
-- cold, that was p95 187 ms and 935 ms on the 9.5 GB bench database (targets: 20 and 50 ms).
-- Rewriting closed days in symbol order (CLUSTER, VACUUM FULL) takes an ACCESS EXCLUSIVE lock on
-- the whole table for minutes and must be repeated forever. Instead the primary keys of
-- ohlcv_1min (plain PostgreSQL) and rollups.bars_5min (both) become covering: (symbol, timestamp)
-- INCLUDE every column the analyst queries read. B-tree leaves are in key order, so a symbol-day
-- is ~5 leaf pages of 1-minute bars and a symbol-month ~40 of 5-minute rows, read by an
-- index-only scan wherever the visibility map says the heap page is all-visible, which it is for
-- closed days once (auto)vacuum has been by: the settings below have autovacuum visit the bars
-- every ~200k new rows (~50 minutes of 4,000 symbols) instead of at 20 % growth. Pages still being
-- written (the open day) are read from the heap too, as before: they are the hot ones.
--
-- Cost: a wider index (about the heap's size again), and on the write path every insert writes
-- the wider entry; a rewrite of a rollup bucket (every minute while its 5 minutes are open) or a
-- revised minute is no longer a HOT update (an included column changed), so it adds an index
-- entry that vacuum later removes. Measured: docs/benchmarks.md (Queries; `python -m bench.sink`).
--
-- With TimescaleDB, ohlcv_1min keeps its key: its closed days are local through compression
-- segmented by symbol (infra/policies.py); TimescaleDB builds no index concurrently on a
-- hypertable. The rollup is a plain table there as well and gets its covering key.
--
-- How: each index is built CONCURRENTLY (writers are not blocked while it builds), then it
-- becomes the primary key in one short ALTER TABLE (ACCESS EXCLUSIVE, no scan: the columns are
-- NOT NULL and the index is valid). Every statement can be re-run: a build that failed leaves an
-- invalid index, dropped first. The down file brings the narrow keys back the same way. A
-- single-user backend (PGlite, the embedded TimescaleDB: pg_backend_pid() is 0) cannot build
-- concurrently ("tuple concurrently updated") and has no other session to block: it builds
-- the plain way.

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
DROP INDEX CONCURRENTLY IF EXISTS rollups.bars_5min_covering;
-- statement when SELECT to_regclass('rollups.bars_5min') IS NOT NULL AND pg_backend_pid() = 0
DROP INDEX IF EXISTS rollups.bars_5min_covering;
-- statement when SELECT to_regclass('rollups.bars_5min') IS NOT NULL AND pg_backend_pid() <> 0
CREATE UNIQUE INDEX CONCURRENTLY bars_5min_covering ON rollups.bars_5min (symbol, timestamp)
    INCLUDE (open, open_at, high, low, close, close_at, volume, priced_value, priced_volume, trades);
-- statement when SELECT to_regclass('rollups.bars_5min') IS NOT NULL AND pg_backend_pid() = 0
CREATE UNIQUE INDEX bars_5min_covering ON rollups.bars_5min (symbol, timestamp)
    INCLUDE (open, open_at, high, low, close, close_at, volume, priced_value, priced_volume, trades);
-- statement when SELECT to_regclass('rollups.bars_5min') IS NOT NULL
ALTER TABLE rollups.bars_5min
    DROP CONSTRAINT bars_5min_pkey,
    ADD CONSTRAINT bars_5min_pkey PRIMARY KEY USING INDEX bars_5min_covering;
-- statement when SELECT pg_temp.bars_are_plain() AND pg_backend_pid() <> 0
DROP INDEX CONCURRENTLY IF EXISTS ohlcv_1min_covering;
-- statement when SELECT pg_temp.bars_are_plain() AND pg_backend_pid() = 0
DROP INDEX IF EXISTS ohlcv_1min_covering;
-- statement when SELECT pg_temp.bars_are_plain() AND pg_backend_pid() <> 0
CREATE UNIQUE INDEX CONCURRENTLY ohlcv_1min_covering ON ohlcv_1min (symbol, timestamp)
    INCLUDE (open, high, low, close, volume, vwap, trades);
-- statement when SELECT pg_temp.bars_are_plain() AND pg_backend_pid() = 0
CREATE UNIQUE INDEX ohlcv_1min_covering ON ohlcv_1min (symbol, timestamp)
    INCLUDE (open, high, low, close, volume, vwap, trades);
-- statement when SELECT pg_temp.bars_are_plain()
ALTER TABLE ohlcv_1min
    DROP CONSTRAINT ohlcv_1min_pkey,
    ADD CONSTRAINT ohlcv_1min_pkey PRIMARY KEY USING INDEX ohlcv_1min_covering;
-- statement when SELECT pg_temp.bars_are_plain()
ALTER TABLE ohlcv_1min SET (autovacuum_vacuum_insert_threshold = 200000, autovacuum_vacuum_insert_scale_factor = 0);
