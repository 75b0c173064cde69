"""The two flows as installed programs: `tickstock-bar-flow` and `tickstock-detection-flow`.

    tickstock-bar-flow [-w N] [-i ID -a "host:port;host:port"] [-r DIR -s SECONDS -b SECONDS]
    tickstock-detection-flow [the same options]

Each is `python -m bytewax.run "flows.ohlcv:build_flow()"` (or `flows.detection`) with every
option and `BYTEWAX_*` variable of Bytewax's own runner passed through unchanged (`--help` lists
them), so the README's commands and these are interchangeable. The difference: the flow module
is imported here first, from this installation, because Bytewax's runner puts the working
directory at the front of `sys.path` and would otherwise pick up any `flows/` folder found there.
"""

from __future__ import annotations

import importlib
import runpy
import sys


def _run(module: str, prog: str, argv: list[str] | None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(f"{prog}: runs `python -m bytewax.run {module}:build_flow()` with these options (Bytewax's own):\n")
    importlib.import_module(module)
    sys.argv = [prog, f"{module}:build_flow()", *args]
    runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)
    return 0


def bar_flow(argv: list[str] | None = None) -> int:
    """Ticks to bars (`flows.ohlcv`)."""
    return _run("flows.ohlcv", "tickstock-bar-flow", argv)


def detection_flow(argv: list[str] | None = None) -> int:
    """Bars to indicators, patterns, trends, surges and alerts (`flows.detection`)."""
    return _run("flows.detection", "tickstock-detection-flow", argv)
