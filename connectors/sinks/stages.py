"""Wall-clock marks of where a minute's final bars are on their way out (`bench.ohlcv --latency-only`).

Off unless `TICKSTOCK_STAGE_LOG` names a file: then the bar flow appends one JSON line per mark
(`{"stage": ..., "t": <epoch seconds>, "cpu": <the thread's CPU seconds>, "thread": ..., ...}`) at the few points a minute's final
bars pass: the partition step that closed the minute, the sink's hand-over to its writer thread,
PostgreSQL done, Redis done, and what else holds the flow's thread or the writer around then
(the Redis-only sinks, the epoch's snapshots). Marks are made per batch, never per record, so
even when on they cost a few lines a second; when off, each is one test of a module global.
The benchmark reads the file and prints the per-stage breakdown of each minute boundary.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import IO

import msgspec

from schemas.bars import Bar

_encode = msgspec.json.Encoder().encode
_path = os.environ.get("TICKSTOCK_STAGE_LOG", "")
_lock = threading.Lock()
_file: IO[bytes] | None = open(_path, "ab", buffering=0) if _path else None  # noqa: SIM115  # open for the process's life


def enabled() -> bool:
    """Whether marks are written (TICKSTOCK_STAGE_LOG is set)."""
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


if _file is not None:
    gc.callbacks.append(_on_gc)
