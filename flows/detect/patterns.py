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

# o, h, l, c, v of the candles up to the judged one: numpy arrays or lists (only [-1], [-2], [-3] are read)
Grade = Callable[..., float]


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
ASK: int | None = None  # a screen's "TA-Lib must say"
_LOOSE = 1 + 1e-9  # relative slack on an average: far beyond the rounding of TA-Lib's running totals
_TIGHT = 1 - 1e-9
# name, TA-Lib function, grade, TA-Lib's look-back
Entry = tuple[str, Callable[..., np.ndarray], Grade, int]
LOOKBACK = {name: abstract.Function(fn.__name__).lookback for name, (fn, _, _) in TABLE.items()}  # type: ignore[attr-defined]  # talib.abstract builds Function at import


def select(names: Sequence[str]) -> list[Entry]:
    """The table rows for `names`, resolved once so recognising a bar does no lookups."""
    return [(name, TABLE[name][0], TABLE[name][1], LOOKBACK[name]) for name in names]


def screen(o: Candles, h: Candles, low: Candles, c: Candles) -> dict[str, int | None]:
    """What can be said of each pattern at the last candle without TA-Lib (the candles as lists,
    more than a pattern's look-back of them for it to be judged): absent or 0, TA-Lib cannot find
    it there; None, ask TA-Lib; else TA-Lib's signal. Each condition is one TA-Lib's definition
    requires, on the values TA-Lib compares (colours, real-body gaps and nesting exactly; the
    candle averages BodyDoji, BodyShort, ShadowVeryShort and Near with a 1e-9 slack):

    - doji: body <= 0.1 x the mean range of the 10 candles before; decided here unless within 1e-9;
    - engulfing: colours opposite, the body covering the one before: 100 (strictly on both ends),
      80 (flush on one), 0 (the same body), signed by the colour; decided here;
    - hammer (100), inverted hammer (100), shooting star (-100): a body below BodyShort, one shadow
      longer than the body, the other below ShadowVeryShort; the hammer's body near (Near) the low
      before, the other two's gapping down or up; decided here unless an average is within 1e-9;
    - harami: a short body inside the one before; stars: a body gapping away between a first
      candle and a third of the other colour, not short; soldiers and crows: three of a colour,
      each closing further.
    """
    n = len(c)
    out: dict[str, int | None] = {}
    if n < 3:
        return out
    o1, h1, l1, c1 = o[-1], h[-1], low[-1], c[-1]
    o2, c2 = o[-2], c[-2]
    white1, white2 = c1 >= o1, c2 >= o2
    top1, bottom1 = (c1, o1) if white1 else (o1, c1)
    top2, bottom2 = (c2, o2) if white2 else (o2, c2)
    body1 = top1 - bottom1
    if white1 != white2 and top1 >= top2 and bottom1 <= bottom2:
        strength = 100 if top1 > top2 and bottom1 < bottom2 else 0 if top1 == top2 and bottom1 == bottom2 else 80
        out["engulfing"] = strength if white1 else -strength
    if n < 11:
        return out
    mean_range = sum(map(_sub, h[-11:-1], low[-11:-1])) / 10
    mean_body = sum(map(abs, map(_sub, c[-11:-1], o[-11:-1]))) / 10
    doji = 0.1 * mean_range
    out["doji"] = 100 if body1 < doji * _TIGHT else 0 if body1 > doji * _LOOSE else ASK
    if n < 12:
        return out
    if body1 < mean_body * _LOOSE:
        upper, lower = h1 - top1, bottom1 - l1
        short_body = body1 < mean_body * _TIGHT  # else within the slack of BodyShort: TA-Lib decides
        if lower > body1 and upper < doji * _LOOSE:
            near = low[-2] + 0.2 * (sum(map(_sub, h[-7:-2], low[-7:-2])) / 5)  # Near, at the candle before
            if bottom1 <= near + abs(near) * 1e-9:
                sure = short_body and upper < doji * _TIGHT and bottom1 <= near - abs(near) * 1e-9
                out["hammer"] = 100 if sure else ASK
        if upper > body1 and lower < doji * _LOOSE:
            sure = short_body and lower < doji * _TIGHT
            if top1 <= bottom2:
                out["inverted_hammer"] = 100 if sure and top1 < bottom2 else ASK
            if bottom1 >= top2:
                out["shooting_star"] = -100 if sure and bottom1 > top2 else ASK
        if top1 <= top2 and bottom1 >= bottom2:
            out["harami"] = ASK
    if n < 13:
        return out
    o3, c3 = o[-3], c[-3]
    white3 = c3 >= o3
    if c1 - o1 >= mean_body * _TIGHT and c3 <= o3 and max(o2, c2) <= min(o3, c3):
        out["morning_star"] = ASK
    if o1 - c1 >= mean_body * _TIGHT and white3 and min(o2, c2) >= max(o3, c3):
        out["evening_star"] = ASK
    if white1 and white2 and white3 and c1 >= c2 >= c3:
        out["three_white_soldiers"] = ASK
    if n > 13 and c1 <= o1 and c2 <= o2 and c3 <= o3 and c1 <= c2 <= c3:
        out["three_black_crows"] = ASK
    return out


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def recognise_last(
    entries: Sequence[Entry], o: Candles, h: Candles, low: Candles, c: Candles, v: Candles, columns: Callable[[], Columns]
) -> list[tuple[str, int, float]]:
    """`recognise` for the newest bar: the last BARS candles as lists (or all there are), and
    `columns()` giving the same bars as arrays (o, h, l, c), read only when TA-Lib is asked."""
    said = screen(o, h, low, c)
    if not said:
        return []
    hits = []
    arrays: Columns | None = None
    n = len(c)
    for name, recognise_with, grade, lookback in entries:
        if name not in said or n <= lookback:
            continue  # (TA-Lib says 0 before its look-back)
        signal = said[name]
        if signal is None:
            if arrays is None:
                arrays = columns()
            signal = int(recognise_with(*arrays)[-1])
        if signal:
            hits.append((name, signal, round(float(grade(o, h, low, c, v)), 4)))
    return hits


def recognise(
    entries: Sequence[Entry], o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray
) -> list[tuple[str, int, float]]:
    """(name, TA-Lib signal, confidence) of every pattern in `entries` (see `select`) that ends at the last bar."""
    hits = []
    for name, recognise_with, grade, _ in entries:
        signal = recognise_with(o, h, low, c)[-1]
        if signal:
            hits.append((name, int(signal), round(float(grade(o, h, low, c, v)), 4)))
    return hits


def direction(name: str, signal: int) -> str:
    if TABLE[name][2]:
        return "neutral"
    return "up" if signal > 0 else "down"
