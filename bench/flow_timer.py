"""Run the OHLCV flow once to the end of its input and print how long it took, as JSON.

Runs in its own process so `peak_rss_mb` is the flow's alone; timing starts after imports.
"""

from __future__ import annotations

import json
import resource
import time

from bytewax.testing import run_main

from flows.ohlcv import build_flow


def main() -> None:
    flow = build_flow()
    started = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"elapsed_s": elapsed, "peak_rss_mb": peak_kb / 1024}))


if __name__ == "__main__":
    main()
