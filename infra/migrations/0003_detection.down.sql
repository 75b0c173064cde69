-- Reverts 0003_detection: the detection tables and what they hold.
DROP TABLE alerts;
DROP TABLE indicator_values;
DROP TABLE events;
