"""CPU per bar of `BarDetector.on_bar` alone (every detector on, default settings), no Kafka, no sinks.

    .venv/bin/python -m bench.detection [--bars 20000] [--warm 500] [--repeat 3] [--revisions 0.02] [--profile]
    .venv/bin/python -m bench.detection flow [--run ID] [--ticks 2000000] [--symbols 4000] [--repeat 3]

`flow`: the whole detection flow (Kafka source, gate, warm start, detectors, the PostgreSQL and
Redis sink) over a fixed bars topic. Without `--run` it publishes `--ticks` synthetic ticks (as
`make bench` does) and runs the bar flow over them once, detection off, which fills the run's bars
topic (`bench<ID>.bars`, every timeframe of BAR_TIMEFRAMES) and `ohlcv_1min`; it prints the ID to
pass as `--run` later. Each of the `--repeat` runs truncates the detection tables and runs the
detection flow over the whole topic to its end (KAFKA_TAIL=false) in a process of its own, which
prints its CPU (all threads) from the flow's start to its end and since the process began
(imports and connections too), and its peak RSS. CPU per bar is given per 1-minute bar (as
`make bench`'s `detection_cpu_us_per_bar`) and per bar of any timeframe read.

A random walk with candles of every shape (the one tests/unit/test_detect_talib.py checks
against TA-Lib) goes through one detector: `--warm` bars first, unmeasured, then `--bars`
bars timed with the process's CPU clock, `--repeat` times on fresh detectors. Prints each
run's µs per bar, the best (the least disturbed by other work on the machine), the records
per bar, and the load average before and after; `--profile` adds a cProfile of one run.
`--revisions P`: after each measured bar, with probability P, a revision of one of the 15 bars
before it (close moved, volume changed: indicators replayed, decisions made again), counted in
the time per bar.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from flows.detect.bar_detector import BarDetector, DetectionParams
from flows.detect.settings import DetectionSettings
from schemas.bars import Bar

MINUTE = 60_000
T0 = 1_764_253_800_000  # 2025-11-27 09:30 EST


def random_bars(n: int, seed: int) -> list[Bar]:
    """Long bodies, tiny bodies, long shadows, gaps, volume spikes."""
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 0.4, n))
    open_ = close + rng.normal(0, 0.3, n) * rng.choice([0.02, 1.0, 2.5], n)
    top = np.maximum(open_, close) + rng.exponential(0.15, n) * rng.choice([0.0, 1.0, 4.0], n)
    bottom = np.minimum(open_, close) - rng.exponential(0.15, n) * rng.choice([0.0, 1.0, 4.0], n)
    volume = rng.integers(100, 5_000, n) * rng.choice([1, 1, 1, 6], n)
    return [
        Bar(symbol="TST", timestamp=T0 + i * MINUTE, open=float(open_[i]), high=float(top[i]), low=float(bottom[i]),
            close=float(close[i]), volume=int(volume[i]), vwap=float(close[i]), trades=10, revision=0, status="final")
        for i in range(n)
    ]  # fmt: skip


def with_revisions(bars: list[Bar], warm: int, share: float, seed: int) -> list[Bar]:
    """The bars from `warm` on, each followed with probability `share` by a revision of one of the 15 before it."""
    rng = np.random.default_rng(seed + 1)
    latest = list(bars)
    out = []
    for i in range(warm, len(bars)):
        out.append(bars[i])
        if share and rng.random() < share and i > 15:
            j = i - int(rng.integers(0, 15))
            old = latest[j]
            close = old.close + float(rng.normal(0, 0.3))
            latest[j] = old.__replace__(close=close, high=max(old.high, close), low=min(old.low, close),
                                        volume=old.volume + 100, revision=old.revision + 1)  # fmt: skip
            out.append(latest[j])
    return out


def run(bars: list[Bar], warm: int, params: DetectionParams, measured: list[Bar]) -> tuple[float, int]:
    """(CPU µs per measured bar, records out of the measured bars)."""
    detector = BarDetector("TST", params)
    for bar in bars[:warm]:
        detector.on_bar(bar)
    records = 0
    started = time.process_time()
    for bar in measured:
        records += len(detector.on_bar(bar))
    return (time.process_time() - started) / (len(bars) - warm) * 1e6, records


ROOT = Path(__file__).resolve().parent.parent


def _flow_settings(run: str):  # -> flows.settings.Settings (imported late: the detector bench needs no Kafka)
    from bench.ohlcv import bench_settings

    database_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tickstock_bench_detection")
    return bench_settings(run, database_url, kafka_tail=False, kafka_start="earliest")


def _prepare(ticks: int, symbols: int) -> str:
    """Ticks onto a new run's trades topic, the bar flow over them once: its bars topic is the input."""
    from bench.ohlcv import env_for, publish_ticks
    from connectors.kafka.admin import ensure_topics
    from infra.databases import ensure_database
    from infra.migrate import up

    run = uuid.uuid4().hex[:6]
    s = _flow_settings(run)
    ensure_database(s.database_url)
    up(s.database_url, log=lambda *_: None)
    ensure_topics(s)
    published = publish_ticks(s, symbols, ticks)
    import psycopg

    with psycopg.connect(s.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE ohlcv_1min, symbols, events, indicator_values, alerts")
    env = env_for(s) | {"DETECT_ENABLED": "false"}
    out = subprocess.run([sys.executable, "-m", "bench.flow_timer"], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=False)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"bar flow failed:\n{out.stderr[-3000:]}")
    print(f"run {run}: {published:,} ticks through the bar flow ({json.loads(out.stdout.splitlines()[-1])})", flush=True)
    return run


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_flow() -> None:
    """In the child: the detection flow from the environment, to the end of its input; prints JSON."""
    from bytewax.testing import run_main

    from flows.detection import build_flow

    flow = build_flow()
    import gc

    gc_s = [0.0, 0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_s[1] = time.process_time()
        else:
            gc_s[0] += time.process_time() - gc_s[1]

    gc.callbacks.append(on_gc)
    if os.environ.get("BENCH_GC") == "off":
        gc.disable()
    elif os.environ.get("BENCH_GC"):
        gc.set_threshold(*map(int, os.environ["BENCH_GC"].split(",")))
    started, cpu = time.perf_counter(), time.process_time()
    run_main(flow)
    elapsed, flow_cpu = time.perf_counter() - started, time.process_time() - cpu
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"elapsed_s": elapsed, "flow_cpu_s": flow_cpu, "process_cpu_s": usage.ru_utime + usage.ru_stime,
                      "peak_rss_mb": _peak_mb(), "gc_cpu_s": gc_s[0], "gc_counts": gc.get_stats()}))  # fmt: skip


def _flow_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.detection flow")
    parser.add_argument("--run", help="a prepared run's ID (its bars topic); default: prepare a new one")
    parser.add_argument("--ticks", type=int, default=2_000_000)
    parser.add_argument("--symbols", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeframes", help="DETECT_TIMEFRAMES for the detection flow (default: every one)")
    parser.add_argument(
        "--profile",
        help="py-spy (PY_SPY, else beside the venv's python) record the first run into this file (collapsed stacks, py-spy --format raw)",
    )
    parser.add_argument("--gil", action="store_true", help="with --profile: only samples holding the GIL")
    parser.add_argument("--minutes", type=int, help="1m bars of the run (default: the rows of ohlcv_1min)")
    parser.add_argument("--code", action="append", help="checkout whose flows run (repeatable: the runs alternate)")
    args = parser.parse_args(argv)
    run = args.run or _prepare(args.ticks, args.symbols)
    s = _flow_settings(run)
    import psycopg

    from bench.ohlcv import env_for

    minutes = args.minutes
    if minutes is None:  # the bar flow wrote them in `_prepare` (unless something truncated the table since)
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            minutes = conn.execute("SELECT count(*) FROM ohlcv_1min").fetchone()[0]
    env = env_for(s) | {"DETECT_ENABLED": "true"}
    if args.timeframes is not None:
        env["DETECT_TIMEFRAMES"] = args.timeframes
    for i in range(args.repeat):
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            conn.execute("TRUNCATE events, indicator_values, alerts")
        code = args.code[i % len(args.code)] if args.code else str(ROOT)
        # this file's `_timed` over the flows of `code` (another checkout, to compare in one session)
        command = [sys.executable, "-c", f"import runpy, sys; sys.argv = ['bench.detection', '_timed']; "
                   f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')"]  # fmt: skip
        if args.profile and i == 0:
            command = [os.environ.get("PY_SPY", str(Path(sys.executable).parent / "py-spy")), "record", "--format", "raw", "-o", args.profile,
                       "--rate", "200", *(["--gil"] if args.gil else []), "--", *command]  # fmt: skip
        load = os.getloadavg()
        out = subprocess.run(command, env=env | {"PYTHONPATH": code}, cwd=code, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"detection flow failed:\n{out.stderr[-3000:]}")
        timed = json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith("{")))
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            written = {
                t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("events", "indicator_values", "alerts")
            }
            # what was written, to compare checkouts: a digest of every row of the three tables
            digest = conn.execute(
                "SELECT md5(string_agg(r, '|' ORDER BY r)) FROM (SELECT e::text AS r FROM events e UNION ALL "
                "SELECT i::text FROM indicator_values i UNION ALL SELECT a::text FROM alerts a) rows"
            ).fetchone()[0]
        print(f"run {i + 1}{' (profiled)' if args.profile and i == 0 else ''} [{code}]: "
              f"{timed['flow_cpu_s'] / minutes * 1e6:.1f} us CPU per 1m bar in the flow "
              f"({timed['process_cpu_s'] / minutes * 1e6:.1f} with start-up), {minutes:,} 1m bars, "
              f"{timed['elapsed_s']:.1f} s, peak RSS {timed['peak_rss_mb']:.0f} MB, {written} (rows md5 {digest[:12]}), "
              f"load {' '.join(f'{x:.2f}' for x in load)}, gc {timed['gc_cpu_s']:.2f} s CPU {[g['collections'] for g in timed['gc_counts']]}", flush=True)  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["flow"]:
        _flow_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["_timed"]:
        _timed_flow()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bars", type=int, default=20_000)
    parser.add_argument("--warm", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--revisions", type=float, default=0.0, help="share of bars followed by a revision (0-1)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.bars < 1 or args.warm < 0 or args.repeat < 1 or not 0 <= args.revisions <= 1:
        parser.error("--bars and --repeat must be at least 1, --warm at least 0, --revisions in [0, 1]")
    params = DetectionParams(DetectionSettings())
    bars = random_bars(args.warm + args.bars, args.seed)
    measured = with_revisions(bars, args.warm, args.revisions, args.seed)
    load_before = os.getloadavg()
    runs = [run(bars, args.warm, params, measured) for _ in range(args.repeat)]
    load_after = os.getloadavg()
    for i, (us, _) in enumerate(runs, 1):
        print(f"run {i}: {us:.1f} us/bar")
    print(f"on_bar_cpu_us_per_bar (best of {args.repeat}): {min(us for us, _ in runs):.1f}")
    print(f"records per bar: {runs[0][1] / args.bars:.3f} (revisions: {len(measured) - args.bars})")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in load_after)}")
    if args.profile:
        detector = BarDetector("TST", params)
        for bar in bars[: args.warm]:
            detector.on_bar(bar)
        profile = cProfile.Profile()
        profile.enable()
        for bar in measured:
            detector.on_bar(bar)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
