"""Indicator values from TA-Lib over a symbol's bar series, and the alert rules read off them.

Every value is TA-Lib's own (SMA, EMA, RSI, MACD, BBANDS, ATR) computed over the series the
symbol holds; nothing here re-derives a formula. TA-Lib returns whole arrays, so a revision
of an older bar costs nothing extra: the tail it changed comes out of the same call.

>>> import numpy as np
>>> close = np.linspace(10.0, 20.0, 60)
>>> v = compute(IndicatorSettings(window=100), close + 0.5, close - 0.5, close)
>>> round(float(v["sma"][-1]), 4), round(float(v["rsi"][-1]), 1)
(18.3898, 100.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import talib

from flows.detect.settings import AlertSettings, IndicatorSettings


def raw(function: object) -> Callable[..., Any]:
    """A TA-Lib function without the wrapper that lets it take pandas/polars Series.

    The wrapper costs ~3 us a call, more than many of the functions themselves, and the
    series here are numpy already.
    """
    return cast(Callable[..., Any], getattr(function, "__wrapped__", function))


MACD, BBANDS, SMA, EMA, RSI, ATR = map(raw, (talib.MACD, talib.BBANDS, talib.SMA, talib.EMA, talib.RSI, talib.ATR))

COLUMNS = ("sma", "ema", "rsi", "macd", "macd_signal", "macd_hist", "bb_upper", "bb_middle", "bb_lower", "atr")


def compute(cfg: IndicatorSettings, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> dict[str, np.ndarray]:
    """Every indicator for every bar of the series (NaN while an indicator warms up)."""
    macd, signal, hist = MACD(close, cfg.macd_fast, cfg.macd_slow, cfg.macd_signal)
    upper, middle, lower = BBANDS(close, cfg.bb_period, cfg.bb_stddev, cfg.bb_stddev, 0)
    return {
        "sma": SMA(close, cfg.sma_period),
        "ema": EMA(close, cfg.ema_period),
        "rsi": RSI(close, cfg.rsi_period),
        "macd": macd,
        "macd_signal": signal,
        "macd_hist": hist,
        "bb_upper": upper,
        "bb_middle": middle,
        "bb_lower": lower,
        "atr": ATR(high, low, close, cfg.atr_period),
    }


def params(cfg: IndicatorSettings) -> dict[str, int | float]:
    """The periods, as every indicator record carries them."""
    return {
        "sma": cfg.sma_period, "ema": cfg.ema_period, "rsi": cfg.rsi_period,
        "macd_fast": cfg.macd_fast, "macd_slow": cfg.macd_slow, "macd_signal": cfg.macd_signal,
        "bb_period": cfg.bb_period, "bb_stddev": cfg.bb_stddev, "atr": cfg.atr_period, "window": cfg.window,
    }  # fmt: skip


class Firing:
    """One alert rule that fired on a bar: what the Alert record says about it."""

    __slots__ = ("rule", "indicator", "value", "threshold", "direction", "message")

    def __init__(self, rule: str, indicator: str, value: float, threshold: float, direction: str, message: str) -> None:
        self.rule, self.indicator, self.value, self.threshold = rule, indicator, value, threshold
        self.direction, self.message = direction, message


def alerts(cfg: AlertSettings, v: dict[str, np.ndarray], close: np.ndarray, i: int) -> list[Firing]:
    """The rules that fire at bar `i`: crossings between bar i-1 and bar i, so each fires once per move.

    >>> import numpy as np
    >>> v = {k: np.array([np.nan, np.nan]) for k in ("macd_hist", "bb_upper", "bb_lower")}
    >>> v["rsi"] = np.array([68.0, 71.5])
    >>> [f.rule for f in alerts(AlertSettings(), v, np.array([1.0, 1.0]), 1)]
    ['rsi_overbought']
    """
    if i < 1:
        return []
    rules = cfg.rules
    fired: list[Firing] = []
    rsi0, rsi1 = v["rsi"][i - 1], v["rsi"][i]
    if "rsi_overbought" in rules and rsi0 < cfg.rsi_upper <= rsi1:
        fired.append(
            Firing("rsi_overbought", "rsi", rsi1, cfg.rsi_upper, "up", f"RSI crossed above {cfg.rsi_upper:g} ({rsi1:.1f})")
        )
    if "rsi_oversold" in rules and rsi0 > cfg.rsi_lower >= rsi1:
        fired.append(
            Firing("rsi_oversold", "rsi", rsi1, cfg.rsi_lower, "down", f"RSI crossed below {cfg.rsi_lower:g} ({rsi1:.1f})")
        )
    h0, h1 = v["macd_hist"][i - 1], v["macd_hist"][i]
    if "macd_cross_up" in rules and h0 <= 0 < h1:
        fired.append(Firing("macd_cross_up", "macd", h1, 0.0, "up", f"MACD crossed above its signal (histogram {h1:.4f})"))
    if "macd_cross_down" in rules and h0 >= 0 > h1:
        fired.append(Firing("macd_cross_down", "macd", h1, 0.0, "down", f"MACD crossed below its signal (histogram {h1:.4f})"))
    c0, c1 = close[i - 1], close[i]
    up0, up1 = v["bb_upper"][i - 1], v["bb_upper"][i]
    if "bollinger_above" in rules and c1 > up1 and c0 <= up0:
        fired.append(Firing("bollinger_above", "bb_upper", c1, up1, "up", f"close {c1:g} above the upper band {up1:.4f}"))
    lo0, lo1 = v["bb_lower"][i - 1], v["bb_lower"][i]
    if "bollinger_below" in rules and c1 < lo1 and c0 >= lo0:
        fired.append(Firing("bollinger_below", "bb_lower", c1, lo1, "down", f"close {c1:g} below the lower band {lo1:.4f}"))
    return fired


def alerts_at(
    cfg: AlertSettings, before: Sequence[float | None], now: Sequence[float | None], c0: float, c1: float
) -> list[Firing]:
    """`alerts` on the values of two consecutive bars (in `streaming.NAMES` order, None while warming).

    The same rules and records as `alerts`; a value still warming never crosses anything.

    >>> before = (None, None, 68.0, None, None, None, None, None, None, None)
    >>> now = (None, None, 71.5, None, None, None, None, None, None, None)
    >>> [f.rule for f in alerts_at(AlertSettings(), before, now, 1.0, 1.0)]
    ['rsi_overbought']
    """
    rules = cfg.rules
    fired: list[Firing] = []
    rsi0, rsi1 = before[2], now[2]
    if rsi0 is not None and rsi1 is not None:
        upper, lower = cfg.rsi_upper, cfg.rsi_lower
        if rsi0 < upper <= rsi1 and "rsi_overbought" in rules:
            fired.append(Firing("rsi_overbought", "rsi", rsi1, upper, "up", f"RSI crossed above {upper:g} ({rsi1:.1f})"))
        if rsi0 > lower >= rsi1 and "rsi_oversold" in rules:
            fired.append(Firing("rsi_oversold", "rsi", rsi1, lower, "down", f"RSI crossed below {lower:g} ({rsi1:.1f})"))
    h0, h1 = before[5], now[5]
    if h0 is not None and h1 is not None:
        if h0 <= 0 < h1 and "macd_cross_up" in rules:
            fired.append(Firing("macd_cross_up", "macd", h1, 0.0, "up", f"MACD crossed above its signal (histogram {h1:.4f})"))
        if h0 >= 0 > h1 and "macd_cross_down" in rules:
            fired.append(
                Firing("macd_cross_down", "macd", h1, 0.0, "down", f"MACD crossed below its signal (histogram {h1:.4f})")
            )
    up0, up1 = before[6], now[6]
    if up0 is not None and up1 is not None and c1 > up1 and c0 <= up0 and "bollinger_above" in rules:
        fired.append(Firing("bollinger_above", "bb_upper", c1, up1, "up", f"close {c1:g} above the upper band {up1:.4f}"))
    lo0, lo1 = before[8], now[8]
    if lo0 is not None and lo1 is not None and c1 < lo1 and c0 >= lo0 and "bollinger_below" in rules:
        fired.append(Firing("bollinger_below", "bb_lower", c1, lo1, "down", f"close {c1:g} below the lower band {lo1:.4f}"))
    return fired
