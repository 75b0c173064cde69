-- Reverts 0006_sessions: the trading-day views and their calendar; the bars are untouched.
DROP VIEW ohlcv_1day_extended;
DROP VIEW ohlcv_1day_regular;
DROP TABLE eastern_days;
