"""The bar flow's CPU per tick in several checkouts, on the same messages, against the same run's decode floor.

For finding which change made the flow dearer (a bisect) and for before/after figures of a change:

    python -m bench.revisions --ticks 1000000 --reps 3 before=/path/to/checkout after=.

Publishes the ticks once, reads them back once (the values the floor decodes), then, per
repetition, for every checkout in turn: the decode floor (as `bench.ohlcv` measures it), then the
bar flow of that checkout (`bench.flow_timer` with that checkout first on PYTHONPATH, detection off)
over the whole topic. The figure per run is the flow process's CPU seconds (all its threads) per
tick divided by the floor measured just before it: on a shared machine wall time says little, and
CPU time moves with the load less than it, though not nothing (load averages are printed with each
run). Prints one JSON line per run and a summary (median ratio per checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

from bench.ohlcv import bench_settings, decode_floor_us, env_for, load_average, publish_ticks, raw_consume
from connectors.kafka.admin import ensure_topics
from infra.databases import ensure_database
from infra.migrate import up


def run_flow(env: dict[str, str], tree: Path, database_url: str) -> dict:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE ohlcv_1min, symbols, events, indicator_values, alerts")
    out = subprocess.run(
        [sys.executable, "-m", "bench.flow_timer"],
        env=env | {"PYTHONPATH": str(tree), "DETECT_ENABLED": "false"},
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"flow of {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", help="NAME=PATH of a checkout")
    parser.add_argument("--symbols", type=int, default=4000)
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    trees = {name: Path(path).resolve() for name, _, path in (t.partition("=") for t in args.trees)}

    database_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tickstock_bench")
    ensure_database(database_url)
    up(database_url, log=lambda *_: None)
    s = bench_settings(uuid.uuid4().hex[:6], database_url, kafka_tail=False)
    ensure_topics(s)
    ticks = publish_ticks(s, args.symbols, args.ticks)
    values: list[bytes] = []
    raw_consume(s, ticks, keep=values)
    env = env_for(s)
    runs: dict[str, list[float]] = {name: [] for name in trees}
    for rep in range(args.reps):
        for name, tree in trees.items():
            load = load_average()
            floor = decode_floor_us(values, s.kafka_batch_size)["decode_floor_us_per_tick"]
            timed = run_flow(env, tree, database_url)
            us = timed["cpu_s"] / ticks * 1e6
            runs[name].append(us / floor)
            print(json.dumps({"rep": rep, "tree": name, "floor_us": floor, "flow_cpu_s": round(timed["cpu_s"], 2),
                              "flow_us_per_tick": round(us, 3), "x_floor": round(us / floor, 2),
                              "elapsed_s": round(timed["elapsed_s"], 2), "peak_rss_mb": round(timed["peak_rss_mb"]),
                              "load_before": load, "at": time.strftime("%H:%M:%S")}), flush=True)  # fmt: skip
    summary = {
        name: {"median_x_floor": round(statistics.median(r), 2), "runs": [round(x, 2) for x in r]} for name, r in runs.items()
    }
    print(json.dumps({"ticks": ticks, "symbols": args.symbols, "summary": summary, "load_after": load_average()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
