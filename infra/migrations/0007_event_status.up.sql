-- 0007_event_status: events and alerts decided again after a bar revision, on every timeframe.
--
-- The detection flow makes a decision on a bar again when a revision changes the bars it read
-- (flows/detect/bar_detector.py) and upserts the record under the same id: `status` says what
-- the row's latest word is, `revision` (already there) orders the words (the sink never lets a
-- lower revision replace a higher one).
--   detected   the first decision (every row before this migration)
--   amended    decided again, still holds, with the fields as they are now
--   retracted  decided again, no longer holds; the fields are what was retracted
-- Rows are already keyed by timeframe: an event's id is a function of (kind, symbol, timeframe, bar
-- start, type), indicator_values has the timeframe in its primary key. What is new is that every
-- timeframe (1m, 5m, 15m, 1h, 1d) has rows, so "this symbol, this timeframe, this range" gets an
-- index (events: high/low events have no timeframe and stay in the (symbol, timestamp) key's reach).

ALTER TABLE events ADD COLUMN status TEXT NOT NULL DEFAULT 'detected'
    CONSTRAINT events_status_check CHECK (status IN ('detected', 'amended', 'retracted'));
ALTER TABLE alerts ADD COLUMN status TEXT NOT NULL DEFAULT 'detected'
    CONSTRAINT alerts_status_check CHECK (status IN ('detected', 'amended', 'retracted'));
COMMENT ON COLUMN events.status IS 'detected, amended or retracted: the latest decision on the bar (0007)';
COMMENT ON COLUMN alerts.status IS 'detected, amended or retracted: the latest decision on the bar (0007)';

CREATE INDEX events_symbol_timeframe_time_idx ON events (symbol, timeframe, timestamp DESC) WHERE timeframe IS NOT NULL;
CREATE INDEX alerts_symbol_timeframe_time_idx ON alerts (symbol, timeframe, timestamp DESC);
