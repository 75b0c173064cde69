"""Analyst query latency on both databases, warm and cold: `python -m bench.queries [--days 30 --symbols 4000]`.

One run measures plain PostgreSQL and TimescaleDB side by side (`--databases`), into one
bench/queries.json. Each gets `--days` trading days x `--symbols` symbols x `--minutes` session
minutes (390 = the regular US session, 14:30-21:00 UTC in January) loaded with COPY, in time
order (minute by minute, every symbol: the order the flow writes them), then migrated to the
newest schema (`--schema N` for an older one: before/after comparisons on the same data), and
times three queries over random symbols and days: (a) one symbol-day of 1-minute bars, (b) one
symbol-month (all loaded days) of 1-hour bars, both through `connectors.postgres.analyst.bars_on`
(i.e. including the DataFrame), (c) the latest bar of every symbol (`latest_bars`).

Where: plain PostgreSQL is a cluster of the bench's own (bench/cluster.py: PostgreSQL 15 on port
5439, 16 MB of shared buffers, data in /var/lib/postgresql/tickstock-bench; `--postgres-url` for
another server, which is then never restarted). TimescaleDB is the embedded one (PGlite +
TimescaleDB 2.23, infra/embedded_timescale.py) on a data directory on disk (`--ts-data-dir`;
PGlite is 32-bit WebAssembly with a memory cap, so it gets a smaller shape: `--ts-days`,
`--ts-symbols`), its closed days compressed by running the compression policy's job (segment by
symbol, as in production; everything loaded is older than TIMESCALE_COMPRESS_AFTER). A loaded
database of the same shape is reused; `--reload` forces a fresh load.

Warm: every file of the database read into the page cache first, then `--repeats` timed runs
(after 5 untimed ones). Cold, as production reads a database that does not fit in memory, made
without /proc/sys/vm/drop_caches (not writable here), for each of `--cold-repeats` samples: the
server restarted (empty shared buffers; PGlite's are 128 MB, so on the embedded server this is
the only way), one untimed query on another symbol and day (the catalogs and B-tree roots a busy
server has cached), a CHECKPOINT, every relation file of the database dropped from the page cache
(posix_fadvise DONTNEED, bench/cluster.py), then the one timed query, whose reads come from disk.
The JSON says how cold was made, the shapes and sizes, the plans' scan nodes, and the load
average before/after (the machine is shared: numbers are noisy). `python -m bench.sink` then
measures the write path on the same databases.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg

from bench import cluster
from bench.cluster import evict
from connectors.postgres.analyst import bars_on
from connectors.postgres.queries import BARS_IN_RANGE
from infra import migrate
from infra.databases import ensure_database
from infra.embedded_timescale import EmbeddedTimescale
from infra.policies import PolicySettings
from infra.policies import apply as apply_policies

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


DEFAULT_TS_DIR = Path("/var/tmp/tickstock-bench-timescale")
TARGETS_MS = {"symbol_day_1m": 20, "symbol_month_1h": 50, "latest_all": 50}
QUERIES = tuple(TARGETS_MS)
COLD_METHOD = (
    "per sample: server restarted (shared buffers empty), one untimed query on another symbol-day,"
    " CHECKPOINT, posix_fadvise(DONTNEED) on every relation file of the database (page cache dropped),"
    " then the timed query; /proc/sys/vm/drop_caches is not writable here"
)
WARM_METHOD = "every database file read into the page cache first, 5 untimed runs, then the timed ones"

Log = Callable[[str], None]


@dataclass
class Target:
    """One database to measure: how to reach it, restart it and find its files."""

    kind: str  # "postgres" or "timescaledb"
    days: int
    symbols: int
    minutes: int
    connect_url: Callable[[], str]
    restart: Callable[[], None] | None  # None: not ours to restart (cold = page cache only)
    files: Callable[[psycopg.Connection], list[Path]]

    @property
    def rows(self) -> int:
        return self.days * self.symbols * self.minutes

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.connect_url(), autocommit=True)


def _copy_days(conn: psycopg.Connection, days: int, symbols: int, minutes: int, piece_rows: int, began: float) -> None:
    with conn.cursor().copy("COPY symbols (symbol) FROM STDIN") as copy:
        for name in symbol_names(symbols):
            copy.write_row((name,))
    for n, day in enumerate(trading_days(days)):
        frame = day_frame(n, day, symbols, minutes)
        for offset in range(0, frame.height, piece_rows):  # the embedded server holds a COPY whole
            text = frame.slice(offset, piece_rows).write_csv(include_header=False, datetime_format="%Y-%m-%d %H:%M:%S+00")
            with conn.cursor().copy(
                "COPY ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades) FROM STDIN (FORMAT csv)"
            ) as copy:
                copy.write(text)
        print(f"  day {n + 1}/{days}: {frame.height:,} rows, {time.perf_counter() - began:.0f} s", flush=True)


def load(target: Target, schema: int | None) -> float:
    """Fresh schema, COPY every day, then the keys and indexes (plain PostgreSQL: built after the load, as
    a restore would; TimescaleDB: in place, then the closed days compressed). Returns seconds taken."""
    began = time.perf_counter()
    url = target.connect_url()
    migrate.down(url, to=0, log=lambda _: None)
    migrate.up(url, to=1, log=lambda _: None)  # the bars table only: 0002 after the load
    with target.connect() as conn:
        if target.kind == "postgres":
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute("SET synchronous_commit = off")
            # Bulk-load order: no per-row index maintenance or FK checks; rebuilt below with the same DDL.
            conn.execute("ALTER TABLE ohlcv_1min DROP CONSTRAINT ohlcv_1min_pkey, DROP CONSTRAINT ohlcv_1min_symbol_fkey")
            conn.execute("DROP INDEX ohlcv_1min_timestamp_idx")
            _copy_days(conn, target.days, target.symbols, target.minutes, 10**9, began)
            conn.execute("ALTER TABLE ohlcv_1min ADD PRIMARY KEY (symbol, timestamp)")
            conn.execute(
                "ALTER TABLE ohlcv_1min ADD CONSTRAINT ohlcv_1min_symbol_fkey FOREIGN KEY (symbol) REFERENCES symbols (symbol)"
            )
            conn.execute("CREATE INDEX ohlcv_1min_timestamp_idx ON ohlcv_1min (timestamp DESC)")
        else:
            _copy_days(conn, target.days, target.symbols, target.minutes, 100_000, began)
    migrate.up(url, to=schema, log=lambda _: None)  # derived tables (0004's rollup, latest_bars), 0005
    settle(target)
    return time.perf_counter() - began


def settle(target: Target) -> None:
    """What a live database has for closed days: compressed chunks (TimescaleDB, the policy's own job),
    statistics and a current visibility map (autovacuum)."""
    if target.kind == "timescaledb":  # before our session: the embedded server serves one at a time
        apply_policies(target.connect_url(), PolicySettings(), log=lambda _: None)
    with target.connect() as conn:
        if target.kind == "timescaledb":
            job = conn.execute(
                "SELECT job_id FROM timescaledb_information.jobs"
                " WHERE proc_name = 'policy_compression' AND hypertable_name = 'ohlcv_1min'"
            ).fetchone()
            if job is not None:
                conn.execute(f"CALL run_job({int(job[0])})")
        for table in ("ohlcv_1min", "symbols", "latest_bars", "rollups.bars_5min"):
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() != (None,):
                conn.execute(f"VACUUM ANALYZE {table}")


def loaded_shape(target: Target) -> tuple[int, int]:
    """(symbols, rows) already in the database; (0, 0) when it has no bars."""
    with target.connect() as conn:
        if conn.execute("SELECT to_regclass('latest_bars')").fetchone() == (None,):
            return 0, 0
        return conn.execute("SELECT (SELECT count(*) FROM symbols), (SELECT count(*) FROM ohlcv_1min)").fetchone()  # type: ignore[return-value]


def _queries(target: Target, conn: psycopg.Connection, rng: random.Random) -> dict[str, Callable[[], object]]:
    names, day_list = symbol_names(target.symbols), trading_days(target.days)
    month_start = datetime.combine(day_list[0], datetime.min.time(), UTC)
    month_end = datetime.combine(day_list[-1] + timedelta(days=1), datetime.min.time(), UTC)

    def symbol_day() -> None:
        day = datetime.combine(rng.choice(day_list), datetime.min.time(), UTC)
        frame = bars_on(conn, rng.choice(names), day, day + timedelta(days=1), "1m")
        assert frame.height == target.minutes

    def symbol_month() -> None:
        frame = bars_on(conn, rng.choice(names), month_start, month_end, "1h")
        assert frame.height > 0

    def latest_all() -> None:
        assert len(conn.execute("SELECT * FROM latest_bars").fetchall()) == target.symbols

    return {"symbol_day_1m": symbol_day, "symbol_month_1h": symbol_month, "latest_all": latest_all}


def _quantiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49], 2), "p95_ms": round(cuts[94], 2), "max_ms": round(max(samples), 2)}


def _timed(run: Callable[[], object]) -> float:
    began = time.perf_counter()
    run()
    return (time.perf_counter() - began) * 1000


def warm(target: Target, repeats: int) -> dict[str, dict[str, float]]:
    results = {}
    with target.connect() as conn:
        for path in target.files(conn):  # into the page cache
            with path.open("rb") as f:
                while f.read(1 << 22):
                    pass
        rng = random.Random(1)
        for key, run in _queries(target, conn, rng).items():
            for _ in range(min(5, repeats)):
                run()
            results[key] = _quantiles([_timed(run) for _ in range(repeats)])
            print(f"  {target.kind} warm {key}: {results[key]}", flush=True)
    return results


def cold(target: Target, repeats: int) -> dict[str, dict[str, float]]:
    results = {}
    rng, other = random.Random(2), random.Random(3)
    for key in QUERIES:
        samples = []
        for _ in range(repeats):
            if target.restart is not None:
                target.restart()
            with target.connect() as conn:
                _queries(target, conn, other)["symbol_day_1m"]()  # catalogs, B-tree roots: another symbol-day
                conn.execute("CHECKPOINT")
                evict(target.files(conn))
                samples.append(_timed(_queries(target, conn, rng)[key]))
        results[key] = _quantiles(samples)
        print(f"  {target.kind} cold {key}: {results[key]}", flush=True)
    return results


def plans(target: Target) -> dict[str, list[str]]:
    """The scan nodes of each query's plan, with their buffer counts (EXPLAIN ANALYZE, BUFFERS), warm."""
    found = {}
    day = datetime.combine(trading_days(target.days)[-1], datetime.min.time(), UTC)
    first = datetime.combine(trading_days(target.days)[0], datetime.min.time(), UTC)
    with target.connect() as conn:
        for key, timeframe, start, end in (("symbol_day_1m", "1m", day, day + timedelta(days=1)),
                                           ("symbol_month_1h", "1h", first, day + timedelta(days=1))):  # fmt: skip
            query = BARS_IN_RANGE[timeframe].as_string(conn)
            lines = conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + query, {"symbols": ["S0001"], "start": start, "end": end}
            ).fetchall()
            found[key] = [r[0].strip() for r in lines if "Scan" in r[0] or "Buffers" in r[0]][:8]
    return found


def describe_target(target: Target) -> dict[str, object]:
    with target.connect() as conn:
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]  # type: ignore[index]
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
        ts = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        compressed = None
        if ts is not None:
            compressed = conn.execute(
                "SELECT count(*) FILTER (WHERE is_compressed), count(*) FROM timescaledb_information.chunks"
                " WHERE hypertable_name = 'ohlcv_1min'"
            ).fetchone()
        server = conn.execute("SELECT version()").fetchone()[0].split(" on ")[0]  # type: ignore[index]
        shared = conn.execute("SHOW shared_buffers").fetchone()[0]  # type: ignore[index]
    info: dict[str, object] = {
        "server": server + (f", TimescaleDB {ts[0]}" if ts else ""),
        "shared_buffers": shared,
        "days": target.days,
        "symbols": target.symbols,
        "minutes_per_day": target.minutes,
        "rows": target.rows,
        "database_bytes": size,
        "schema_version": version,
    }
    if compressed is not None:
        info["ohlcv_1min_chunks_compressed"] = f"{compressed[0]} of {compressed[1]}"
    return info


def _postgres(args: argparse.Namespace) -> Target:
    if args.postgres_url is None:
        cluster.start(args.cluster_dir, args.cluster_port)
        url = cluster.url(args.cluster_port, args.postgres_db)
        restart: Callable[[], None] | None = lambda: (cluster.restart(args.cluster_dir, args.cluster_port), None)[1]  # noqa: E731
    else:
        url, restart = args.postgres_url, None
    ensure_database(url)

    def files(conn: psycopg.Connection) -> list[Path]:
        return cluster.relation_files(conn, Path(conn.execute("SHOW data_directory").fetchone()[0]))  # type: ignore[index]

    return Target("postgres", args.days, args.symbols, args.minutes, lambda: url, restart, files)


class _Embedded:
    """The embedded TimescaleDB on the bench's data directory; restarting it takes a new port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server: EmbeddedTimescale | None = None

    def url(self) -> str:
        if self.server is None:
            self.server = EmbeddedTimescale(port=0, data_dir=self.data_dir, wait_s=300)
            self.server.start()
        assert self.server.url is not None
        return self.server.url

    def restart(self) -> None:
        self.stop()
        self.url()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout_s=120)
            self.server = None


def _timescale(args: argparse.Namespace, embedded: _Embedded) -> Target:
    return Target(
        "timescaledb",
        args.ts_days,
        args.ts_symbols,
        args.minutes,
        embedded.url,
        embedded.restart,
        lambda _conn: cluster.data_files(embedded.data_dir),
    )


def prepare(target: Target, reload: bool, schema: int | None, log: Log = print) -> dict[str, float]:
    """Load the shape unless it is there; bring the schema to `schema` (newest: None). Seconds taken."""
    taken: dict[str, float] = {}
    if reload or loaded_shape(target) != (target.symbols, target.rows):
        log(f"{target.kind}: loading {target.rows:,} bars ...")
        taken["load_s"] = round(load(target, schema), 1)
        log(f"{target.kind}: loaded in {taken['load_s']} s")
        return taken
    began = time.perf_counter()
    url = target.connect_url()
    newest = max(m.version for m in migrate.discover())
    changed = migrate.up(url, to=schema, log=log)
    if schema is not None and schema < newest:
        changed += migrate.down(url, to=schema, log=log)
    if changed:
        settle(target)
        taken["migrate_s"] = round(time.perf_counter() - began, 1)
    return taken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queries", description=__doc__.split("\n")[0])
    parser.add_argument("--databases", default="postgres,timescaledb", help="which to measure, comma-separated")
    parser.add_argument("--days", type=int, default=30, help="trading days on PostgreSQL (default 30)")
    parser.add_argument("--symbols", type=int, default=4000, help="symbols on PostgreSQL (default 4000)")
    parser.add_argument("--ts-days", type=int, default=5, help="trading days on the embedded TimescaleDB (default 5)")
    parser.add_argument("--ts-symbols", type=int, default=1000, help="symbols on the embedded TimescaleDB (default 1000)")
    parser.add_argument("--minutes", type=int, default=390, help="bars per symbol-day (390 regular session, 1440 all day)")
    parser.add_argument("--repeats", type=int, default=200, help="timed warm runs per query")
    parser.add_argument("--cold-repeats", type=int, default=20, help="timed cold runs per query (a restart each)")
    parser.add_argument("--ts-cold-repeats", type=int, default=5,
                        help="the same on the embedded TimescaleDB (default 5: each restart takes seconds)")  # fmt: skip
    parser.add_argument("--schema", type=int, help="migrate to this version instead of the newest (before/after)")
    parser.add_argument("--reload", action="store_true", help="load even if the database already has this shape")
    parser.add_argument("--postgres-url", help="measure this server instead of the bench cluster (never restarted)")
    parser.add_argument("--postgres-db", default="tickstock_bench_queries", help="database name on the bench cluster")
    parser.add_argument("--cluster-dir", type=Path, default=cluster.DATA_DIR, help="the bench cluster's data directory")
    parser.add_argument("--cluster-port", type=int, default=cluster.PORT, help="the bench cluster's port")
    parser.add_argument("--ts-data-dir", type=Path, default=DEFAULT_TS_DIR)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    chosen = [d.strip() for d in args.databases.split(",") if d.strip()]
    if not chosen or set(chosen) - {"postgres", "timescaledb"}:
        parser.error("--databases takes postgres, timescaledb or both")
    embedded = _Embedded(args.ts_data_dir)
    results: dict[str, object] = {
        "targets_ms": TARGETS_MS,
        "warm_method": WARM_METHOD,
        "cold_method": COLD_METHOD,
        "queries": {
            "symbol_day_1m": "bars_on(one random symbol, one random loaded day, '1m')",
            "symbol_month_1h": "bars_on(one random symbol, every loaded day, '1h')",
            "latest_all": "SELECT * FROM latest_bars",
        },
    }
    try:
        for kind in chosen:
            target = _postgres(args) if kind == "postgres" else _timescale(args, embedded)
            taken = prepare(target, args.reload, args.schema)
            load_before = os.getloadavg()
            entry: dict[str, object] = describe_target(target)
            entry.update(taken)
            if target.restart is None:
                entry["cold_method"] = "page cache dropped only: not the bench's server, its shared buffers stay"
            entry["warm"] = warm(target, args.repeats)
            entry["cold"] = cold(target, args.cold_repeats if kind == "postgres" else args.ts_cold_repeats)
            entry["plans"] = plans(target)
            entry["load_average_1m"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]  # before, after
            results[kind] = entry
    finally:
        embedded.stop()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
