-- 0006_sessions: daily bars by US/Eastern trading day, beside the UTC days of ohlcv_1day.
--
-- Why: ohlcv_1day is the UTC calendar day, which cuts US after-hours trading (16:00-20:00 New York is
-- 21:00-01:00 UTC in winter) across two days, and puts the pre-market of one day with the evening of
-- the day before. Analysts want the trading day:
--   * ohlcv_1day_regular:  the regular session, 09:30-16:00 America/New_York;
--   * ohlcv_1day_extended: extended hours, 04:00-20:00 America/New_York.
-- Same columns as every bar view (symbol, timestamp, open, high, low, close, volume, vwap, trades, with
-- the same field rules), `timestamp` = the session's open (as a bar's timestamp is its bucket's start),
-- and `day`, the US/Eastern date. The hours are schemas/sessions.py's SESSIONS, the one definition
-- (tests/integration/test_sessions.py holds this file to it). Early closes (half days) and holidays are
-- not modelled: a day without trades has no bar, a half day's regular bar runs to 16:00.
--
-- How: eastern_days holds every US/Eastern date 2000-2059 with its sessions' bounds as UTC instants,
-- computed here by the server's time zone rules (DST-correct: AT TIME ZONE 'America/New_York'). The views
-- join it to the 5-minute rollup (0004; the sessions' bounds are whole 5 minutes in UTC, as New York is a
-- whole number of hours from UTC) by a range on the rollup's key: `WHERE symbol = .. AND timestamp >= ..
-- AND timestamp < ..` on a view becomes a range on eastern_days' open index, then one primary-key range of
-- rollups.bars_5min per day (~78 rows for a regular day, 192 for an extended one): an index range
-- whatever the history length, nothing on the write path. The redundant bound `open > timestamp - 1 day`
-- (a session is shorter than a day) keeps the other join order cheap too: a symbol's whole history,
-- read bar by bar, finds each bar's day by a one-row range instead of scanning every earlier day. Without the rollup (TimescaleDB before 2.18,
-- see 0004) the views read ohlcv_1min's primary key the same way, a minute per row. A change of the
-- time zone rules after this migration needs eastern_days refilled (the INSERT below, after a DELETE).

CREATE TABLE eastern_days (
    day            DATE        PRIMARY KEY,
    regular_open   TIMESTAMPTZ NOT NULL UNIQUE,
    regular_close  TIMESTAMPTZ NOT NULL,
    extended_open  TIMESTAMPTZ NOT NULL UNIQUE,
    extended_close TIMESTAMPTZ NOT NULL
);
COMMENT ON TABLE eastern_days IS
    'every US/Eastern date 2000-2059 with the UTC bounds of its regular (09:30-16:00) and extended (04:00-20:00) sessions';

INSERT INTO eastern_days
SELECT d::date,
       (d::date + TIME '09:30') AT TIME ZONE 'America/New_York',
       (d::date + TIME '16:00') AT TIME ZONE 'America/New_York',
       (d::date + TIME '04:00') AT TIME ZONE 'America/New_York',
       (d::date + TIME '20:00') AT TIME ZONE 'America/New_York'
FROM generate_series(DATE '2000-01-01', DATE '2059-12-31', INTERVAL '1 day') AS d;
ANALYZE eastern_days;

DO $$
DECLARE
    session RECORD;
BEGIN
    FOR session IN
        SELECT * FROM (VALUES
            ('ohlcv_1day_regular',  'regular',  '09:30-16:00'),
            ('ohlcv_1day_extended', 'extended', '04:00-20:00')
        ) AS s (view_name, name, hours)
    LOOP
        IF to_regclass('rollups.bars_5min') IS NOT NULL THEN
            EXECUTE format($sql$
                CREATE VIEW %1$I AS
                SELECT b.symbol,
                       d.%2$I AS timestamp,
                       (array_agg(b.open ORDER BY b.open_at) FILTER (WHERE b.open_at IS NOT NULL))[1] AS open,
                       max(b.high) AS high,
                       min(b.low) AS low,
                       (array_agg(b.close ORDER BY b.close_at DESC) FILTER (WHERE b.close_at IS NOT NULL))[1] AS close,
                       sum(b.volume)::bigint AS volume,
                       sum(b.priced_value) / NULLIF(sum(b.priced_volume), 0) AS vwap,
                       sum(b.trades)::bigint AS trades,
                       d.day
                FROM eastern_days d
                JOIN rollups.bars_5min b ON b.timestamp >= d.%2$I AND b.timestamp < d.%3$I
                                        AND d.%2$I > b.timestamp - INTERVAL '1 day'
                GROUP BY b.symbol, d.%2$I, d.day
            $sql$, session.view_name, session.name || '_open', session.name || '_close');
        ELSE
            EXECUTE format($sql$
                CREATE VIEW %1$I AS
                SELECT m.symbol,
                       d.%2$I AS timestamp,
                       (array_agg(m.open ORDER BY m.timestamp) FILTER (WHERE m.open IS NOT NULL))[1] AS open,
                       max(m.high) AS high,
                       min(m.low) AS low,
                       (array_agg(m.close ORDER BY m.timestamp DESC) FILTER (WHERE m.close IS NOT NULL))[1] AS close,
                       sum(m.volume)::bigint AS volume,
                       sum(m.vwap * m.volume) FILTER (WHERE m.vwap IS NOT NULL AND m.volume > 0)
                         / NULLIF(sum(m.volume) FILTER (WHERE m.vwap IS NOT NULL AND m.volume > 0), 0) AS vwap,
                       sum(m.trades)::bigint AS trades,
                       d.day
                FROM eastern_days d
                JOIN ohlcv_1min m ON m.timestamp >= d.%2$I AND m.timestamp < d.%3$I
                                 AND d.%2$I > m.timestamp - INTERVAL '1 day'
                GROUP BY m.symbol, d.%2$I, d.day
            $sql$, session.view_name, session.name || '_open', session.name || '_close');
        END IF;
        EXECUTE format('COMMENT ON VIEW %I IS %L', session.view_name,
            format('daily bars of the %s session (%s America/New_York) by US/Eastern day; timestamp = the session''s open',
                   session.name, session.hours));
    END LOOP;
END
$$;
