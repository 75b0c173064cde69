"""How long the bridge waits before trying again: reconnecting to the feed, producing a failed
record again, replacing a failed producer, reaching Kafka at start."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

QUIET_S: Final = 30.0  # this long without a failure (beyond twice the backoff cap), backoff starts over


def backoff_s(attempt: int, initial: float, maximum: float, rng: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with jitter: initial * 2**attempt, at most `maximum`, times 0.5-1.

    The exponent is capped before it is computed, so any attempt count (a weekend of failures,
    a million) gives a finite delay: `2**attempt` alone overflows a float after 1,023 attempts.

    >>> backoff_s(0, 0.5, 30, rng=lambda: 1.0), backoff_s(3, 0.5, 30, rng=lambda: 0.0), backoff_s(10**9, 0.5, 30, rng=lambda: 1.0)
    (0.5, 2.0, 30.0)
    """
    exponent = min(max(attempt, 0), 64)  # 2**64 * any initial >= 0.001 exceeds any maximum
    return min(maximum, initial * 2.0**exponent) * (0.5 + rng() / 2)
