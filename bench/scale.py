"""`make bench-scale`: the bar flow as 1 process and as a cluster of 2 (`-i`/`-a`), on the same ticks.

`bench.ohlcv`'s synthetic ticks (4,000 symbols by default) on topics of `TOPIC_PARTITIONS`
partitions (4), then for each process count, in one run: `ticks_per_s`, from starting the
processes until every one has ended at the end of the topics (`KAFKA_TAIL=false`; start-up
included, the same for every count), and `cpu_us_per_tick`, user+sys of all flow processes
(every thread, from `wait4`) per tick. Detection off (`DETECT_ENABLED=false`): the bar flow
alone, with its PostgreSQL/Redis and bars-topic sinks. Each run starts from empty tables.

With `load_average_before`/`_after` and `cpu_model`; on a machine whose cores are busy with
anything else, the 2-process figure says more about the neighbours than about the flow.
Writes `bench/scale.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

from bench.ohlcv import ROOT, bench_settings, env_for, publish_ticks
from connectors.kafka.admin import ensure_topics
from flows.settings import Settings
from infra.databases import ensure_database
from infra.migrate import up

RESULTS = ROOT / "bench" / "scale.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def run_cluster(s: Settings, processes: int, workers: int) -> dict:
    """`processes` x `workers` of the bar flow to the end of its input: wall time and CPU of them all."""
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE ohlcv_1min, symbols, events, indicator_values, alerts")
    env = env_for(s) | {"DETECT_ENABLED": "false"}
    env.pop("BYTEWAX_DATAFLOW_API_ENABLED", None)  # one port per host: the processes would collide
    command = [sys.executable, "-m", "bytewax.run", "flows.ohlcv:build_flow()", "-w", str(workers)]
    if processes > 1:
        command += ["-a", ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))]
    started = time.perf_counter()
    ids = [["-i", str(i)] for i in range(processes)] if processes > 1 else [[]]
    pids = [
        subprocess.Popen([*command, *i], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid for i in ids
    ]
    cpu_s, failed = 0.0, []
    for pid in pids:
        _, status, usage = os.wait4(pid, 0)
        cpu_s += usage.ru_utime + usage.ru_stime
        if os.waitstatus_to_exitcode(status) != 0:
            failed.append(os.waitstatus_to_exitcode(status))
    elapsed = time.perf_counter() - started
    if failed:
        raise SystemExit(f"{processes} x {workers}: flow processes failed with {failed}")
    with psycopg.connect(s.database_url) as conn:
        bars = conn.execute("SELECT count(*) FROM ohlcv_1min").fetchone()[0]
    return {"processes": processes, "workers": workers, "elapsed_s": round(elapsed, 2), "cpu_s": round(cpu_s, 2),
            "bars_written": bars}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=4000)
    parser.add_argument("--ticks", type=int, default=2_000_000)
    parser.add_argument("--processes", default="1,2", help="process counts to run, comma-separated")
    parser.add_argument("--workers", type=int, default=1, help="workers per process")
    args = parser.parse_args(argv)
    counts = [int(p) for p in args.processes.split(",")]
    if not counts or min(counts) < 1 or max(counts) > 16 or not 1 <= args.workers <= 16:
        raise SystemExit("--processes takes counts of 1-16, --workers 1-16")

    database_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tickstock_bench")
    ensure_database(database_url)
    up(database_url, log=lambda *_: None)
    s = bench_settings(uuid.uuid4().hex[:6], database_url, kafka_tail=False)
    ensure_topics(s)
    ticks = publish_ticks(s, args.symbols, args.ticks)
    print(f"published {ticks:,} ticks for {args.symbols:,} symbols on {s.topic_partitions} partitions", flush=True)

    load_before = os.getloadavg()
    runs = []
    for processes in counts:
        run = run_cluster(s, processes, args.workers)
        run["ticks_per_s"] = round(ticks / run["elapsed_s"])
        run["cpu_us_per_tick"] = round(run["cpu_s"] / ticks * 1e6, 2)
        runs.append(run)
        print(f"{processes} process(es) x {args.workers} worker(s): {run['ticks_per_s']:,} ticks/s, "
              f"{run['cpu_us_per_tick']} us CPU per tick, {run['bars_written']:,} bars", flush=True)  # fmt: skip
    if len({r["bars_written"] for r in runs}) != 1:
        raise SystemExit(f"the runs wrote different bar counts: {[r['bars_written'] for r in runs]}")
    results = {
        "symbols": args.symbols,
        "ticks": ticks,
        "partitions": s.topic_partitions,
        "runs": runs,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
