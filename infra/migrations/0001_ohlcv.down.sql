-- Reverts 0001_ohlcv. Drops the bars; the timescaledb extension stays (other databases' objects may use it).
DROP TABLE ohlcv_1min;
DROP TABLE symbols;
