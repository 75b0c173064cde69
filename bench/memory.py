"""Memory per symbol of each flow, and Redis history per channel: `python -m bench.memory [--symbols 1000 4000]`.

For each symbol count, on its own topics, Redis namespace and a database of its own: the synthetic
feed publishes `--minutes` of event time at `--rate` trades/s (the same rate for every count, so
the difference between two counts is what the symbols cost, not the trades); the bar flow runs to
the end of the topic (`KAFKA_TAIL=false`), then the detection flow over the bars it published.
Each flow runs in its own process; its peak RSS is the kernel's high-water mark (`ru_maxrss`).
Memory per symbol is the slope between the smallest and the largest count.

Redis: after the run, each channel's history stream is measured with `MEMORY USAGE` and `XLEN`,
giving bytes per kept message by channel kind; the steady state per symbol follows from the
history bounds (`REDIS_HISTORY_MAX_LEN` / `REDIS_HISTORY_MAX_AGE_S`) and each kind's message rate
(printed, worked out in docs/operations.md). A replay publishes minutes of messages within
seconds, so the streams here hold up to `max_len` messages each, more than a live feed keeps.

Numbers, not assertions: writes `bench/memory.json` with the load average before and after and
CPU seconds per flow (the machine may be busy: compare runs on a quiet one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import psycopg
import redis

from bench.ohlcv import ROOT, bench_settings, cpu_model, env_for, load_average, publish_events
from connectors.feeds.synthetic import generate
from connectors.kafka.admin import admin_client, ensure_topics
from flows.settings import Settings
from infra.databases import ensure_database
from infra.migrate import up

OUT = Path(__file__).with_name("memory.json")


def publish(s: Settings, symbols: int, rate: float, minutes: float) -> int:
    """`minutes` of event time of the synthetic feed at `rate` trades/s onto the trades topic."""
    return publish_events(s, generate(seed=7, symbols=symbols, rate=rate, seconds=minutes * 60))


def run_to_end(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run a flow process to its end; its wall time, CPU seconds and peak RSS (MB) from wait4."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    err = process.stderr.read().decode(errors="replace")
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{err[-3000:]}")
    return {
        "elapsed_s": round(elapsed, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def redis_history(s: Settings) -> dict[str, dict[str, float]]:
    """Per channel kind (the name without its symbol): channels, kept messages and bytes of the history streams."""
    client = redis.Redis.from_url(s.redis_url)
    kinds: dict[str, dict[str, float]] = defaultdict(lambda: {"channels": 0, "messages": 0, "bytes": 0})
    prefix = f"history:{s.redis_namespace}"
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        name = key.decode()[len("history:") :]
        head, _, last = name.rpartition(".")
        kind = f"{head}.{{SYMBOL}}" if head and last.isupper() and not last.startswith("STATUS") else name
        entry = kinds[kind]
        entry["channels"] += 1
        entry["messages"] += int(client.xlen(key))  # type: ignore[arg-type]  # a sync client returns an int
        entry["bytes"] += int(client.memory_usage(key, samples=0) or 0)  # type: ignore[arg-type]
    meta = sum(
        int(client.memory_usage(k, samples=0) or 0)
        for k in client.scan_iter(match=f"history-meta:{s.redis_namespace}*", count=1000)
    )  # type: ignore[arg-type]
    out = {}
    for kind, entry in sorted(kinds.items()):
        entry["bytes_per_message"] = round(entry["bytes"] / max(1, entry["messages"]), 1)
        out[kind] = dict(entry)
    out["history-meta (all channels)"] = {"bytes": meta}
    for key in client.scan_iter(match=f"*{s.redis_namespace}*", count=1000):
        client.delete(key)  # the run's keys: they are the bench's, not anyone's history
    return out


def one_count(database_url: str, symbols: int, rate: float, minutes: float) -> dict[str, object]:
    run = uuid.uuid4().hex[:6]
    s = bench_settings(run, database_url, kafka_tail=False)
    ensure_topics(s)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE ohlcv_1min, symbols, events, indicator_values, alerts")
    began = time.perf_counter()
    ticks = publish(s, symbols, rate, minutes)
    print(f"{symbols:,} symbols: published {ticks:,} trades in {time.perf_counter() - began:.0f} s", flush=True)
    env = env_for(s) | {"RUST_BACKTRACE": "0"}
    bars_flow = run_to_end([sys.executable, "-m", "bytewax.run", "flows.ohlcv:build_flow()"], env)
    with psycopg.connect(database_url, autocommit=True) as conn:
        bars = conn.execute("SELECT count(*) FROM ohlcv_1min").fetchone()[0]  # type: ignore[index]
    print(f"  bar flow: {bars_flow} ({bars:,} bars)", flush=True)
    detection_flow = run_to_end([sys.executable, "-m", "bytewax.run", "flows.detection:build_flow()"], env)
    with psycopg.connect(database_url, autocommit=True) as conn:
        indicators = conn.execute("SELECT count(*) FROM indicator_values").fetchone()[0]  # type: ignore[index]
    print(f"  detection flow: {detection_flow} ({indicators:,} indicator rows)", flush=True)
    history = redis_history(s)
    for kind, entry in history.items():
        print(f"  redis {kind}: {entry}", flush=True)
    admin = admin_client(s)  # held until the futures resolve: a dropped client cancels them
    for future in admin.delete_topics(s.topics(), operation_timeout=30).values():
        future.result()  # the run's own topics: an in-memory broker would keep their messages otherwise
    return {
        "symbols": symbols,
        "trades": ticks,
        "bars": bars,
        "bar_flow": bars_flow,
        "detection_flow": detection_flow,
        "redis_history": history,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--rate", type=float, default=1000.0, help="trades per second of event time (every count)")
    parser.add_argument("--minutes", type=float, default=20.0, help="minutes of event time (past ALLOWED_LATENESS_S)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    database_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tickstock_bench_memory")
    ensure_database(database_url)
    up(database_url, log=lambda *_: None)
    load_before = load_average()
    runs = [one_count(database_url, n, args.rate, args.minutes) for n in sorted(args.symbols)]
    result: dict[str, object] = {"rate": args.rate, "minutes": args.minutes, "runs": runs}
    if len(runs) >= 2:
        low, high = runs[0], runs[-1]
        span = int(high["symbols"]) - int(low["symbols"])  # type: ignore[call-overload]
        for flow in ("bar_flow", "detection_flow"):
            slope = (high[flow]["peak_rss_mb"] - low[flow]["peak_rss_mb"]) * 1024 / span  # type: ignore[index]
            result[f"{flow}_kb_per_symbol"] = round(slope, 1)
            print(f"{flow}: {slope:.1f} KB per symbol (peak RSS, {low['symbols']} -> {high['symbols']} symbols)")
    result["load_average_before"] = load_before
    result["load_average_after"] = load_average()
    result["cpu_model"] = cpu_model()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average before {load_before}, after {result['load_average_after']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
