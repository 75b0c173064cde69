"""The flow's write path at a minute boundary, on both databases: `python -m bench.sink [--batches 40 --symbols 4000]`.

Times `connectors.postgres.bars.BarStore.upsert` (COPY into staging + one INSERT .. ON CONFLICT, with
every trigger the migrations put on `ohlcv_1min`) for batches shaped like the ones the flow
writes when a minute closes: one new bar per symbol, plus `--revised` of them as revisions of
the previous 15 minutes (late trades). It writes past the newest bar already in the database
(by default the `make bench-queries` database, so the tables have a month of history and
realistic index depth), then deletes what it wrote, leaving the database as it found it. Both
databases of `make bench-queries` side by side, in one run (`--databases`): plain PostgreSQL (the
bench cluster, bench/cluster.py, or `--postgres-url`) and the embedded TimescaleDB on its data
directory (`--ts-data-dir`; a smaller shape, so its batches have at most as many symbols as it
holds: compare `mean_ms_per_1000_bars`). On TimescaleDB the batches land in a new, uncompressed
chunk, as live minutes do.

`--without-triggers` disables the user triggers on `ohlcv_1min` for the run (FK checks stay):
the cost of the bare upsert, to tell what the triggers add; `--disable NAME` disables one trigger
(e.g. the `rollups_after_*` ones, to time `latest_bars` alone); `--writers 2` splits each batch by
symbol over two sessions upserting side by side, as the flow's SINK_BAR_WRITERS (default 2) does.
Writes p50/p95/mean per batch to bench/sink.json (or `--out`), one entry per database, with the
schema version measured (0005's covering keys are part of the write cost: `python -m bench.queries
--schema 4` for before).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
import zlib
from datetime import timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from bench import cluster
from bench.queries import DEFAULT_TS_DIR
from connectors.postgres.bars import BarStore
from connectors.sinks.parts import MAX_LANES
from infra.embedded_timescale import EmbeddedTimescale
from schemas.bars import Bar

OUT = Path(__file__).with_name("sink.json")
LATE_MINUTES = 15  # ALLOWED_LATENESS_S / 60: how far back a revision reaches


def minute_batch(symbols: list[str], minute_ms: int, revised: int, rng: random.Random) -> list[Bar]:
    """One bar per symbol for `minute_ms`, plus `revised` revisions of earlier minutes."""
    bars = []
    for n, symbol in enumerate(symbols):
        close = 20 + n % 500 + rng.random()
        bars.append(
            Bar(symbol=symbol, timestamp=minute_ms, open=round(close - 0.05, 4), high=round(close + 0.1, 4),
                low=round(close - 0.1, 4), close=round(close, 4), volume=100 + rng.randrange(5000),
                vwap=round(close - 0.01, 4), trades=1 + rng.randrange(60), revision=0, status="final")
        )  # fmt: skip
    for symbol in rng.sample(symbols, revised):
        back = rng.randint(1, LATE_MINUTES)
        close = 20 + rng.random() * 500
        bars.append(
            Bar(symbol=symbol, timestamp=minute_ms - back * 60_000, open=round(close, 4), high=round(close + 0.3, 4),
                low=round(close - 0.3, 4), close=round(close + 0.1, 4), volume=200 + rng.randrange(5000),
                vwap=round(close, 4), trades=2 + rng.randrange(60), revision=1 + rng.randrange(3), status="final")
        )  # fmt: skip
    return bars


def upsert_side_by_side(stores: list[BarStore], bars: list[Bar]) -> None:
    """One batch split by symbol over the stores, each upserting its share in a thread of its own,
    as SINK_BAR_WRITERS writers split a worker's sink partitions (disjoint symbols)."""
    if len(stores) == 1:
        stores[0].upsert(bars)
        return
    shares: list[list[Bar]] = [[] for _ in stores]
    for bar in bars:
        shares[zlib.crc32(bar.symbol.encode()) % len(stores)].append(bar)
    threads = [threading.Thread(target=store.upsert, args=(share,)) for store, share in zip(stores, shares, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run(
    url: str,
    batches: int,
    symbol_count: int,
    revised_share: float,
    without_triggers: bool,
    disabled: list[str],
    writers: int = 1,
) -> dict[str, object]:
    with psycopg.connect(url, autocommit=True) as conn:
        newest = conn.execute("SELECT max(timestamp) FROM ohlcv_1min").fetchone()[0]  # type: ignore[index]
        names = [r[0] for r in conn.execute("SELECT symbol FROM symbols ORDER BY symbol LIMIT %s", (symbol_count,))]
        if newest is None or not names:
            raise SystemExit("needs symbols with bars: run `make bench-queries` first")
        symbol_count = len(names)
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]  # type: ignore[index]
        rows = conn.execute("SELECT count(*) FROM ohlcv_1min").fetchone()[0]  # type: ignore[index]
        if without_triggers:
            conn.execute("ALTER TABLE ohlcv_1min DISABLE TRIGGER USER")
        for name in disabled:
            conn.execute(sql.SQL("ALTER TABLE ohlcv_1min DISABLE TRIGGER {}").format(sql.Identifier(name)))
    start = newest.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1, hours=14, minutes=30)
    start_ms = int(start.timestamp() * 1000)
    rng, stores, samples = random.Random(6), [BarStore(url) for _ in range(writers)], []
    revised = int(symbol_count * revised_share)
    try:
        for i in range(LATE_MINUTES + batches):
            bars = minute_batch(names, start_ms + i * 60_000, revised if i >= LATE_MINUTES else 0, rng)
            began = time.perf_counter()
            upsert_side_by_side(stores, bars)
            if i >= LATE_MINUTES:  # the first minutes only give the revisions something to revise
                samples.append((time.perf_counter() - began) * 1000)
    finally:
        for store in stores:
            store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            if without_triggers:
                conn.execute("ALTER TABLE ohlcv_1min ENABLE TRIGGER USER")
            for name in disabled:
                conn.execute(sql.SQL("ALTER TABLE ohlcv_1min ENABLE TRIGGER {}").format(sql.Identifier(name)))
            conn.execute("DELETE FROM ohlcv_1min WHERE timestamp >= %s", (start,))
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    per_batch = symbol_count + revised
    result = {
        "schema_version": version,
        "rows_in_table": rows,
        "batch_bars": per_batch,
        "new_bars": symbol_count,
        "revised_bars": revised,
        "batches": batches,
        "upsert_p50_ms": round(cuts[49], 1),
        "upsert_p95_ms": round(cuts[94], 1),
        "upsert_mean_ms": round(statistics.fmean(samples), 1),
        "mean_ms_per_1000_bars": round(statistics.fmean(samples) * 1000 / per_batch, 1),
        "writers": writers,
        "triggers": not without_triggers,
        "disabled_triggers": disabled,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__.split("\n")[0])
    parser.add_argument("--databases", default="postgres,timescaledb", help="which to measure, comma-separated")
    parser.add_argument("--batches", type=int, default=40, help="timed minute-boundary batches")
    parser.add_argument("--symbols", type=int, default=4000, help="new bars per batch (one per symbol, at most those held)")
    parser.add_argument("--revised", type=float, default=0.05, help="share of symbols with a revision per batch")
    parser.add_argument("--without-triggers", action="store_true", help="disable user triggers on ohlcv_1min meanwhile")
    parser.add_argument("--disable", action="append", default=[], metavar="NAME", help="disable this trigger meanwhile")
    parser.add_argument("--postgres-url", help="default: the bench cluster's database (bench/cluster.py)")
    parser.add_argument("--ts-data-dir", type=Path, default=DEFAULT_TS_DIR)
    parser.add_argument(
        "--writers",
        type=int,
        default=1,
        choices=range(1, MAX_LANES + 1),
        metavar=f"1-{MAX_LANES}",
        help="sessions writing each batch side by side, split by symbol (SINK_BAR_WRITERS)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    chosen = [d.strip() for d in args.databases.split(",") if d.strip()]
    if not chosen or set(chosen) - {"postgres", "timescaledb"}:
        parser.error("--databases takes postgres, timescaledb or both")
    results: dict[str, object] = {}
    load_before = os.getloadavg()
    for kind in chosen:
        if kind == "postgres":
            url = args.postgres_url or cluster.start()
            result = run(url, args.batches, args.symbols, args.revised, args.without_triggers, args.disable, args.writers)
        else:
            if not (args.ts_data_dir / "PG_VERSION").exists():
                raise SystemExit(f"no embedded TimescaleDB database in {args.ts_data_dir}: run `make bench-queries` first")
            with EmbeddedTimescale(port=0, data_dir=args.ts_data_dir, wait_s=300) as server:
                assert server.url is not None
                result = run(
                    server.url, args.batches, args.symbols, args.revised, args.without_triggers, args.disable, args.writers
                )
        print(f"{kind}:")
        for key, value in result.items():
            print(f"  {key}: {value}")
        results[kind] = result
    results["load_average_1m"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]  # before, after
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
