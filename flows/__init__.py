"""Bytewax dataflows and the domain logic they compose.

Domain modules (`conditions`, `bars`, `book`) know nothing of Kafka, Redis or SQL;
`ohlcv` wires them to the connectors.

A module with a `.pxd` beside it (`bars`, `book`) is compiled with Cython by `make core`
(infra/core.py), and Python then imports the extension module in place of the `.py`. A build
older than its sources would run the old code, so importing `flows` from a checkout refuses it
and says how to rebuild; an installed wheel (no `.pxd` files) has nothing to compare against.
"""

from __future__ import annotations

import re
from pathlib import Path

_CIMPORT = re.compile(r"^from flows\.(\w+) cimport", re.MULTILINE)
_HERE = Path(__file__).resolve().parent


def stale_builds(here: Path = _HERE) -> list[str]:
    """Compiled modules of this checkout older than one of their sources: the `.py`, its `.pxd`, and
    the `.pxd` files that one cimports (the C types it compiles against)."""
    stale = []
    for pxd in here.glob("*.pxd"):
        sources = [pxd.with_suffix(".py"), pxd, *(here / f"{name}.pxd" for name in _CIMPORT.findall(pxd.read_text()))]
        newest = max(path.stat().st_mtime for path in sources if path.exists())
        stale += [so.name for so in here.glob(f"{pxd.stem}.*.so") if so.stat().st_mtime < newest]
    return sorted(stale)


if _stale := stale_builds():
    raise ImportError(
        f"flows: the compiled {', '.join(_stale)} predate their sources (flows/*.py, *.pxd) and would run old code: "
        "run `make core` to rebuild them, or delete them to run the Python sources"
    )
