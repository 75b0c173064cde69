"""CPU per bar of `BarDetector.on_bar` alone (every detector on, default settings), no Kafka, no sinks.

    .venv/bin/python -m bench.detection [--bars 20000] [--warm 500] [--repeat 3] [--revisions 0.02] [--profile]

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
import os
import pstats
import time

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


def main() -> None:
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
