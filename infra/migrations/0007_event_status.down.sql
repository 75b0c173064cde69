-- Reverts 0007_event_status: the status columns (amended and retracted rows stay, as their latest fields) and the timeframe indexes.
DROP INDEX alerts_symbol_timeframe_time_idx;
DROP INDEX events_symbol_timeframe_time_idx;
ALTER TABLE alerts DROP COLUMN status;
ALTER TABLE events DROP COLUMN status;
