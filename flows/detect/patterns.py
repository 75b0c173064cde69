"""Candlestick patterns: TA-Lib recognises them, a small grade per pattern says how clean the shape is.

Recognition is TA-Lib's `CDL*` functions, run over just enough bars to end at the bar being
judged (each function only looks back a fixed number of candles, so the answer equals
TA-Lib's over the whole series). A call costs several microseconds, so `recognise_last`
first asks a cheap necessary condition of each pattern, read off TA-Lib's definition (the
candle colours, the real-body gaps and nesting TA-Lib compares exactly, never loosened by
an average): TA-Lib is only asked when its answer can be a hit. The doji (a real body no
larger than a tenth of the mean range of the ten candles before) is decided here, and TA-Lib
asked only when the body is within 1e-9 of that bound. `confidence` grades the hit's geometry, in [0.5, 1], with
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
from operator import sub as _sub

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
    bodies = (abs(c[-3] - o[-3]), abs(c[-2] - o[-2]), abs(c[-1] - o[-1]))  # arrays or lists alike
    even = 0.2 * (min(bodies) / max(bodies)) if max(bodies) else 0.0
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


Candles = list[float]
# The mean high-low range and the mean real body of the 10 candles before the judged one (TA-Lib's
# HighLow and RealBody averages of period 10, which BodyDoji, BodyShort and ShadowVeryShort use).
Averages = tuple[float, float]
# o, h, l, c of the last candles (the judged one last, more than TA-Lib's look-back of them) and
# the averages -> 0: TA-Lib cannot find the pattern there; None: ask TA-Lib; else TA-Lib's signal.
Screen = Callable[[Candles, Candles, Candles, Candles, Averages], int | None]
ASK: int | None = None
_LOOSE = 1 + 1e-9  # relative slack on an average: far beyond the rounding of TA-Lib's running totals
_TIGHT = 1 - 1e-9


def averages(o: Candles, h: Candles, low: Candles, c: Candles) -> Averages:
    """The candle averages at the last candle (needs 11 candles)."""
    return (sum(map(_sub, h[-11:-1], low[-11:-1])) / 10, sum(map(abs, map(_sub, c[-11:-1], o[-11:-1]))) / 10)


def _doji_screen(o: Candles, h: Candles, low: Candles, c: Candles, avg: Averages) -> int | None:
    """TA-Lib's CDLDOJI: body <= 0.1 x the mean high-low range of the 10 candles before (BodyDoji)."""
    bound = 0.1 * avg[0]
    body = abs(c[-1] - o[-1])
    if body < bound * _TIGHT:
        return 100
    if body > bound * _LOOSE:
        return 0
    return ASK


def _small_body_short_shadow(o: Candles, h: Candles, low: Candles, c: Candles, avg: Averages, upper: bool) -> bool:
    """Hammer-like: a body below BodyShort, one shadow longer than the body (ShadowLong), the other
    below ShadowVeryShort (a tenth of the mean range)."""
    top, bottom = max(o[-1], c[-1]), min(o[-1], c[-1])
    body = top - bottom
    if body >= avg[1] * _LOOSE:
        return False
    long, short = (h[-1] - top, bottom - low[-1]) if upper else (bottom - low[-1], h[-1] - top)
    return long > body and short < 0.1 * avg[0] * _LOOSE


def _hammer_screen(o: Candles, h: Candles, low: Candles, c: Candles, avg: Averages) -> int | None:
    return ASK if _small_body_short_shadow(o, h, low, c, avg, upper=False) else 0


def _inverted_hammer_screen(o: Candles, h: Candles, low: Candles, c: Candles, avg: Averages) -> int | None:
    """Inverted hammer: and a real body gapping down from the one before."""
    if not _small_body_short_shadow(o, h, low, c, avg, upper=True):
        return 0
    return ASK if max(o[-1], c[-1]) <= min(o[-2], c[-2]) else 0


def _shooting_star_screen(o: Candles, h: Candles, low: Candles, c: Candles, avg: Averages) -> int | None:
    """Shooting star: and a real body gapping up from the one before."""
    if not _small_body_short_shadow(o, h, low, c, avg, upper=True):
        return 0
    return ASK if min(o[-1], c[-1]) >= max(o[-2], c[-2]) else 0


def _engulfing_screen(o: Candles, h: Candles, low: Candles, c: Candles, avg: Averages) -> int | None:
    """Engulfing: colours opposite, the real body covering the one before."""
    if (c[-1] >= o[-1]) == (c[-2] >= o[-2]):
        return 0
    return ASK if max(o[-1], c[-1]) >= max(o[-2], c[-2]) and min(o[-1], c[-1]) <= min(o[-2], c[-2]) else 0


def _harami_screen(o: Candles, h: Candles, low: Candles, c: Candles, avg: Averages) -> int | None:
    """Harami: a short real body (BodyShort) inside the one before."""
    if abs(c[-1] - o[-1]) > avg[1] * _LOOSE:
        return 0
    return ASK if max(o[-1], c[-1]) <= max(o[-2], c[-2]) and min(o[-1], c[-1]) >= min(o[-2], c[-2]) else 0


def _morning_star_screen(o: Candles, h: Candles, low: Candles, c: Candles, avg: Averages) -> int | None:
    """Morning star: black, then a real body gapping down, then white and not short."""
    if c[-3] > o[-3] or c[-1] < o[-1] or c[-1] - o[-1] < avg[1] * _TIGHT:
        return 0
    return ASK if max(o[-2], c[-2]) <= min(o[-3], c[-3]) else 0


def _evening_star_screen(o: Candles, h: Candles, low: Candles, c: Candles, avg: Averages) -> int | None:
    """Evening star: white, then a real body gapping up, then black and not short."""
    if c[-3] < o[-3] or c[-1] > o[-1] or o[-1] - c[-1] < avg[1] * _TIGHT:
        return 0
    return ASK if min(o[-2], c[-2]) >= max(o[-3], c[-3]) else 0


def _soldiers_screen(o: Candles, h: Candles, low: Candles, c: Candles, avg: Averages) -> int | None:
    """Three white soldiers: three white candles, each closing higher."""
    if c[-1] < o[-1] or c[-2] < o[-2] or c[-3] < o[-3]:
        return 0
    return ASK if c[-1] >= c[-2] >= c[-3] else 0


def _crows_screen(o: Candles, h: Candles, low: Candles, c: Candles, avg: Averages) -> int | None:
    """Three black crows: three black candles, each closing lower."""
    if c[-1] > o[-1] or c[-2] > o[-2] or c[-3] > o[-3]:
        return 0
    return ASK if c[-1] <= c[-2] <= c[-3] else 0


SCREENS: dict[str, Screen] = {
    "doji": _doji_screen,
    "hammer": _hammer_screen,
    "inverted_hammer": _inverted_hammer_screen,
    "shooting_star": _shooting_star_screen,
    "engulfing": _engulfing_screen,
    "harami": _harami_screen,
    "morning_star": _morning_star_screen,
    "evening_star": _evening_star_screen,
    "three_white_soldiers": _soldiers_screen,
    "three_black_crows": _crows_screen,
}

# name, TA-Lib function, grade, screen, TA-Lib's look-back
Entry = tuple[str, Callable[..., np.ndarray], Grade, Screen, int]
LOOKBACK = {name: abstract.Function(fn.__name__).lookback for name, (fn, _, _) in TABLE.items()}  # type: ignore[attr-defined]  # talib.abstract builds Function at import


def select(names: Sequence[str]) -> list[Entry]:
    """The table rows for `names`, resolved once so recognising a bar does no lookups."""
    return [(name, TABLE[name][0], TABLE[name][1], SCREENS[name], LOOKBACK[name]) for name in names]


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def recognise_last(
    entries: Sequence[Entry], o: Candles, h: Candles, low: Candles, c: Candles, v: Candles, columns: Callable[[], Columns]
) -> list[tuple[str, int, float]]:
    """`recognise` for the newest bar: the last BARS candles as lists (or all there are), and
    `columns()` giving the same bars as arrays (o, h, l, c), read only when TA-Lib is asked."""
    n = len(c)
    if n < 2:
        return []
    hits = []
    arrays: Columns | None = None
    avg = averages(o, h, low, c) if n >= 11 else (0.0, 0.0)
    for name, recognise_with, grade, screen, lookback in entries:
        if n <= lookback:
            continue  # TA-Lib says 0 before its look-back
        signal = screen(o, h, low, c, avg)
        if signal == 0:
            continue
        if signal is None:
            if arrays is None:
                arrays = columns()
            signal = int(recognise_with(*arrays)[-1])
            if not signal:
                continue
        hits.append((name, signal, round(float(grade(o, h, low, c, v)), 4)))
    return hits


def recognise(
    entries: Sequence[Entry], o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray
) -> list[tuple[str, int, float]]:
    """(name, TA-Lib signal, confidence) of every pattern in `entries` (see `select`) that ends at the last bar."""
    hits = []
    for name, recognise_with, grade, _, _ in entries:
        signal = recognise_with(o, h, low, c)[-1]
        if signal:
            hits.append((name, int(signal), round(float(grade(o, h, low, c, v)), 4)))
    return hits


def direction(name: str, signal: int) -> str:
    if TABLE[name][2]:
        return "neutral"
    return "up" if signal > 0 else "down"
