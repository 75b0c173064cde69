"""TA-Lib's indicators, one bar at a time: the same values as TA-Lib over the whole series, in constant time.

TA-Lib computes SMA and Bollinger by running sums, EMA, RSI, ATR and MACD by recursions with
a particular seeding. `Indicators.step` carries exactly those sums and recursions from one
bar to the next, with TA-Lib's floating-point operations in TA-Lib's order (read from its C
source: ta_SMA.c, ta_EMA.c, ta_RSI.c, ta_ATR.c/ta_TRANGE.c, ta_MACD.c, ta_BBANDS.c with
ta_STDDEV.c/ta_VAR.c), so the values are TA-Lib's over everything stepped so far, not an
approximation of them:

- SMA: a running total; at bar i (from period-1 on) add the close, output total / period,
  then take off the oldest close of the window.
- EMA: seeded with the SMA of the first `period` closes, then `(close - ema) * k + ema` with
  k = 2 / (period + 1).
- RSI: gains and losses summed over the first `period` changes and divided by `period`, then
  Wilder's smoothing (times period - 1, plus today's, over period); 100 * gain / (gain + loss),
  0 when that sum is zero (TA-Lib's epsilon). The unstable period is TA-Lib's default, 0.
- ATR: the mean of the first `period` true ranges (bars 1..period), then Wilder's smoothing;
  a period of 1 is the true range itself.
- MACD: TA-Lib seeds both EMAs on the same bar, slow-1: the slow one with the mean of the
  first `slow` closes, the fast one with the mean of the `fast` closes ending there (not of
  the first `fast`). The signal line is seeded with the mean of the first `signal` MACD values.
- Bollinger (SMA middle, TA-Lib's running total): the TA-Lib this project pins (0.8) takes the
  deviation from a numerically stable variance (a flat series gives exactly 0, where sums of
  squares would leave rounding noise); here it is kept as running sums of the closes' distances
  from a recent close, re-summed from the window every `period` bars so no error accumulates:
  within 1e-12 of TA-Lib's, exactly 0 for flat closes. Its root (0 below TA-Lib's epsilon) times
  `nbdev` either side.

Every value equals TA-Lib's to 1e-9 and better (tests/unit/test_streaming.py compares them on
long series of several shapes; most are bit-identical).

The state is an immutable tuple, so the detector keeps the states of its recent bars for
free (a reference each) and replays a revised bar and everything after it from the one
before: the result is what TA-Lib gives on the corrected series.

>>> import numpy as np, talib
>>> from flows.detect.settings import IndicatorSettings
>>> ind = Indicators(IndicatorSettings())
>>> close = 100 + np.cumsum(np.random.default_rng(1).normal(0, 1, 300))
>>> state, values = ind.start(), None
>>> closes = close.tolist()
>>> for i, c in enumerate(closes):
...     state, values = ind.step(state, c + 0.5, c - 0.5, closes[max(0, i - 20) : i + 1])
>>> bool(abs(values[2] - talib.RSI(close, 14)[-1]) < 1e-12), bool(abs(values[3] - talib.MACD(close)[0][-1]) < 1e-12)
(True, True)
"""

from __future__ import annotations

import math

from flows.detect.settings import IndicatorSettings

# TA-Lib's TA_EPSILON (ta_utility.h of the TA-Lib this project's `ta-lib` wheel bundles): a
# sum of gains and losses, or a variance, below it counts as zero.
EPSILON = 1e-14

# Indicator values of one bar, in this order (None while an indicator warms up).
NAMES = ("sma", "ema", "rsi", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_middle", "bb_lower", "atr")

# (bars stepped, previous close, SMA total, Bollinger total, Bollinger's shift, the sums of the
#  window's distances from it and of their squares,
#  EMA (its seed sum while warming), RSI gain, RSI loss, MACD fast EMA, slow EMA (seed sums
#  while warming), signal (its seed sum while warming), ATR (its seed sum while warming))
State = tuple[int, float, float, float, float, float, float, float, float, float, float, float, float, float]
Values = tuple[
    float | None, float | None, float | None, float | None, float | None,
    float | None, float | None, float | None, float | None, float | None,
]  # fmt: skip

EMPTY: State = (0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class Indicators:
    """The periods, resolved once; `step` is pure (state in, state and values out)."""

    __slots__ = ("sma_p", "ema_p", "rsi_p", "fast_p", "slow_p", "signal_p", "bb_p", "bb_dev", "atr_p", "_k", "trail")

    def __init__(self, cfg: IndicatorSettings) -> None:
        self.sma_p, self.ema_p, self.rsi_p = cfg.sma_period, cfg.ema_period, cfg.rsi_period
        self.fast_p, self.slow_p, self.signal_p = cfg.macd_fast, cfg.macd_slow, cfg.macd_signal
        if self.fast_p > self.slow_p:  # TA-Lib swaps them (the settings refuse it anyway)
            self.fast_p, self.slow_p = self.slow_p, self.fast_p
        self.bb_p, self.bb_dev, self.atr_p = cfg.bb_period, float(cfg.bb_stddev), cfg.atr_period
        # EMA, MACD fast, slow and signal smoothing constants: TA-Lib's 2.0 / (period + 1)
        self._k = tuple(2.0 / (p + 1) for p in (self.ema_p, self.fast_p, self.slow_p, self.signal_p))
        # how many closes `step` reads (ending at its bar): the SMA's window, Bollinger's and the one before
        self.trail = max(self.sma_p, self.bb_p + 1)

    def start(self) -> State:
        return EMPTY

    def step(self, state: State, h: float, low: float, closes: list[float]) -> tuple[State, Values]:
        """One bar: its high and low, and the closes up to and including its own (at least `trail`
        of them once that many bars were stepped)."""
        i, prev, sma_t, bb_t, shift, dist, dist2, ema, gain, loss, fast, slow, sig, atr = state
        c = closes[-1]

        sma_p = self.sma_p
        sma = None
        sma_t += c
        if i >= sma_p - 1:
            sma = sma_t / sma_p
            sma_t -= closes[-sma_p]

        ema_p = self.ema_p
        k_ema, k_fast, k_slow, k_sig = self._k
        ema_v = None
        if i < ema_p - 1:
            ema += c
        elif i == ema_p - 1:
            ema = ema_v = (ema + c) / ema_p
        else:
            ema = ema_v = (c - ema) * k_ema + ema

        rsi_p = self.rsi_p
        rsi = None
        if i:
            d = c - prev
            if i <= rsi_p:
                if d < 0.0:
                    loss -= d
                else:
                    gain += d
                if i == rsi_p:
                    loss /= rsi_p
                    gain /= rsi_p
            else:
                loss *= rsi_p - 1
                gain *= rsi_p - 1
                if d < 0.0:
                    loss -= d
                else:
                    gain += d
                loss /= rsi_p
                gain /= rsi_p
            if i >= rsi_p:
                total = gain + loss
                rsi = 100.0 * (gain / total) if not -EPSILON < total < EPSILON else 0.0

        fast_p, slow_p, sig_p = self.fast_p, self.slow_p, self.signal_p
        macd = signal = hist = None
        seed = slow_p - 1
        if i < seed:
            slow += c
            if i >= slow_p - fast_p:
                fast += c
        elif i == seed:
            fast = (fast + c) / fast_p
            slow = (slow + c) / slow_p
            sig = fast - slow
        else:
            fast = (c - fast) * k_fast + fast
            slow = (c - slow) * k_slow + slow
            m = fast - slow
            if i < seed + sig_p - 1:
                sig += m
            elif i == seed + sig_p - 1:
                sig = (sig + m) / sig_p
            else:
                sig = (m - sig) * k_sig + sig
        if i >= seed + sig_p - 1:
            macd = fast - slow
            if sig_p == 1 and i == seed:
                sig = macd / 1
            signal = sig
            hist = macd - sig

        bb_p = self.bb_p
        upper = middle = lower = None
        bb_t += c
        if i >= bb_p - 1:
            middle = bb_t / bb_p
            bb_t -= closes[-bb_p]
            if (i - bb_p + 1) % bb_p == 0:  # (re)start the sums from the window itself
                shift, dist, dist2 = c, 0.0, 0.0
                for x in closes[-bb_p:]:
                    x -= shift
                    dist += x
                    dist2 += x * x
            else:
                new, old = c - shift, closes[-bb_p - 1] - shift
                dist += new - old
                dist2 += new * new - old * old
            var = (dist2 - dist * dist / bb_p) / bb_p
            dev = math.sqrt(var) if not var < EPSILON else 0.0
            if self.bb_dev != 1.0:
                dev = dev * self.bb_dev
            upper = middle + dev
            lower = middle - dev

        atr_p = self.atr_p
        atr_v = None
        if i:
            tr = h - low
            x = abs(prev - h)
            if x > tr:
                tr = x
            x = abs(prev - low)
            if x > tr:
                tr = x
            if atr_p == 1:
                atr_v = tr
            elif i < atr_p:
                atr += tr
            elif i == atr_p:
                atr = atr_v = (atr + tr) / atr_p
            else:
                atr *= atr_p - 1
                atr += tr
                atr /= atr_p
                atr_v = atr

        return (
            (i + 1, c, sma_t, bb_t, shift, dist, dist2, ema, gain, loss, fast, slow, sig, atr),
            (sma, ema_v, rsi, macd, signal, hist, upper, middle, lower, atr_v),
        )
