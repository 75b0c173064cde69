"""Run the bar flow once to the end of its input and print how long it took, as JSON.

Runs in its own process so `peak_rss_mb` is the flow's alone; timing starts after imports. `cpu_s`
is the process's CPU time (all its threads), a figure that depends less on what else the machine runs.
`peak_rss_mb` is this program's own high-water mark (`VmHWM`), not `ru_maxrss`: Linux carries the
latter over from the process that started this one (its peak before the exec), so a benchmark
holding the ticks in memory when it starts the flow (`bench.ohlcv` keeps them for the decode
floor) would be reported as the flow's peak.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

from bytewax.testing import run_main

from flows.ohlcv import build_flow


def _peak_kb() -> int:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    flow = build_flow()
    started_at, started, cpu = time.time(), time.perf_counter(), time.process_time()
    run_main(flow)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak_kb = _peak_kb()
    print(json.dumps({"elapsed_s": elapsed, "cpu_s": cpu, "peak_rss_mb": peak_kb / 1024, "started_at": started_at}))


if __name__ == "__main__":
    main()
