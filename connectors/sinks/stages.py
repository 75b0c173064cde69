"""Wall-clock marks of where a minute's final bars are on their way out (`bench.ohlcv --latency-only`).

Off unless the bar flow opens a log (`open_log`, from its STAGE_LOG setting): then it appends one JSON line per mark
(`{"stage": ..., "t": <epoch seconds>, "cpu": <the thread's CPU seconds>, "thread": ..., ...}`) at the few points a minute's final
bars pass: the partition step that closed the minute, the sink's hand-over to its writer thread,
PostgreSQL done, its publisher thread's start and Redis done, and what else holds the flow's thread or the writer around then
(the Redis-only sinks, the epoch's snapshots). Marks are made per batch, never per record, so
even when on they cost a few lines a second; when off, each is one test of a module global.
The benchmark reads the file and prints the per-stage breakdown of each minute boundary.
"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import IO

import msgspec

from schemas.bars import Bar

_encode = msgspec.json.Encoder().encode
_lock = threading.Lock()
_file: IO[bytes] | None = None


def open_log(path: Path) -> None:
    """Write marks to `path` (appended) from now on, for the rest of the process's life."""
    global _file
    if _file is None:
        _file = path.open("ab", buffering=0)
        gc.callbacks.append(_on_gc)


def enabled() -> bool:
    """Whether marks are written (a log was opened)."""
    return _file is not None


def mark(stage: str, **fields: object) -> None:
    """One mark, stamped now: wall clock (to compare with a minute's end) and the thread's CPU time
    (what a stage cost between two marks of one thread, whatever else the machine ran meanwhile)."""
    if _file is None:
        return
    line = (
        _encode(
            {"stage": stage, "t": time.time(), "cpu": time.thread_time(), "thread": threading.current_thread().name, **fields}
        )
        + b"\n"
    )
    with _lock:
        _file.write(line)


def first_minute(bars: list[Bar]) -> int | None:
    """The start (epoch ms) of the first final (revision 0) 1-minute bar among `bars`, if any."""
    for b in bars:
        if b.revision == 0 and b.timeframe == "1m" and b.status == "final":
            return b.timestamp
    return None


_gc_started = 0.0


def _on_gc(phase: str, info: dict[str, int]) -> None:
    """Collections of the older generations (the young one's are many and short) and what they took."""
    global _gc_started
    if info["generation"] == 0:
        return
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        mark("gc", generation=info["generation"], took_s=round(time.perf_counter() - _gc_started, 4))
