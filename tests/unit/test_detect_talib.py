"""The detectors' indicator values and pattern hits equal TA-Lib's over the whole series, on 1-minute and 5-minute bars.

The flow keeps a window of recent bars per symbol and timeframe and steps the indicators bar by
bar; these tests run a long series through `BarDetector` exactly as the flow does and compare
every value and every hit with TA-Lib called once on the complete series.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import talib

from flows.detect.bar_detector import BarDetector, DetectionParams
from flows.detect.patterns import TABLE
from flows.detect.settings import DetectionSettings
from schemas.bars import Bar
from schemas.events import decode_event, encode_event, stable_id
from schemas.timeframes import TIMEFRAMES

MINUTE = 60_000
T0 = 1_764_253_800_000  # 2025-11-27 09:30 EST


def random_bars(n: int, seed: int, timeframe: str = "1m") -> list[Bar]:
    """A random walk with candles of every shape: long bodies, tiny bodies, long shadows, gaps."""
    step = TIMEFRAMES[timeframe].ms
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 0.4, n))
    open_ = close + rng.normal(0, 0.3, n) * rng.choice([0.02, 1.0, 2.5], n)
    top = np.maximum(open_, close) + rng.exponential(0.15, n) * rng.choice([0.0, 1.0, 4.0], n)
    bottom = np.minimum(open_, close) - rng.exponential(0.15, n) * rng.choice([0.0, 1.0, 4.0], n)
    volume = rng.integers(100, 5_000, n) * rng.choice([1, 1, 1, 6], n)
    return [
        Bar(symbol="TST", timeframe=timeframe, timestamp=T0 + i * step, open=float(open_[i]), high=float(top[i]),
            low=float(bottom[i]), close=float(close[i]), volume=int(volume[i]), vwap=float(close[i]), trades=10,
            revision=0, status="final")
        for i in range(n)
    ]  # fmt: skip


def run(bars: list[Bar]) -> list:
    timeframe = bars[0].timeframe
    detector = BarDetector("TST", DetectionParams(DetectionSettings()), timeframe)
    events = [event for bar in bars for event in detector.on_bar(bar)]
    for event in events:  # every record encodes (no numpy scalars) and decodes to itself, of its timeframe
        assert decode_event(encode_event(event)) == event
        assert event.timeframe == timeframe and event.status == "detected"
        assert event.id == stable_id(
            event.kind, "TST", timeframe, event.timestamp, *(() if event.kind == "indicator" else (event.type,))
        )
    return events


@pytest.fixture(scope="module", params=["1m", "5m"])
def series(request) -> tuple[list[Bar], list]:
    """3,000 bars of 1 minute, or of 5 minutes (bar starts 5 minutes apart, `timeframe` 5m)."""
    bars = random_bars(3000, seed=7, timeframe=request.param)
    return bars, run(bars)


def arrays(bars: list[Bar]) -> tuple[np.ndarray, ...]:
    return tuple(np.array([getattr(b, f) for b in bars], dtype=np.float64) for f in ("open", "high", "low", "close"))


def test_indicator_values_equal_talib_over_the_whole_series(series):
    bars, events = series
    _o, h, low, c = arrays(bars)
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    upper, middle, lower = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    expected = {
        "sma": talib.SMA(c, 20), "ema": talib.EMA(c, 20), "rsi": talib.RSI(c, 14),
        "macd": macd, "macd_signal": signal, "macd_hist": hist,
        "bb_upper": upper, "bb_middle": middle, "bb_lower": lower, "atr": talib.ATR(h, low, c, 14),
    }  # fmt: skip
    records = [e for e in events if e.kind == "indicator"]
    assert [r.timestamp for r in records] == [b.timestamp for b in bars]
    worst = {}
    for name, want in expected.items():
        got = np.array([math.nan if getattr(r, name) is None else getattr(r, name) for r in records])
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"{name}: warm-up differs from TA-Lib"
        worst[name] = float(np.nanmax(np.abs(got - want)))
    assert max(worst.values()) <= 1e-9, worst
    # the window (400 bars) was passed many times over, so this is not the trivial case
    assert len(bars) > 5 * DetectionSettings().indicators.window


def test_pattern_hits_equal_talib_cdl_functions(series):
    bars, events = series
    o, h, low, c = arrays(bars)
    hits = {(e.type, e.timestamp, e.signal) for e in events if e.kind == "pattern"}
    for name, (function, _, _) in TABLE.items():
        signals = function(o, h, low, c)
        expected = {(name, bars[i].timestamp, int(s)) for i, s in enumerate(signals) if s}
        got = {hit for hit in hits if hit[0] == name}
        assert got == expected, f"{name}: {len(got)} hits vs TA-Lib's {len(expected)}"
    by_name = {name: sum(1 for hit in hits if hit[0] == name) for name in TABLE}
    assert sum(by_name.values()) > 100 and sum(1 for n in by_name.values() if n) >= 7, by_name


def test_session_vwap_is_volume_weighted_over_the_session(series):
    bars, events = series
    records = [e for e in events if e.kind == "indicator"]
    day_end = T0 - (T0 - 1_764_219_600_000) + 86_400_000  # the next Eastern midnight
    pv = v = 0.0
    for bar, record in zip(bars, records, strict=True):
        if bar.timestamp >= day_end:
            break
        pv, v = pv + bar.vwap * bar.volume, v + bar.volume
        assert record.vwap == pytest.approx(pv / v, rel=1e-12)
