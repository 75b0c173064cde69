"""Candlestick patterns: TA-Lib recognises them, a small grade per pattern says how clean the shape is.

Recognition is TA-Lib's `CDL*` functions, run over just enough bars to end at the bar being
judged (each function only looks back a fixed number of candles, so the answer equals
TA-Lib's over the whole series). `confidence` grades the hit's geometry, in [0.5, 1], with
the old TickStock's rules where it had them (Doji: 1 - (body/range)/0.1; Engulfing: 0.6 plus
bonuses for size, range and volume); 0.8 and up is what `tickstock:patterns:detected` carries.

>>> import numpy as np
>>> o, h, l, c = (np.array([10.0] * 13 + [x]) for x in (10.0, 10.6, 9.4, 10.01))
>>> h[:13], l[:13] = 10.5, 9.5
>>> [(name, signal) for name, signal, _ in recognise(select(("doji", "hammer")), o, h, l, c, np.ones(14))]
[('doji', 100)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import talib
from talib import abstract

from flows.detect.indicators import raw

Grade = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]


def _parts(o: float, h: float, low: float, c: float) -> tuple[float, float, float, float]:
    """body, upper shadow, lower shadow, range of one candle."""
    return abs(c - o), h - max(o, c), min(o, c) - low, h - low


def _clamp(x: float) -> float:
    return min(1.0, max(0.5, x))


def _doji(o, h, low, c, v) -> float:
    body, _, _, rng = _parts(o[-1], h[-1], low[-1], c[-1])
    if rng == 0:
        return 0.5  # a bar that never moved (TA-Lib calls it a doji) says nothing: the lowest grade
    return _clamp(1 - (body / rng) / 0.1)


def _shadow_grade(main: float, other: float, rng: float) -> float:
    """A long shadow on one side (>= 80 % of the range is best) and none on the other."""
    if rng == 0:
        return 0.5
    main, other = main / rng, other / rng
    return _clamp(0.5 + 0.3 * min(1.0, max(0.0, (main - 0.5) / 0.3)) + 0.2 * (1 - min(1.0, other / 0.1)))


def _lower_shadow(o, h, low, c, v) -> float:
    _, upper, lower, rng = _parts(o[-1], h[-1], low[-1], c[-1])
    return _shadow_grade(lower, upper, rng)


def _upper_shadow(o, h, low, c, v) -> float:
    _, upper, lower, rng = _parts(o[-1], h[-1], low[-1], c[-1])
    return _shadow_grade(upper, lower, rng)


def _engulfing(o, h, low, c, v) -> float:
    body0, _, _, rng0 = _parts(o[-2], h[-2], low[-2], c[-2])
    body1, _, _, rng1 = _parts(o[-1], h[-1], low[-1], c[-1])
    size = 0.2 * min(1.0, (body1 / body0 - 1)) if body0 else 0.2
    return _clamp(0.6 + size + (0.1 if rng1 > rng0 else 0.0) + (0.1 if v[-1] >= 1.5 * v[-2] else 0.0))


def _harami(o, h, low, c, v) -> float:
    body0, _, _, rng0 = _parts(o[-2], h[-2], low[-2], c[-2])
    body1, _, _, rng1 = _parts(o[-1], h[-1], low[-1], c[-1])
    inside = 0.2 * (1 - body1 / body0) if body0 else 0.0
    return _clamp(0.6 + inside + (0.1 if rng1 < rng0 else 0.0) + (0.1 if v[-1] < v[-2] else 0.0))


def _star(o, h, low, c, v) -> float:
    body0 = abs(c[-3] - o[-3])
    reclaimed = abs(c[-1] - c[-3]) if body0 else 0.0  # how far the third candle went back into the first
    depth = 0.2 * min(1.0, reclaimed / body0) if body0 else 0.0
    return _clamp(0.6 + depth + (0.2 if v[-1] > v[-2] else 0.0))


def _three(o, h, low, c, v) -> float:
    bodies = np.abs(c[-3:] - o[-3:])
    even = 0.2 * (bodies.min() / bodies.max()) if bodies.max() else 0.0
    rising_volume = v[-1] >= v[-2] >= v[-3]
    return _clamp(0.6 + even + (0.2 if rising_volume else 0.0))


# name -> (TA-Lib function, grade, direction-neutral?)
TABLE: dict[str, tuple[Callable[..., np.ndarray], Grade, bool]] = {
    "doji": (raw(talib.CDLDOJI), _doji, True),
    "hammer": (raw(talib.CDLHAMMER), _lower_shadow, False),
    "inverted_hammer": (raw(talib.CDLINVERTEDHAMMER), _upper_shadow, False),
    "shooting_star": (raw(talib.CDLSHOOTINGSTAR), _upper_shadow, False),
    "engulfing": (raw(talib.CDLENGULFING), _engulfing, False),
    "harami": (raw(talib.CDLHARAMI), _harami, False),
    "morning_star": (raw(talib.CDLMORNINGSTAR), _star, False),
    "evening_star": (raw(talib.CDLEVENINGSTAR), _star, False),
    "three_white_soldiers": (raw(talib.CDL3WHITESOLDIERS), _three, False),
    "three_black_crows": (raw(talib.CDL3BLACKCROWS), _three, False),
}
# Candles a judgement needs: the longest TA-Lib look-back plus the bar itself.
BARS = 1 + max(abstract.Function(fn.__name__).lookback for fn, _, _ in TABLE.values())  # type: ignore[attr-defined]  # talib.abstract builds Function at import


Entry = tuple[str, Callable[..., np.ndarray], Grade]


def select(names: Sequence[str]) -> list[Entry]:
    """The table rows for `names`, resolved once so recognising a bar does no lookups."""
    return [(name, TABLE[name][0], TABLE[name][1]) for name in names]


def recognise(
    entries: Sequence[Entry], o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray
) -> list[tuple[str, int, float]]:
    """(name, TA-Lib signal, confidence) of every pattern in `entries` (see `select`) that ends at the last bar."""
    hits = []
    for name, recognise_with, grade in entries:
        signal = recognise_with(o, h, low, c)[-1]
        if signal:
            hits.append((name, int(signal), round(float(grade(o, h, low, c, v)), 4)))
    return hits


def direction(name: str, signal: int) -> str:
    if TABLE[name][2]:
        return "neutral"
    return "up" if signal > 0 else "down"
