"""The bar book alone, against the decode floor, in one process: the part of the flow's CPU per tick that is ours.

    python -m bench.book --ticks 1000000

The same synthetic ticks as `make bench` (seed 42, 4,000 symbols), split over `--partitions` books
by symbol as the topic's partitions split them, applied in consume-sized batches; then every book
closed. Reports CPU per tick of the books (`BarBook.apply`, the closes and compactions inside it)
and of msgspec decoding the same values into `schemas.polygon.Trade` one by one (the floor), both
measured in this process, alternating, `--reps` times; the ratio is the figure (no Kafka, sinks or
Bytewax, so what it shows is the book's own cost). When the book is compiled (`make core`), each
rep also times the same source run as Python (`python_book_us_per_tick`, `python_x_compiled`). Add `--profile` to run under cProfile once.

It also says whether the book ran compiled (`make core`) and, from one more pass under tracemalloc
(not timed), what the books' state costs in memory when every tick is in: bytes per
de-duplication id held (open bars' exact ids plus final minutes' compact ones, within
ALLOWED_LATENESS_S) and per symbol; and what a book's recovery snapshot costs once every tick is
in (`snapshot_ms_first`: every row built; `snapshot_ms_next`: the next epoch's, reusing the final
minutes' rows).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
import time
import tracemalloc
import zlib
from pathlib import Path
from types import ModuleType

import msgspec

import flows.book
from connectors.feeds.synthetic import generate
from schemas.conditions import ConditionRules
from schemas.polygon import Trade


def python_book() -> ModuleType:
    """flows/book.py loaded again and run as Python, over a Python flows/bars.py, whether or not
    `make core` compiled them: the same source both ways, so one process can time (or test) both."""
    here = Path(flows.book.__file__).resolve().parent
    modules = {}
    saved = sys.modules["flows.bars"], sys.modules["flows.book"]
    try:
        for name in ("bars", "book"):
            spec = importlib.util.spec_from_file_location(f"flows.{name}", here / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[f"flows.{name}"] = module  # book's `from flows.bars import ...` finds the Python one
            spec.loader.exec_module(module)
            modules[name] = module
    finally:
        sys.modules["flows.bars"], sys.modules["flows.book"] = saved
    return modules["book"]


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


def books_s(parts: list[list[bytes]], batch: int, module: ModuleType = flows.book) -> tuple[float, int]:
    rules = ConditionRules.load()
    books = [module.BarBook(rules, close_delay_ms=2000, lateness_ms=900_000) for _ in parts]
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


def filled_books(parts: list[list[bytes]], batch: int) -> list[flows.book.BarBook]:
    """A book per partition with every tick applied in consume-sized batches, not closed."""
    rules = ConditionRules.load()
    books = [flows.book.BarBook(rules, close_delay_ms=2000, lateness_ms=900_000) for _ in parts]
    for i in range(0, max(map(len, parts)), batch):
        for book, values in zip(books, parts, strict=True):
            if values[i : i + batch]:
                book.apply(values[i : i + batch])
    return books


def state_bytes(parts: list[list[bytes]], batch: int) -> dict[str, float]:
    """Memory the books hold once every tick is in (before closing): traced bytes, ids and symbols held."""
    tracemalloc.start()
    books = filled_books(parts, batch)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    open_ids = sum(len(bar.seen) for book in books for bar in book._bars.values() if not bar.final)
    final_ids = sum(len(ids) for book in books for ids in book._ids.values())
    symbols = sum(book.symbols for book in books)
    return {
        "state_mb": round(held / 1e6, 1),
        "ids_held": open_ids + final_ids,
        "open_ids": open_ids,
        "bytes_per_id": round(held / max(1, open_ids + final_ids), 1),
        "symbols_held": symbols,
        "kb_per_symbol": round(held / max(1, symbols) / 1024, 1),
    }


def snapshot_ms(parts: list[list[bytes]], batch: int) -> dict[str, float]:
    """Milliseconds per book of `BarBook.snapshot` once every tick is in, the median over the books: the
    first (every row built, as every snapshot cost before final minutes' rows were kept) and the
    next, with no change in between (the final minutes' rows reused: what an epoch pays at least)."""
    first, again, size = [], [], []
    for book in (books := filled_books(parts, batch)):
        started = time.process_time()
        size.append(len(book.snapshot()))
        first.append((time.process_time() - started) * 1000)
        started = time.process_time()
        book.snapshot()
        again.append((time.process_time() - started) * 1000)
    return {"snapshot_ms_first": round(statistics.median(first), 1), "snapshot_ms_next": round(statistics.median(again), 1),
            "snapshot_kb": round(statistics.median(size) / 1024), "final_bars_per_book": round(statistics.median(
                [sum(map(len, book._final.values())) for book in books]))}  # fmt: skip


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
    compiled = flows.book.__file__.endswith(".so")
    python = python_book() if compiled else None
    ratios, floors, books, bars, pythons = [], [], [], 0, []
    for _ in range(args.reps):
        f = floor_s(parts)
        b, bars = books_s(parts, args.batch)
        floors.append(f / n * 1e6)
        books.append(b / n * 1e6)
        ratios.append(b / f)
        if python is not None:  # the same source as Python, in the same run: what compiling it gained
            pythons.append(books_s(parts, args.batch, python)[0] / n * 1e6)
    print(json.dumps({
        "ticks": n, "bars": bars, "floor_us_per_tick": [round(x, 3) for x in floors],
        "book_us_per_tick": [round(x, 3) for x in books], "book_x_floor": [round(x, 2) for x in ratios],
        "median_book_x_floor": round(statistics.median(ratios), 2), "load_average": [round(x, 2) for x in os.getloadavg()],
        "compiled": compiled, "python_book_us_per_tick": [round(x, 3) for x in pythons],
        "python_x_compiled": round(statistics.median(pythons) / statistics.median(books), 2) if pythons else None,
        **state_bytes(parts, args.batch), **snapshot_ms(parts, args.batch),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
