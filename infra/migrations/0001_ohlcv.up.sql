-- 0001_ohlcv: the 1-minute bar table the old TickStock's users query, and the symbols it references.
--
-- open/high/low/close/vwap are nullable on purpose: a minute whose only trades are volume-only
-- (average-price, odd-lot, ...) has a volume but no price. The sink fills `symbols` itself.

CREATE TABLE symbols (
    symbol     VARCHAR(20) PRIMARY KEY,
    first_seen TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE ohlcv_1min (
    symbol    VARCHAR(20) NOT NULL REFERENCES symbols (symbol),
    timestamp TIMESTAMPTZ NOT NULL,
    open      NUMERIC,
    high      NUMERIC,
    low       NUMERIC,
    close     NUMERIC,
    volume    BIGINT      NOT NULL,
    vwap      NUMERIC,
    trades    INTEGER     NOT NULL,
    revision  INTEGER     NOT NULL DEFAULT 0,
    PRIMARY KEY (symbol, timestamp)
);

-- The primary key already answers "latest bar of a symbol" (backward scan on (symbol, timestamp)).
-- This one answers "latest bars of all symbols" and time-range scans across symbols. It has the
-- name and shape of TimescaleDB's default time index, so create_hypertable does not add a second one.
CREATE INDEX ohlcv_1min_timestamp_idx ON ohlcv_1min (timestamp DESC);

-- TimescaleDB when the server has it, a plain table otherwise: analysts' SQL is the same on both.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries', true) LIKE '%timescaledb%' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable(
            'ohlcv_1min', 'timestamp',
            chunk_time_interval => INTERVAL '1 day',
            if_not_exists => true,
            migrate_data => true
        );
        RAISE NOTICE 'ohlcv_1min is a TimescaleDB hypertable (1-day chunks)';
    ELSE
        RAISE NOTICE 'TimescaleDB not available (or not in shared_preload_libraries): ohlcv_1min is a plain table';
    END IF;
END
$$;
