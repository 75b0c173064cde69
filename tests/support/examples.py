"""How many examples a property test runs: `make test`'s count, or a deeper one on request.

`make test` must stay within its time budget on a 2-core machine, so each property test runs the
count that still reaches the cases it is there for (the known hard ones are pinned with
`@example`); `TICKSTOCK_HYPOTHESIS=deep` runs the deep count the test was first written with
(several times more), for a change to a decoder or a nightly run:

    TICKSTOCK_HYPOTHESIS=deep .venv/bin/pytest tests/unit/test_feed_frames.py
"""

from __future__ import annotations

import os

DEEP = os.environ.get("TICKSTOCK_HYPOTHESIS", "").strip().lower() == "deep"


def examples(short: int, *, deep: int) -> int:
    """`short` examples in `make test`, `deep` with TICKSTOCK_HYPOTHESIS=deep."""
    if not 0 < short <= deep:
        raise ValueError(f"examples: want 0 < short <= deep, got {short} and {deep}")
    return deep if DEEP else short
