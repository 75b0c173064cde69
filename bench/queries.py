"""Analyst query latency on a month of 1-minute bars: `python -m bench.queries [--days 30 --symbols 4000]`.

Loads `--days` trading days x `--symbols` symbols x `--minutes` session minutes (390 = the regular
US session, 14:30-21:00 UTC in January) into its own database with COPY, indexes built after the
load as a restore would, then times three queries over repeated runs with random symbols/days:
(a) one symbol-day of 1-minute bars, (b) one symbol-month of 1-hour bars (both through
`connectors.postgres.analyst.bars_on`, i.e. including the DataFrame), (c) the latest bar of every symbol
(`latest_bars`, the trigger-maintained table of migration 0002). Writes p50/p95 in ms to
bench/queries.json, with the machine's load average (the machine is shared: numbers are noisy). A
loaded database of the same shape is reused (migrated to the newest schema first: on plain
PostgreSQL, 0004 builds the 5-minute rollup from the loaded bars); `--reload` forces a fresh load.
`python -m bench.sink` then measures the write path on the same database.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg
from psycopg.conninfo import make_conninfo

from connectors.postgres.analyst import bars_on
from infra import migrate
from infra.databases import ensure_database

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/tickstock_bench_queries"
OUT = Path(__file__).with_name("queries.json")
FIRST_DAY = date(2024, 1, 2)
SESSION_OPEN = timedelta(hours=14, minutes=30)  # 09:30 US/Eastern in winter


def trading_days(n: int) -> list[date]:
    days, d = [], FIRST_DAY
    while len(days) < n:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return days


def symbol_names(n: int) -> list[str]:
    return [f"S{i:04d}" for i in range(n)]


def day_frame(day_index: int, day: date, symbols: int, minutes: int) -> pl.DataFrame:
    """One trading day of plausible bars for every symbol, from a hash (deterministic, no numpy), in
    time order (minute by minute, every symbol), the physical order in which the flow writes them:
    a symbol's rows are spread over the day's pages as in production, not packed together."""
    rows = symbols * minutes
    start = datetime.combine(day, datetime.min.time()) + SESSION_OPEN
    i = pl.int_range(rows, dtype=pl.Int64)
    noise = (i + day_index * rows).hash(7)
    u = (noise % 10_000).cast(pl.Float64) / 10_000
    base = 20 + (i // minutes % 500).cast(pl.Float64) + day_index * 0.05
    close = (base + (i % minutes - minutes / 2) * 0.002 + u).round(4)
    return pl.select(
        symbol=pl.format("S{}", (i // minutes).cast(pl.String).str.zfill(4)),
        timestamp=pl.lit(start) + pl.duration(minutes=i % minutes),
        open=(close - 0.05).round(4),
        high=(close + 0.1 + u / 10).round(4),
        low=(close - 0.1 - u / 10).round(4),
        close=close,
        volume=100 + (noise // 7 % 5000).cast(pl.Int64),
        vwap=(close - 0.01).round(4),
        trades=1 + (noise // 11 % 60).cast(pl.Int64),
    ).sort("timestamp", "symbol")


def load(url: str, days: int, symbols: int, minutes: int) -> float:
    """Fresh schema, COPY every day, then the keys and indexes. Returns seconds taken."""
    began = time.perf_counter()
    migrate.down(url, to=0, log=lambda _: None)
    migrate.up(url, to=1, log=lambda _: None)  # the bars table only: 0002 after the load
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("SET synchronous_commit = off")
        # Bulk-load order: no per-row index maintenance or FK checks; rebuilt below with the same DDL.
        conn.execute("ALTER TABLE ohlcv_1min DROP CONSTRAINT ohlcv_1min_pkey, DROP CONSTRAINT ohlcv_1min_symbol_fkey")
        conn.execute("DROP INDEX ohlcv_1min_timestamp_idx")
        with conn.cursor().copy("COPY symbols (symbol) FROM STDIN") as copy:
            for name in symbol_names(symbols):
                copy.write_row((name,))
        for n, day in enumerate(trading_days(days)):
            frame = day_frame(n, day, symbols, minutes)
            text = frame.write_csv(include_header=False, datetime_format="%Y-%m-%d %H:%M:%S+00")
            with conn.cursor().copy(
                "COPY ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades) FROM STDIN (FORMAT csv)"
            ) as copy:
                copy.write(text)
            print(f"  day {n + 1}/{days}: {frame.height:,} rows, {time.perf_counter() - began:.0f} s", flush=True)
        conn.execute("ALTER TABLE ohlcv_1min ADD PRIMARY KEY (symbol, timestamp)")
        conn.execute(
            "ALTER TABLE ohlcv_1min ADD CONSTRAINT ohlcv_1min_symbol_fkey FOREIGN KEY (symbol) REFERENCES symbols (symbol)"
        )
        conn.execute("CREATE INDEX ohlcv_1min_timestamp_idx ON ohlcv_1min (timestamp DESC)")
        conn.execute("VACUUM ANALYZE ohlcv_1min")
        conn.execute("VACUUM ANALYZE symbols")
    migrate.up(url, log=lambda _: None)  # derived views and rollup (0004), latest_bars, from the bars
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('rollups.bars_5min')").fetchone() != (None,):
            conn.execute("VACUUM ANALYZE rollups.bars_5min")  # as after a restore; autovacuum does it live
    return time.perf_counter() - began


def loaded_shape(url: str) -> tuple[int, int]:
    """(symbols, rows) already in the database; (0, 0) when it has no bars."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('latest_bars')").fetchone() == (None,):
            return 0, 0
        return conn.execute("SELECT (SELECT count(*) FROM symbols), (SELECT count(*) FROM ohlcv_1min)").fetchone()  # type: ignore[return-value]


def percentiles(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """p50/p95 in ms of `repeats` timed runs after a few untimed warm-ups."""
    for _ in range(min(5, repeats)):
        run()
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        samples.append((time.perf_counter() - began) * 1000)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return round(cuts[49], 2), round(cuts[94], 2)


def measure(url: str, days: int, symbols: int, repeats: int) -> dict[str, float]:
    names, day_list, rng = symbol_names(symbols), trading_days(days), random.Random(1)
    month_start = datetime.combine(day_list[0], datetime.min.time(), UTC)
    month_end = datetime.combine(day_list[-1] + timedelta(days=1), datetime.min.time(), UTC)
    results: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:

        def symbol_day() -> None:
            day = datetime.combine(rng.choice(day_list), datetime.min.time(), UTC)
            frame = bars_on(conn, rng.choice(names), day, day + timedelta(days=1), "1m")
            assert frame.height > 0

        def symbol_month() -> None:
            frame = bars_on(conn, rng.choice(names), month_start, month_end, "1h")
            assert frame.height > 0

        def latest_all() -> None:
            assert len(conn.execute("SELECT * FROM latest_bars").fetchall()) == symbols

        for key, run in (("symbol_day_1m", symbol_day), ("symbol_month_1h", symbol_month), ("latest_all", latest_all)):
            p50, p95 = percentiles(run, repeats)
            results[f"{key}_p50_ms"], results[f"{key}_p95_ms"] = p50, p95
            print(f"  {key}: p50 {p50} ms, p95 {p95} ms", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queries", description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=30, help="trading days (default 30)")
    parser.add_argument("--symbols", type=int, default=4000, help="symbols (default 4000)")
    parser.add_argument("--minutes", type=int, default=390, help="bars per symbol-day (390 regular session, 1440 all day)")
    parser.add_argument("--repeats", type=int, default=200, help="timed runs per query")
    parser.add_argument("--reload", action="store_true", help="load even if the database already has this shape")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    ensure_database(args.database_url)
    expected = (args.symbols, args.days * args.symbols * args.minutes)
    load_s = None
    migrate_s = None
    if args.reload or loaded_shape(args.database_url) != expected:
        print(f"loading {expected[1]:,} bars into {make_conninfo(args.database_url)} ...", flush=True)
        load_s = round(load(args.database_url, args.days, args.symbols, args.minutes), 1)
        print(f"loaded in {load_s} s", flush=True)
    else:
        began = time.perf_counter()
        if migrate.up(args.database_url, log=print):  # a reused database gets the newest schema
            migrate_s = round(time.perf_counter() - began, 1)
    load_before = os.getloadavg()
    results: dict[str, object] = dict(measure(args.database_url, args.days, args.symbols, args.repeats))
    results.update(days=args.days, symbols=args.symbols, minutes_per_day=args.minutes, rows=expected[1])
    results["load_average_1m"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]  # before, after
    if load_s is not None:
        results["load_s"] = load_s
    if migrate_s is not None:
        results["migrate_s"] = migrate_s
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
