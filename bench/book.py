"""The bar book alone, against the decode floor, in one process: the part of the flow's CPU per tick that is ours.

    python -m bench.book --ticks 1000000

The same synthetic ticks as `make bench` (seed 42, 4,000 symbols), split over `--partitions` books
by symbol as the topic's partitions split them, applied in consume-sized batches; then every book
closed. Reports CPU per tick of the books (`BarBook.apply`, the closes and compactions inside it)
and of msgspec decoding the same values into `schemas.polygon.Trade` one by one (the floor), both
measured in this process, alternating, `--reps` times; the ratio is the figure (no Kafka, sinks or
Bytewax, so what it shows is the book's own cost). Add `--profile` to run under cProfile once.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
import zlib

import msgspec

from connectors.feeds.synthetic import generate
from flows.book import BarBook
from schemas.conditions import ConditionRules
from schemas.polygon import Trade


def split(symbols: int, ticks: int, partitions: int) -> list[list[bytes]]:
    parts: list[list[bytes]] = [[] for _ in range(partitions)]
    for e in generate(seed=42, symbols=symbols, rate=2000.0, count=ticks):
        parts[zlib.crc32(e.key or b"") % partitions].append(e.value)
    return parts


def floor_s(parts: list[list[bytes]]) -> float:
    decode = msgspec.json.Decoder(Trade).decode
    started = time.process_time()
    for values in parts:
        for value in values:
            decode(value)
    return time.process_time() - started


def books_s(parts: list[list[bytes]], batch: int) -> tuple[float, int]:
    rules = ConditionRules.load()
    books = [BarBook(rules, close_delay_ms=2000, lateness_ms=900_000) for _ in parts]
    bars = 0
    started = time.process_time()
    for i in range(0, max(map(len, parts)), batch):
        for book, values in zip(books, parts, strict=True):
            chunk = values[i : i + batch]
            if chunk:
                bars += len(book.apply(chunk, range(i, i + len(chunk)))[0])
    for book in books:
        bars += len(book.close_all())
    return time.process_time() - started, bars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=4000)
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    gc.set_threshold(100_000, 50, 100)  # as flows.ohlcv.build_flow sets it
    parts = split(args.symbols, args.ticks, args.partitions)
    n = sum(map(len, parts))
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(books_s, parts, args.batch)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return 0
    ratios, floors, books, bars = [], [], [], 0
    for _ in range(args.reps):
        f = floor_s(parts)
        b, bars = books_s(parts, args.batch)
        floors.append(f / n * 1e6)
        books.append(b / n * 1e6)
        ratios.append(b / f)
    print(json.dumps({
        "ticks": n, "bars": bars, "floor_us_per_tick": [round(x, 3) for x in floors],
        "book_us_per_tick": [round(x, 3) for x in books], "book_x_floor": [round(x, 2) for x in ratios],
        "median_book_x_floor": round(statistics.median(ratios), 2), "load_average": [round(x, 2) for x in os.getloadavg()],
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
