"""Trend: how straight the last N closes line up in time, from TA-Lib's CORREL and LINEARREG_SLOPE.

The direction is up or down when the closes' correlation with time is at least
`min_strength` in size, flat otherwise. An event marks a change: a trend starting, or
reversing (the last trend before it went the other way).

>>> import numpy as np
>>> strength, slope = measure(np.array([10.0, 10.2, 10.1, 10.4, 10.6]), 5)
>>> round(strength, 3), round(slope, 3), direction_of(strength, 0.7)
(0.919, 0.14, 'up')
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import talib

from flows.detect.indicators import raw

Direction = Literal["up", "down", "flat"]
CORREL, LINEARREG_SLOPE = raw(talib.CORREL), raw(talib.LINEARREG_SLOPE)


def measure(close: np.ndarray, bars: int) -> tuple[float, float]:
    """(correlation of the last `bars` closes with time, slope in price per bar); (0, 0) if too few bars.

    Flat closes have no correlation: TA-Lib returns 0 for them.
    """
    if len(close) < bars:
        return 0.0, 0.0
    tail = close[-bars:]
    strength = CORREL(_time_axis(bars), tail, bars)[-1]
    slope = LINEARREG_SLOPE(tail, bars)[-1]
    return float(strength), float(slope)


_axes: dict[int, np.ndarray] = {}


def _time_axis(bars: int) -> np.ndarray:
    """0, 1, ..., bars - 1 as floats, made once per length."""
    axis = _axes.get(bars)
    if axis is None:
        axis = _axes[bars] = np.arange(bars, dtype=np.float64)
    return axis


def direction_of(strength: float, min_strength: float) -> Direction:
    if strength >= min_strength:
        return "up"
    if strength <= -min_strength:
        return "down"
    return "flat"


def change(current: Direction, previous: Direction, last_trend: Direction) -> str | None:
    """The event a bar's direction makes, given the previous bar's and the last non-flat one.

    >>> change("up", "flat", "down"), change("up", "flat", "flat"), change("up", "up", "up")
    ('trend_reversal', 'trend_start', None)
    """
    if current == "flat" or current == previous:
        return None
    return "trend_reversal" if last_trend not in ("flat", current) else "trend_start"
