-- 0003_detection: what the detectors find, one table per record family (schemas/events.py).
--
--   events            high/low, trend, surge and candlestick-pattern events
--   indicator_values  one row per symbol, timeframe and bar: SMA, EMA, RSI, MACD, Bollinger, ATR, VWAP
--   alerts            indicator rules that fired (RSI levels, MACD crosses, Bollinger breaks)
--
-- Written idempotently by the flow's detection sink: an event's `id` is a pure function of what was
-- detected, so a replay or a restart upserts the same rows. `timestamp` is the trade's time (high/low)
-- or the bar's start. Keys lead with (symbol, timestamp) for the usual "this symbol, this range"
-- question and include the time column, as TimescaleDB requires of a hypertable's unique keys.
-- No foreign key to `symbols`: events of a trade can arrive before its symbol's first bar.

CREATE TABLE events (
    symbol     VARCHAR(20)      NOT NULL,
    timestamp  TIMESTAMPTZ      NOT NULL,
    id         TEXT             NOT NULL,
    kind       TEXT             NOT NULL CHECK (kind IN ('highlow', 'trend', 'surge', 'pattern')),
    type       TEXT             NOT NULL,
    timeframe  TEXT,                       -- NULL for trade-level (high/low) events
    direction  TEXT             NOT NULL CHECK (direction IN ('up', 'down', 'neutral')),
    confidence DOUBLE PRECISION NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    price      DOUBLE PRECISION,          -- the trade price or the bar close it refers to
    revision   INTEGER          NOT NULL DEFAULT 0,
    params     JSONB            NOT NULL,  -- the settings that produced it
    detail     JSONB            NOT NULL,  -- the kind's own fields (strength, ratio, signal, ...)
    PRIMARY KEY (symbol, timestamp, id)
);
CREATE INDEX events_kind_time_idx ON events (kind, timestamp DESC);

CREATE TABLE indicator_values (
    symbol      VARCHAR(20)      NOT NULL,
    timeframe   TEXT             NOT NULL,
    timestamp   TIMESTAMPTZ      NOT NULL,
    sma         DOUBLE PRECISION,
    ema         DOUBLE PRECISION,
    rsi         DOUBLE PRECISION,
    macd        DOUBLE PRECISION,
    macd_signal DOUBLE PRECISION,
    macd_hist   DOUBLE PRECISION,
    bb_upper    DOUBLE PRECISION,
    bb_middle   DOUBLE PRECISION,
    bb_lower    DOUBLE PRECISION,
    atr         DOUBLE PRECISION,
    vwap        DOUBLE PRECISION,
    revision    INTEGER          NOT NULL DEFAULT 0,
    PRIMARY KEY (symbol, timeframe, timestamp)
);
COMMENT ON TABLE indicator_values IS
    'TA-Lib indicators per bar; periods are the deployment''s detection settings (README: Detection)';

CREATE TABLE alerts (
    symbol     VARCHAR(20)      NOT NULL,
    timestamp  TIMESTAMPTZ      NOT NULL,
    id         TEXT             NOT NULL,
    rule       TEXT             NOT NULL,
    severity   TEXT             NOT NULL CHECK (severity IN ('warning', 'critical')),
    timeframe  TEXT             NOT NULL,
    direction  TEXT             NOT NULL CHECK (direction IN ('up', 'down', 'neutral')),
    confidence DOUBLE PRECISION NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    indicator  TEXT             NOT NULL,
    value      DOUBLE PRECISION NOT NULL,
    threshold  DOUBLE PRECISION NOT NULL,
    message    TEXT             NOT NULL,
    revision   INTEGER          NOT NULL DEFAULT 0,
    params     JSONB            NOT NULL,
    PRIMARY KEY (symbol, timestamp, id)
);
CREATE INDEX alerts_severity_time_idx ON alerts (severity, timestamp DESC);

DO $$
DECLARE
    t TEXT;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        FOREACH t IN ARRAY ARRAY['events', 'indicator_values', 'alerts'] LOOP
            PERFORM create_hypertable(t::regclass, 'timestamp', chunk_time_interval => INTERVAL '1 day',
                                      if_not_exists => true, migrate_data => true);
        END LOOP;
        RAISE NOTICE 'events, indicator_values and alerts are TimescaleDB hypertables (1-day chunks)';
    END IF;
END
$$;
