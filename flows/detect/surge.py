"""Surges: a bar's volume far above its recent mean, or its close far from where it was a few bars ago.

Both are judged on the bar series alone. A price surge fires when the move first reaches the
threshold (not again on every bar that stays beyond it); a volume surge is judged bar by bar.
Confidence is 0.5 at the threshold, rising to 1 at twice it.

>>> import numpy as np
>>> round(volume_ratio(np.array([100.0] * 20 + [450.0]), 20), 2)
4.5
>>> round(price_move(np.array([100.0, 100.5, 101.0, 103.0]), 3), 2)
3.0
"""

from __future__ import annotations

from collections.abc import Sequence


def volume_ratio(volume: Sequence[float], bars: int) -> float | None:
    """The last bar's volume over the mean of the `bars` before it; None without enough history.

    (Volumes are whole numbers: their sum is exact in any order.)
    """
    if len(volume) <= bars:
        return None
    mean = float(sum(volume[-bars - 1 : -1])) / bars
    return float(volume[-1]) / mean if mean > 0 else None


def price_move(close: Sequence[float], bars: int, at: int = -1) -> float | None:
    """Percent change of the close at `at` from the close `bars` bars earlier."""
    end = len(close) + at if at < 0 else at
    start = end - bars
    if start < 0 or close[start] <= 0:
        return None
    return (float(close[end]) / float(close[start]) - 1.0) * 100.0


def price_surge(close: Sequence[float], bars: int, pct: float) -> float | None:
    """The move if it reached `pct` on this bar and had not on the bar before (same direction)."""
    move = price_move(close, bars)
    if move is None or abs(move) < pct:
        return None
    before = price_move(close, bars, at=-2)
    if before is not None and abs(before) >= pct and (before > 0) == (move > 0):
        return None
    return move


def grade(ratio: float, threshold: float) -> float:
    """0.5 at the threshold, 1 at twice it."""
    return min(1.0, 0.5 * abs(ratio) / threshold)
