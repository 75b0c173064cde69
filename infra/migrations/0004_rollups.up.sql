-- 0004_rollups: the derived timeframes read a 5-minute rollup maintained on write (plain PostgreSQL,
-- and TimescaleDB 2.18 or newer, in place of 0002's continuous aggregates).
--
-- Why: 0002's views aggregate ohlcv_1min at query time, and PostgreSQL applies a filter on a grouped
-- view's `timestamp` only to the rows it groups, with no index, so `WHERE symbol = 'AAPL' AND
-- timestamp >= ...` aggregated the symbol's whole history (fine for a month, not for years), sorting
-- every group for the ordered open/close aggregates.
--
-- Now rollups.bars_5min holds one row per symbol and 5-minute bucket (open/high/low/close with the
-- minute that set open and close, volume, trades, and VWAP's numerator and denominator), kept
-- current by statement-level triggers on ohlcv_1min, so a revised minute reaches every timeframe in
-- the same transaction. ohlcv_5min reads it as it is; ohlcv_15min/1hour/1day group it (3, 12 and
-- 288 rows per bucket at most). Same names and columns as before and as TimescaleDB's continuous
-- aggregates. Filters on symbol and timestamp are index conditions at every timeframe (see the
-- indexes below), whatever the history length.
--
-- Cost on the write path, per write statement: one UPDATE of the touched buckets through a join
-- (HOT, see fillfactor) plus an INSERT of new buckets. Sums and the minute count move by exact
-- deltas (+ new rows, - old rows); prices merge idempotently (greatest, least, earliest open, latest
-- close). When a revision lowers the high that set a bucket's high (or raises the low, or removes
-- the open/close minute's prices), or a minute leaves the bucket, that bucket's prices are recomputed
-- from its <= 5 minutes. Both are correct whichever order PostgreSQL fires the UPDATE and INSERT
-- triggers of an INSERT .. ON CONFLICT DO UPDATE in (it fires UPDATE first). TRUNCATE empties it.
-- Measured numbers: README (Querying bars), `python -m bench.sink`.
--
-- With TimescaleDB (ohlcv_1min a hypertable) the same rollup replaces 0002's continuous aggregates,
-- for freshness: an aggregate serves its materialized buckets until a refresh, so a revised minute
-- below the watermark (a late trade) stayed invisible at 5m/15m/1h/1d until the next policy run,
-- and refreshing the touched buckets from the sink cost ~2.7 s per minute boundary on the embedded
-- server. Hypertables take statement-level triggers with transition tables from TimescaleDB 2.18
-- (INSERT and UPDATE; DELETE ones are refused once compression is enabled, because deleting a
-- compressed segment builds no transition table), so there the INSERT and UPDATE triggers are the
-- same as on plain PostgreSQL and DELETE is handled row by row (rollups.after_delete_row, and
-- latest_bars_after_write_row). Before 2.18 nothing of the rollup is created: the continuous
-- aggregates stay (README: TimescaleDB). Also a difference there: TimescaleDB refuses an UPDATE
-- that moves a row into another chunk (a changed timestamp across a chunk boundary).
--
-- latest_bars (0002) gets rewritten triggers: SQL over the transition tables directly instead of
-- building and unnesting arrays of rows, an UPDATE through a join instead of ON CONFLICT, rows
-- written only when newer and different, a key change (UPDATE of symbol/timestamp) handled, and
-- fillfactor 40 so the per-minute rewrite of every symbol's row is a HOT update in place. Measured
-- about as fast as 0002's (~10-15 ms per 4,000-bar batch): rewriting 4,000 rows is the cost.

CREATE OR REPLACE FUNCTION pg_temp.bars_are_plain() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN true;
    END IF;
    -- nested: PL/pgSQL would plan the catalog query even without the extension
    RETURN NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'ohlcv_1min');
END
$$;

-- TimescaleDB 2.18 added statement-level triggers with transition tables on hypertables.
CREATE OR REPLACE FUNCTION pg_temp.hypertables_take_transition_tables() RETURNS boolean LANGUAGE sql AS $$
    SELECT coalesce((SELECT string_to_array(split_part(extversion, '-', 1), '.')::int[] >= ARRAY[2, 18]
                     FROM pg_extension WHERE extname = 'timescaledb'), false);
$$;

-- The rollup replaces the timeframes' views (plain PostgreSQL) or continuous aggregates (TimescaleDB 2.18+).
CREATE OR REPLACE FUNCTION pg_temp.rollup_wanted() RETURNS boolean LANGUAGE sql AS $$
    SELECT pg_temp.bars_are_plain() OR pg_temp.hypertables_take_transition_tables();
$$;

-- ---------------------------------------------------------------------------------------------
-- latest_bars
-- ---------------------------------------------------------------------------------------------
-- 0002's triggers (statement-level on plain PostgreSQL, row-level on a hypertable): whichever exist
DO $$
DECLARE
    name TEXT;
BEGIN
    FOR name IN SELECT tgname FROM pg_trigger WHERE tgrelid = 'ohlcv_1min'::regclass
                AND tgname IN ('latest_bars_on_insert', 'latest_bars_on_update', 'latest_bars_on_write', 'latest_bars_on_delete')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON ohlcv_1min', name);
    END LOOP;
END
$$;

ALTER TABLE latest_bars SET (fillfactor = 40);
-- Rewrite it so existing pages get the free space too (a derived table: refilled from ohlcv_1min).
TRUNCATE latest_bars;
INSERT INTO latest_bars
SELECT b.*
FROM symbols s
CROSS JOIN LATERAL (
    SELECT o.symbol, o.timestamp, o.open, o.high, o.low, o.close, o.volume, o.vwap, o.trades, o.revision
    FROM ohlcv_1min o WHERE o.symbol = s.symbol ORDER BY o.timestamp DESC LIMIT 1
) b;

-- Symbols whose latest bar was deleted or moved get their newest remaining bar (or none).
CREATE FUNCTION latest_bars_refill(gone_symbols text[]) RETURNS void LANGUAGE sql AS $fn$
    INSERT INTO latest_bars
    SELECT b.*
    FROM unnest(gone_symbols) AS s (symbol)
    CROSS JOIN LATERAL (
        SELECT o.symbol, o.timestamp, o.open, o.high, o.low, o.close, o.volume, o.vwap, o.trades, o.revision
        FROM ohlcv_1min o WHERE o.symbol = s.symbol ORDER BY o.timestamp DESC LIMIT 1
    ) b
    ON CONFLICT (symbol) DO NOTHING;
$fn$;

-- Plain PostgreSQL: one statement per write statement, over its transition tables.
CREATE FUNCTION latest_bars_after_write() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    gone_symbols text[];
BEGIN
    -- rows that left their (symbol, timestamp): deleted ones, or an UPDATE of the key (the
    -- transition tables differ per event, hence two statements)
    IF TG_OP = 'DELETE' THEN
        WITH forgotten AS (
            DELETE FROM latest_bars l USING old_rows o
            WHERE l.symbol = o.symbol AND l.timestamp = o.timestamp
            RETURNING l.symbol
        )
        SELECT array_agg(symbol) INTO gone_symbols FROM forgotten;
    ELSIF TG_OP = 'UPDATE' THEN
        WITH left_key AS (
            SELECT o.symbol, o.timestamp FROM old_rows o
            EXCEPT
            SELECT n.symbol, n.timestamp FROM new_rows n
        ), forgotten AS (
            DELETE FROM latest_bars l USING left_key k
            WHERE l.symbol = k.symbol AND l.timestamp = k.timestamp
            RETURNING l.symbol
        )
        SELECT array_agg(symbol) INTO gone_symbols FROM forgotten;
    END IF;
    IF gone_symbols IS NOT NULL THEN
        PERFORM latest_bars_refill(gone_symbols);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        -- A written row replaces its symbol's latest bar unless that one is newer (a revision of an
        -- old minute) or equal. A plain UPDATE through a join is cheaper than ON CONFLICT (no
        -- speculative insert, no tuple lock first); only symbols without a row are inserted.
        WITH newest AS (
            SELECT DISTINCT ON (n.symbol)
                   n.symbol, n.timestamp, n.open, n.high, n.low, n.close, n.volume, n.vwap, n.trades, n.revision
            FROM new_rows n
            ORDER BY n.symbol, n.timestamp DESC
        ), replaced AS (
            UPDATE latest_bars l
            SET timestamp = n.timestamp, open = n.open, high = n.high, low = n.low, close = n.close,
                volume = n.volume, vwap = n.vwap, trades = n.trades, revision = n.revision
            FROM newest n
            WHERE l.symbol = n.symbol AND n.timestamp >= l.timestamp
              AND (l.timestamp, l.open, l.high, l.low, l.close, l.volume, l.vwap, l.trades, l.revision)
                  IS DISTINCT FROM
                  (n.timestamp, n.open, n.high, n.low, n.close, n.volume, n.vwap, n.trades, n.revision)
        )
        INSERT INTO latest_bars AS l (symbol, timestamp, open, high, low, close, volume, vwap, trades, revision)
        SELECT n.* FROM newest n
        WHERE NOT EXISTS (SELECT 1 FROM latest_bars x WHERE x.symbol = n.symbol)
        ON CONFLICT (symbol) DO UPDATE SET  -- a concurrent writer inserted it meanwhile
            timestamp = excluded.timestamp, open = excluded.open, high = excluded.high, low = excluded.low,
            close = excluded.close, volume = excluded.volume, vwap = excluded.vwap, trades = excluded.trades,
            revision = excluded.revision
        WHERE excluded.timestamp >= l.timestamp;
    END IF;
    RETURN NULL;
END
$fn$;

-- Hypertables do not take transition tables before TimescaleDB 2.18, nor DELETE ones with compression
-- enabled: the same, row by row.
CREATE FUNCTION latest_bars_after_write_row() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND (OLD.symbol, OLD.timestamp) IS DISTINCT FROM (NEW.symbol, NEW.timestamp)) THEN
        DELETE FROM latest_bars WHERE symbol = OLD.symbol AND timestamp = OLD.timestamp;
        IF FOUND THEN
            PERFORM latest_bars_refill(ARRAY[OLD.symbol::text]);
        END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO latest_bars AS l (symbol, timestamp, open, high, low, close, volume, vwap, trades, revision)
        VALUES (NEW.symbol, NEW.timestamp, NEW.open, NEW.high, NEW.low, NEW.close, NEW.volume, NEW.vwap, NEW.trades,
                NEW.revision)
        ON CONFLICT (symbol) DO UPDATE SET
            timestamp = excluded.timestamp, open = excluded.open, high = excluded.high, low = excluded.low,
            close = excluded.close, volume = excluded.volume, vwap = excluded.vwap, trades = excluded.trades,
            revision = excluded.revision
        WHERE excluded.timestamp >= l.timestamp;
    END IF;
    RETURN NULL;
END
$fn$;

DO $$
BEGIN
    IF pg_temp.bars_are_plain() OR pg_temp.hypertables_take_transition_tables() THEN
        CREATE TRIGGER latest_bars_after_insert AFTER INSERT ON ohlcv_1min
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION latest_bars_after_write();
        CREATE TRIGGER latest_bars_after_update AFTER UPDATE ON ohlcv_1min
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION latest_bars_after_write();
    END IF;
    IF pg_temp.bars_are_plain() THEN
        CREATE TRIGGER latest_bars_after_delete AFTER DELETE ON ohlcv_1min
            REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION latest_bars_after_write();
    ELSIF pg_temp.hypertables_take_transition_tables() THEN
        CREATE TRIGGER latest_bars_after_delete AFTER DELETE ON ohlcv_1min
            FOR EACH ROW EXECUTE FUNCTION latest_bars_after_write_row();
    ELSE
        CREATE TRIGGER latest_bars_after_write AFTER INSERT OR UPDATE OR DELETE ON ohlcv_1min
            FOR EACH ROW EXECUTE FUNCTION latest_bars_after_write_row();
    END IF;
END
$$;

-- Rollup (plain PostgreSQL, TimescaleDB 2.18+)
-- ---------------------------------------------------------------------------------------------
DO $$
DECLARE
    frame RECORD;
BEGIN
    IF NOT pg_temp.rollup_wanted() THEN
        RAISE NOTICE 'ohlcv_1min is a hypertable and TimescaleDB is older than 2.18 (no transition tables on'
                     ' hypertables): the timeframes stay continuous aggregates (0002)';
        RETURN;
    END IF;

    CREATE SCHEMA rollups;
    COMMENT ON SCHEMA rollups IS 'the 5-minute rollup behind ohlcv_5min/15min/1hour/1day';

    -- fillfactor 45: a bucket row is rewritten every minute while its 5 minutes are open, and every
    -- open bucket of a page is rewritten in the same transaction; a page must hold a second version
    -- of each of its rows for all those rewrites to be HOT (in place, no index entries). Closed
    -- buckets keep the space (the price of cheap writes; pg_repack or CLUSTER reclaim it).
    CREATE TABLE rollups.bars_5min (
        symbol        VARCHAR(20) NOT NULL,
        timestamp     TIMESTAMPTZ NOT NULL,  -- bucket start, UTC-aligned
        minutes       INTEGER     NOT NULL,  -- 1-minute rows in the bucket (0: the bucket is deleted)
        open          NUMERIC,
        open_at       TIMESTAMPTZ,           -- minute of the first non-null open
        high          NUMERIC,
        low           NUMERIC,
        close         NUMERIC,
        close_at      TIMESTAMPTZ,           -- minute of the last non-null close
        volume        BIGINT      NOT NULL,
        priced_value  NUMERIC     NOT NULL,  -- sum(vwap * volume) over minutes with a vwap and volume
        priced_volume BIGINT      NOT NULL,  -- sum(volume) over the same minutes
        trades        BIGINT      NOT NULL,
        PRIMARY KEY (symbol, timestamp)
    ) WITH (fillfactor = 45);

    -- physically in time order, as live writes will be: what the BRIN index below relies on
    INSERT INTO rollups.bars_5min
    SELECT symbol,
           date_bin('5 minutes', timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
           count(*),
           (array_agg(open ORDER BY timestamp) FILTER (WHERE open IS NOT NULL))[1],
           min(timestamp) FILTER (WHERE open IS NOT NULL),
           max(high),
           min(low),
           (array_agg(close ORDER BY timestamp DESC) FILTER (WHERE close IS NOT NULL))[1],
           max(timestamp) FILTER (WHERE close IS NOT NULL),
           sum(volume),
           coalesce(sum(vwap * volume) FILTER (WHERE vwap IS NOT NULL AND volume > 0), 0),
           coalesce(sum(volume) FILTER (WHERE vwap IS NOT NULL AND volume > 0), 0),
           sum(trades)
    FROM ohlcv_1min
    GROUP BY 1, 2
    ORDER BY 2, 1;

    -- ohlcv_5min reads the rollup as it is: a symbol and time range is a primary-key range scan.
    -- The coarser views group it; a filter on their `timestamp` reaches the rollup as
    -- `date_bin(width, timestamp, origin) <op> value`, which this BRIN index answers: rows are
    -- written in time order, so its block ranges are time ranges. With a symbol filter too,
    -- PostgreSQL ANDs the BRIN bitmap with the primary key's, fetching only that symbol's rows in
    -- that time range. A BRIN index costs next to nothing to maintain. Three btrees on
    -- (symbol, date_bin(width, timestamp)) answered a little faster, but each new bucket then
    -- touched four symbol-ordered btrees: the sink's batch at every 5-minute boundary took ~100 ms
    -- more (its p95 over batches went from ~130 to 200-235 ms).
    -- The timestamp btree is appended at its right end only (new buckets are the newest): cheap.
    -- It finds the open buckets for the merge below, and answers ohlcv_5min across symbols.
    CREATE INDEX bars_5min_timestamp_idx ON rollups.bars_5min (timestamp);
    CREATE INDEX bars_5min_time_brin ON rollups.bars_5min USING brin (
        timestamp,
        date_bin('15 minutes', timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
        date_bin('1 hour', timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
        date_bin('1 day', timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00')
    ) WITH (pages_per_range = 32);
    -- New block ranges are summarized by VACUUM: have autovacuum visit the rollup every ~20k new
    -- buckets (~25 minutes of 4,000 live symbols) rather than at 20 % growth, so the BRIN index
    -- stays selective for recent days (and the visibility map current).
    ALTER TABLE rollups.bars_5min SET (autovacuum_vacuum_insert_threshold = 20000,
                                       autovacuum_vacuum_insert_scale_factor = 0);
    FOR frame IN
        SELECT * FROM (VALUES
            ('ohlcv_5min',  INTERVAL '5 minutes',  '5min'),
            ('ohlcv_15min', INTERVAL '15 minutes', '15min'),
            ('ohlcv_1hour', INTERVAL '1 hour',     '1hour'),
            ('ohlcv_1day',  INTERVAL '1 day',      '1day')
        ) AS f (view_name, width, label)
    LOOP
        IF pg_temp.bars_are_plain() THEN
            EXECUTE format('DROP VIEW %I', frame.view_name);
        ELSE
            -- 0002's continuous aggregate, with its refresh policy and materialized hypertable
            EXECUTE format('DROP MATERIALIZED VIEW %I', frame.view_name);
        END IF;
        IF frame.label = '5min' THEN
            CREATE VIEW ohlcv_5min AS
            SELECT symbol, timestamp, open, high, low, close, volume,
                   priced_value / NULLIF(priced_volume, 0) AS vwap,
                   trades
            FROM rollups.bars_5min;
        ELSE
            EXECUTE format($sql$
                CREATE VIEW %I AS
                SELECT symbol,
                       date_bin(%L::interval, timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS timestamp,
                       (array_agg(open ORDER BY open_at) FILTER (WHERE open_at IS NOT NULL))[1] AS open,
                       max(high) AS high,
                       min(low) AS low,
                       (array_agg(close ORDER BY close_at DESC) FILTER (WHERE close_at IS NOT NULL))[1] AS close,
                       sum(volume)::bigint AS volume,
                       sum(priced_value) / NULLIF(sum(priced_volume), 0) AS vwap,
                       sum(trades)::bigint AS trades
                FROM rollups.bars_5min
                GROUP BY 1, 2
            $sql$, frame.view_name, frame.width);
        END IF;
        EXECUTE format('COMMENT ON VIEW %I IS %L', frame.view_name,
            format('%s bars from ohlcv_1min, buckets aligned to UTC (timestamp = bucket start), '
                   'from the 5-minute rollup rollups.bars_5min', frame.width));
    END LOOP;

    -- open/high/low/close of the given buckets from ohlcv_1min, for when a minute that set one of
    -- them was revised downwards, lost its prices or went away (max/min/first/last cannot be
    -- "subtracted"); the sums are never recomputed, they are maintained by exact deltas.
    CREATE FUNCTION rollups.recompute_prices(symbols text[], buckets timestamptz[]) RETURNS void LANGUAGE sql AS $fn$
        UPDATE rollups.bars_5min r
        SET open = p.open, open_at = p.open_at, high = p.high, low = p.low, close = p.close, close_at = p.close_at
        FROM (SELECT DISTINCT * FROM unnest(symbols, buckets) AS t (symbol, bucket)) t
        CROSS JOIN LATERAL (
            SELECT (array_agg(c.open ORDER BY c.timestamp) FILTER (WHERE c.open IS NOT NULL))[1] AS open,
                   min(c.timestamp) FILTER (WHERE c.open IS NOT NULL) AS open_at,
                   max(c.high) AS high,
                   min(c.low) AS low,
                   (array_agg(c.close ORDER BY c.timestamp DESC) FILTER (WHERE c.close IS NOT NULL))[1] AS close,
                   max(c.timestamp) FILTER (WHERE c.close IS NOT NULL) AS close_at
            FROM ohlcv_1min c
            WHERE c.symbol = t.symbol AND c.timestamp >= t.bucket AND c.timestamp < t.bucket + INTERVAL '5 minutes'
        ) p
        WHERE r.symbol = t.symbol AND r.timestamp = t.bucket;
    $fn$;

    -- The merge, one statement per write statement. Sums and the minute count change by exact
    -- deltas (+ new rows, - old rows), so every row counts once whatever the order in which
    -- PostgreSQL fires the UPDATE and INSERT triggers of an INSERT .. ON CONFLICT DO UPDATE (UPDATE
    -- first). Prices merge idempotently (greatest/least/earliest/latest), so merging a row that a
    -- recompute already saw changes nothing.
    -- enable_mergejoin off: every open bucket of a minute has the same timestamp, and a merge join
    -- on it (which row estimates of transition tables can make look cheap) degenerates into a
    -- cross product; hash joins and key probes are what these joins need.
    CREATE FUNCTION rollups.after_write() RETURNS trigger LANGUAGE plpgsql SET enable_mergejoin = off AS $fn$
    DECLARE
        symbols text[];          -- buckets whose prices need a recompute
        buckets timestamptz[];
        empty_symbols text[];    -- buckets left without minutes
        empty_buckets timestamptz[];
        lo timestamptz;          -- first and last bucket an INSERT touched
        hi timestamptz;
    BEGIN
        IF TG_OP = 'INSERT' THEN
            -- The statement's time span, as plan-time values (EXECUTE .. USING plans with them): a
            -- minute's batch touches one or two buckets, whose rows the timestamp index finds in a
            -- few adjacent pages, instead of one primary-key probe per symbol.
            SELECT date_bin('5 minutes', min(timestamp), TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                   date_bin('5 minutes', max(timestamp), TIMESTAMPTZ '2000-01-01 00:00:00+00')
            INTO lo, hi
            FROM new_rows;
            EXECUTE $merge$
            WITH added AS (
                SELECT symbol, date_bin('5 minutes', timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
                       count(*) AS minutes,
                       min(timestamp) FILTER (WHERE open IS NOT NULL) AS open_at,
                       max(high) AS high,
                       min(low) AS low,
                       max(timestamp) FILTER (WHERE close IS NOT NULL) AS close_at,
                       sum(volume) AS volume,
                       coalesce(sum(vwap * volume) FILTER (WHERE vwap IS NOT NULL AND volume > 0), 0) AS priced_value,
                       coalesce(sum(volume) FILTER (WHERE vwap IS NOT NULL AND volume > 0), 0) AS priced_volume,
                       sum(trades) AS trades
                FROM new_rows
                GROUP BY 1, 2
            )
            , priced AS (
                SELECT a.*, o.open, c.close
                FROM added a
                LEFT JOIN new_rows o ON o.symbol = a.symbol AND o.timestamp = a.open_at
                LEFT JOIN new_rows c ON c.symbol = a.symbol AND c.timestamp = a.close_at
            ), merged AS (  -- buckets that exist: a plain UPDATE through a join (cheaper than ON CONFLICT)
                UPDATE rollups.bars_5min r
                SET minutes = r.minutes + p.minutes,
                    open = CASE WHEN r.open_at IS NULL OR p.open_at <= r.open_at THEN coalesce(p.open, r.open) ELSE r.open END,
                    open_at = least(r.open_at, p.open_at),
                    high = greatest(r.high, p.high),
                    low = least(r.low, p.low),
                    close = CASE WHEN r.close_at IS NULL OR p.close_at >= r.close_at THEN coalesce(p.close, r.close) ELSE r.close END,
                    close_at = greatest(r.close_at, p.close_at),
                    volume = r.volume + p.volume,
                    priced_value = r.priced_value + p.priced_value,
                    priced_volume = r.priced_volume + p.priced_volume,
                    trades = r.trades + p.trades
                FROM priced p
                WHERE r.timestamp BETWEEN $1 AND $2 AND r.symbol = p.symbol AND r.timestamp = p.bucket
                RETURNING r.symbol, r.timestamp
            )
            INSERT INTO rollups.bars_5min AS r (symbol, timestamp, minutes, open, open_at, high, low, close, close_at,
                                                volume, priced_value, priced_volume, trades)
            SELECT p.symbol, p.bucket, p.minutes, p.open, p.open_at, p.high, p.low, p.close, p.close_at,
                   p.volume, p.priced_value, p.priced_volume, p.trades
            FROM priced p
            WHERE NOT EXISTS (SELECT 1 FROM merged m WHERE m.symbol = p.symbol AND m.timestamp = p.bucket)
            ON CONFLICT (symbol, timestamp) DO UPDATE SET  -- a concurrent writer inserted it meanwhile
                minutes = r.minutes + excluded.minutes,
                open = CASE WHEN r.open_at IS NULL OR excluded.open_at <= r.open_at THEN coalesce(excluded.open, r.open) ELSE r.open END,
                open_at = least(r.open_at, excluded.open_at),
                high = greatest(r.high, excluded.high),
                low = least(r.low, excluded.low),
                close = CASE WHEN r.close_at IS NULL OR excluded.close_at >= r.close_at THEN coalesce(excluded.close, r.close) ELSE r.close END,
                close_at = greatest(r.close_at, excluded.close_at),
                volume = r.volume + excluded.volume,
                priced_value = r.priced_value + excluded.priced_value,
                priced_volume = r.priced_volume + excluded.priced_volume,
                trades = r.trades + excluded.trades
            $merge$ USING lo, hi;
            RETURN NULL;
        END IF;

        IF TG_OP = 'UPDATE' THEN
            -- deltas: + new rows, - old rows, per bucket; prices merged from the new rows. No join
            -- between the transition tables: their row counts are unknown when this plan is cached,
            -- and a nested loop over two of them is quadratic.
            WITH changes AS (
                SELECT symbol, timestamp, 1 AS sign, open, high, low, close, volume, vwap, trades FROM new_rows
                UNION ALL
                SELECT symbol, timestamp, -1, NULL, NULL, NULL, NULL, volume, vwap, trades FROM old_rows
            ), delta AS (
                SELECT symbol, date_bin('5 minutes', timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
                       sum(sign) AS minutes,
                       (array_agg(open ORDER BY timestamp) FILTER (WHERE open IS NOT NULL))[1] AS open,
                       min(timestamp) FILTER (WHERE open IS NOT NULL) AS open_at,
                       max(high) AS high,
                       min(low) AS low,
                       (array_agg(close ORDER BY timestamp DESC) FILTER (WHERE close IS NOT NULL))[1] AS close,
                       max(timestamp) FILTER (WHERE close IS NOT NULL) AS close_at,
                       sum(sign * volume) AS volume,
                       coalesce(sum(sign * vwap * volume) FILTER (WHERE vwap IS NOT NULL AND volume > 0), 0) AS priced_value,
                       coalesce(sum(sign * volume) FILTER (WHERE vwap IS NOT NULL AND volume > 0), 0) AS priced_volume,
                       sum(sign * trades) AS trades
                FROM changes
                GROUP BY 1, 2
            ), merged AS (
                INSERT INTO rollups.bars_5min AS r (symbol, timestamp, minutes, open, open_at, high, low, close, close_at,
                                                    volume, priced_value, priced_volume, trades)
                SELECT symbol, bucket, minutes, open, open_at, high, low, close, close_at,
                       volume, priced_value, priced_volume, trades
                FROM delta
                ON CONFLICT (symbol, timestamp) DO UPDATE SET
                    minutes = r.minutes + excluded.minutes,
                    open = CASE WHEN r.open_at IS NULL OR excluded.open_at <= r.open_at THEN coalesce(excluded.open, r.open) ELSE r.open END,
                    open_at = least(r.open_at, excluded.open_at),
                    high = greatest(r.high, excluded.high),
                    low = least(r.low, excluded.low),
                    close = CASE WHEN r.close_at IS NULL OR excluded.close_at >= r.close_at THEN coalesce(excluded.close, r.close) ELSE r.close END,
                    close_at = greatest(r.close_at, excluded.close_at),
                    volume = r.volume + excluded.volume,
                    priced_value = r.priced_value + excluded.priced_value,
                    priced_volume = r.priced_volume + excluded.priced_volume,
                    trades = r.trades + excluded.trades
                RETURNING r.symbol, r.timestamp, r.minutes
            )
            SELECT array_agg(symbol), array_agg(timestamp) INTO empty_symbols, empty_buckets
            FROM merged WHERE minutes <= 0;

            -- buckets whose prices a merge cannot fix: an old row left the bucket (key changed), or
            -- its high fell, its low rose, or its open/close became NULL (old and new side by side
            -- per key, by grouping rather than joining)
            SELECT array_agg(symbol), array_agg(date_bin('5 minutes', timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00'))
            INTO symbols, buckets
            FROM (
                SELECT symbol, timestamp,
                       count(*) FILTER (WHERE side = 'new') AS kept,
                       max(high) FILTER (WHERE side = 'old') AS old_high, max(high) FILTER (WHERE side = 'new') AS new_high,
                       max(low) FILTER (WHERE side = 'old') AS old_low, max(low) FILTER (WHERE side = 'new') AS new_low,
                       bool_or(open IS NOT NULL) FILTER (WHERE side = 'old') AS old_open,
                       bool_or(open IS NOT NULL) FILTER (WHERE side = 'new') AS new_open,
                       bool_or(close IS NOT NULL) FILTER (WHERE side = 'old') AS old_close,
                       bool_or(close IS NOT NULL) FILTER (WHERE side = 'new') AS new_close
                FROM (
                    SELECT 'old' AS side, symbol, timestamp, open, high, low, close FROM old_rows
                    UNION ALL
                    SELECT 'new', symbol, timestamp, open, high, low, close FROM new_rows
                ) AS sides
                GROUP BY symbol, timestamp
            ) AS k
            WHERE old_open IS NOT NULL  -- the key had an old row
              AND (kept = 0
                   OR old_high > new_high OR (old_high IS NOT NULL AND new_high IS NULL)
                   OR old_low < new_low OR (old_low IS NOT NULL AND new_low IS NULL)
                   OR (old_open AND NOT new_open)
                   OR (old_close AND NOT new_close));
        ELSE  -- DELETE
            WITH delta AS (
                SELECT symbol, date_bin('5 minutes', timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
                       count(*) AS minutes,
                       sum(volume) AS volume,
                       coalesce(sum(vwap * volume) FILTER (WHERE vwap IS NOT NULL AND volume > 0), 0) AS priced_value,
                       coalesce(sum(volume) FILTER (WHERE vwap IS NOT NULL AND volume > 0), 0) AS priced_volume,
                       sum(trades) AS trades
                FROM old_rows
                GROUP BY 1, 2
            )
            , shrunk AS (
                UPDATE rollups.bars_5min r
                SET minutes = r.minutes - d.minutes, volume = r.volume - d.volume,
                    priced_value = r.priced_value - d.priced_value, priced_volume = r.priced_volume - d.priced_volume,
                    trades = r.trades - d.trades
                FROM delta d
                WHERE r.symbol = d.symbol AND r.timestamp = d.bucket
                RETURNING r.symbol, r.timestamp, r.minutes
            )
            SELECT array_agg(symbol) FILTER (WHERE minutes <= 0), array_agg(timestamp) FILTER (WHERE minutes <= 0),
                   array_agg(symbol) FILTER (WHERE minutes > 0), array_agg(timestamp) FILTER (WHERE minutes > 0)
            INTO empty_symbols, empty_buckets, symbols, buckets
            FROM shrunk;
        END IF;

        -- by exact key (arrays are opaque to the planner: a join on them must lead with them)
        IF empty_symbols IS NOT NULL THEN
            DELETE FROM rollups.bars_5min r
            USING unnest(empty_symbols, empty_buckets) AS t (symbol, bucket)
            WHERE r.symbol = t.symbol AND r.timestamp = t.bucket;
        END IF;
        IF symbols IS NOT NULL THEN
            PERFORM rollups.recompute_prices(symbols, buckets);
        END IF;
        RETURN NULL;
    END
    $fn$;

    -- A hypertable's DELETE, row by row (see the header): the minute's sums leave its bucket, then
    -- the bucket goes (no minutes left) or its prices are recomputed from the minutes that remain.
    -- AFTER ROW triggers run when the statement is done, so the recompute sees all its deletes.
    CREATE FUNCTION rollups.after_delete_row() RETURNS trigger LANGUAGE plpgsql AS $fn$
    DECLARE
        bucket timestamptz := date_bin('5 minutes', OLD.timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00');
        priced boolean := OLD.vwap IS NOT NULL AND OLD.volume > 0;
        remaining integer;
    BEGIN
        UPDATE rollups.bars_5min r
        SET minutes = r.minutes - 1, volume = r.volume - OLD.volume,
            priced_value = r.priced_value - CASE WHEN priced THEN OLD.vwap * OLD.volume ELSE 0 END,
            priced_volume = r.priced_volume - CASE WHEN priced THEN OLD.volume ELSE 0 END,
            trades = r.trades - OLD.trades
        WHERE r.symbol = OLD.symbol AND r.timestamp = bucket
        RETURNING r.minutes INTO remaining;
        IF remaining <= 0 THEN
            DELETE FROM rollups.bars_5min r WHERE r.symbol = OLD.symbol AND r.timestamp = bucket;
        ELSIF remaining IS NOT NULL THEN
            PERFORM rollups.recompute_prices(ARRAY[OLD.symbol::text], ARRAY[bucket]);
        END IF;
        RETURN NULL;
    END
    $fn$;

    CREATE FUNCTION rollups.clear() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        TRUNCATE rollups.bars_5min;
        RETURN NULL;
    END
    $fn$;

    CREATE TRIGGER rollups_after_insert AFTER INSERT ON ohlcv_1min
        REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION rollups.after_write();
    CREATE TRIGGER rollups_after_update AFTER UPDATE ON ohlcv_1min
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION rollups.after_write();
    IF pg_temp.bars_are_plain() THEN
        CREATE TRIGGER rollups_after_delete AFTER DELETE ON ohlcv_1min
            REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION rollups.after_write();
    ELSE
        CREATE TRIGGER rollups_after_delete AFTER DELETE ON ohlcv_1min
            FOR EACH ROW EXECUTE FUNCTION rollups.after_delete_row();
    END IF;
    CREATE TRIGGER rollups_after_truncate AFTER TRUNCATE ON ohlcv_1min
        FOR EACH STATEMENT EXECUTE FUNCTION rollups.clear();
    ANALYZE rollups.bars_5min;
END
$$;

ANALYZE latest_bars;
