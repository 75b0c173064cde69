"""The bar flow's partition step at a minute boundary and at an epoch, without Kafka, sinks or Bytewax.

    .venv/bin/python -m bench.partition [--symbols 1000] [--trades 1500] [--minutes 16] [--reps 15]

Builds one `flows.partition.PartitionLogic` (default settings: the streamed timeframes, session
highs/lows on) and feeds it `--minutes` minutes of `--trades` trades each over `--symbols` symbols,
in event-time order: per minute a batch of its trades, then 50 trades of the next minute within
the close delay (the boundary; a minute that passes the allowed lateness settles there, as it does
live). Then, the median of `--reps`:

- `close_step_ms`: the step whose batch (50 trades just past the close delay) closes the last
  minute: the book closing ~`--symbols` bars and the rollup, prices and highs/lows that follow
  each, on a fresh partition each time; `close_step_ms_no_timeframes` the same with
  `BAR_TIMEFRAMES=` (1m only), which is what the streamed timeframes cost at the boundary;
  `step_after_close_ms` the step after it (50 more trades), where the rollup folds in the minutes
  just closed and settles the one that passed the allowed lateness (both put off from the close
  step, `Rollup.settle`);
- `coarse_live_ms`: a coarse live update (`LIVE_COARSE_UPDATE_INTERVAL_S`): the rollup noting every
  symbol's forming minute, then its live records of every timeframe; `live_note_ms` the noting
  alone when the same minutes were noted since (the 1 s live updates between two coarse ones);
- `snapshot_ms`: `PartitionLogic.snapshot` (what Bytewax takes at every epoch), and its parts:
  the book, the timeframe rollup (`rollup_snapshot_ms`, and `rollup_snapshot_ms_first` with no
  encoding kept from an earlier snapshot), the last prices and the session extremes, with the
  rollup's and the book's snapshot sizes.

Each figure is wall time on one thread (nothing else runs in the process); the load average is
printed with them. Writes bench/partition.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from connectors.kafka.source import RawBatch
from flows.detect.settings import DetectionSettings
from flows.partition import PartitionLogic
from flows.settings import Settings
from schemas.bars import Bar

OUT = Path(__file__).resolve().parent / "partition.json"
MINUTE = 60_000
T0 = 1_764_253_800_000 + 10 * MINUTE  # 2025-11-27 14:40 UTC


def fed(
    settings: Settings, symbols: int, trades: int, minutes: int, seed: int
) -> tuple[PartitionLogic, list[RawBatch], list[RawBatch]]:
    """A partition fed `minutes` minutes of trades, the batch that closes the last of them and one after it."""
    logic = PartitionLogic(settings, DetectionSettings(), None)
    rng = random.Random(seed)
    names = [f"S{i:05d}" for i in range(symbols)]
    sequence = 0

    def batch(start: int, n: int, span: int = MINUTE) -> list[RawBatch]:
        nonlocal sequence
        values: list[bytes | None] = []
        for _ in range(n):
            sequence += 1
            values.append(orjson.dumps({"ev": "T", "sym": rng.choice(names), "x": 4, "i": str(sequence), "z": 3,
                                        "p": round(rng.uniform(9, 11), 2), "s": 100, "t": start + rng.randint(0, span - 1),
                                        "q": sequence}))  # fmt: skip
        return [RawBatch("bench", 0, range(len(values)), values)]

    delay = int(settings.bar_close_delay_s * 1000)
    for m in range(minutes):
        logic.on_batch(batch(T0 + m * MINUTE, trades - 50))
        # the next minute's first trades, within the close delay: as live, the minute that passes the
        # allowed lateness at the boundary settles here, before the close
        logic.on_batch(batch(T0 + (m + 1) * MINUTE, 50, span=delay))
    # trades past the start of the next minute plus the close delay: they close the last minute fed
    closing = batch(T0 + minutes * MINUTE + delay, 50, span=1000)
    after = batch(T0 + minutes * MINUTE + delay + 1000, 50, span=1000)
    return logic, closing, after


def timed(f: Callable[[], object], reps: int) -> float:
    took = []
    for _ in range(reps):
        started = time.perf_counter()
        f()
        took.append(time.perf_counter() - started)
    return round(statistics.median(took) * 1000, 2)


def close_step_ms(settings: Settings, args: argparse.Namespace) -> tuple[float, float]:
    """The median close step, and the median step after it (where the rollup does what the close put
    off: `Rollup.settle`)."""
    took, after_took = [], []
    for rep in range(args.reps):
        logic, closing, after = fed(settings, args.symbols, args.trades, args.minutes, seed=rep)
        started = time.perf_counter()
        logic.on_batch(closing)
        took.append(time.perf_counter() - started)
        started = time.perf_counter()
        logic.on_batch(after)
        after_took.append(time.perf_counter() - started)
    return round(statistics.median(took) * 1000, 2), round(statistics.median(after_took) * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=1000, help="symbols of the partition (4,000 over 4 partitions)")
    parser.add_argument("--trades", type=int, default=1500, help="trades per minute")
    parser.add_argument("--minutes", type=int, default=16, help="minutes fed (past the allowed lateness: 15)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    gc.set_threshold(100_000, 50, 100)  # as flows.ohlcv.build_flow sets it
    load_before = [round(x, 2) for x in os.getloadavg()]
    settings = Settings(live_update_interval_s=3600, health_interval_s=3600, idle_advance_s=3600)
    logic, _, _ = fed(settings, args.symbols, args.trades, args.minutes, seed=0)
    rollup = logic.rollup

    def rollup_first() -> object:
        kept = getattr(rollup, "_encoded_recent", None)  # (a checkout from before 2d2a561 keeps none)
        if kept is not None:
            kept.clear()
        return rollup.snapshot()

    extremes = logic.extremes
    # every symbol's forming bar of the open minute, as the partition notes them at each live update
    forming_minute = T0 + args.minutes * MINUTE
    forming = [Bar(symbol=f"S{i:05d}", timestamp=forming_minute, open=10.0, high=10.5, low=9.5, close=10.1, volume=100,
                   vwap=10.0, trades=1, revision=0, status="live") for i in range(args.symbols)]  # fmt: skip

    def coarse_update() -> object:
        rollup.note_live(forming)
        return rollup.take_live()

    close, after = close_step_ms(settings, args)
    close_bare, after_bare = close_step_ms(settings.model_copy(update={"bar_timeframes": ()}), args)
    results = {
        "symbols": args.symbols,
        "trades_per_minute": args.trades,
        "minutes": args.minutes,
        "close_step_ms": close,
        "step_after_close_ms": after,
        "close_step_ms_no_timeframes": close_bare,
        "step_after_close_ms_no_timeframes": after_bare,
        "snapshot_ms": timed(logic.snapshot, args.reps),
        "book_snapshot_ms": timed(logic.book.snapshot, args.reps),
        "rollup_snapshot_ms": timed(rollup.snapshot, args.reps),
        "rollup_snapshot_ms_first": timed(rollup_first, args.reps),
        "prices_snapshot_ms": timed(logic.prices.snapshot, args.reps),
        "extremes_snapshot_ms": timed(extremes.snapshot, args.reps) if extremes is not None else None,
        "book_snapshot_kb": round(len(logic.book.snapshot()) / 1024),
        "rollup_snapshot_kb": round(len(rollup.snapshot()) / 1024),
        "rollup_buckets": rollup.buckets,
        "rollup_minutes_held": rollup.minutes,
        # last: they add the forming minute's buckets, which the figures above do not hold
        "coarse_live_ms": timed(coarse_update, args.reps),
        "live_note_ms": timed(lambda: rollup.note_live(forming), args.reps),
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(results))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
