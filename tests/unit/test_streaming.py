"""Streaming indicators and screened patterns against TA-Lib itself, and the detector across a
restart and across revisions reaching several bars back."""

from __future__ import annotations

import math

import numpy as np
import pytest
import talib

from flows.detect import patterns
from flows.detect.bar_detector import BarDetector, DetectionParams
from flows.detect.settings import DetectionSettings, IndicatorSettings
from flows.detect.streaming import NAMES, Indicators
from schemas.bars import Bar
from tests.unit.test_detect_talib import random_bars

MINUTE = 60_000
T0 = 1_764_253_800_000


def talib_values(cfg: IndicatorSettings, h: np.ndarray, low: np.ndarray, c: np.ndarray) -> np.ndarray:
    macd = talib.MACD(c, cfg.macd_fast, cfg.macd_slow, cfg.macd_signal)
    bands = talib.BBANDS(c, cfg.bb_period, cfg.bb_stddev, cfg.bb_stddev, 0)
    return np.array([
        talib.SMA(c, cfg.sma_period), talib.EMA(c, cfg.ema_period), talib.RSI(c, cfg.rsi_period), *macd, *bands,
        talib.ATR(h, low, c, cfg.atr_period),
    ])  # fmt: skip


def stepped(cfg: IndicatorSettings, h: np.ndarray, low: np.ndarray, c: np.ndarray) -> np.ndarray:
    ind = Indicators(cfg)
    state, closes, rows = ind.start(), c.tolist(), []
    for j in range(len(closes)):
        state, values = ind.step(state, float(h[j]), float(low[j]), closes[max(0, j - ind.trail + 1) : j + 1])
        rows.append([math.nan if x is None else x for x in values])
    return np.array(rows).T


SHAPES = {
    "walk": lambda rng, n: 100 + np.cumsum(rng.normal(0, 0.4, n)),
    "flat": lambda rng, n: np.full(n, 37.13),
    "cent_steps": lambda rng, n: np.round(100 + np.cumsum(rng.choice([-0.01, 0, 0, 0.01], n)), 2),
    "penny": lambda rng, n: np.abs(0.5 + np.cumsum(rng.normal(0, 0.001, n))) + 0.01,
    "expensive": lambda rng, n: 600_000 + np.cumsum(rng.normal(0, 50, n)),
}
PERIODS = [
    IndicatorSettings(),
    IndicatorSettings(sma_period=5, ema_period=3, rsi_period=2, macd_fast=2, macd_slow=3, macd_signal=1,
                      bb_period=7, bb_stddev=1.0, atr_period=1, window=50),
    IndicatorSettings(macd_fast=5, macd_slow=35, macd_signal=20, bb_stddev=2.5, atr_period=2),
]  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cfg", PERIODS, ids=["defaults", "shortest", "long_macd"])
def test_streaming_indicators_equal_talib_over_the_whole_series(shape, cfg):
    rng = np.random.default_rng(len(shape))
    c = SHAPES[shape](rng, 2500)
    h, low = c + rng.exponential(0.1, len(c)) * c / 100, c - rng.exponential(0.1, len(c)) * c / 100
    got, want = stepped(cfg, h, low, c), talib_values(cfg, h, low, c)
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert np.array_equal(np.isnan(g), np.isnan(w)), f"{name}: warm-up differs from TA-Lib"
        scale = max(1.0, float(np.nanmax(np.abs(w))))  # relative for the 600,000 series
        assert float(np.nanmax(np.abs(g - w))) <= 1e-9 * scale, name
    if shape == "flat":  # no rounding noise in the bands of a flat series: TA-Lib's are exactly the middle
        assert np.array_equal(got[6], got[7], equal_nan=True) and np.array_equal(got[6], want[6], equal_nan=True)


def arrays(bars: list[Bar]) -> tuple[np.ndarray, ...]:
    return tuple(np.array([getattr(b, f) for b in bars], dtype=np.float64) for f in ("open", "high", "low", "close", "volume"))


def indicator_matrix(records) -> np.ndarray:
    return np.array([[math.nan if getattr(r, n) is None else getattr(r, n) for n in NAMES] for r in records]).T


def test_a_restart_mid_series_continues_with_talibs_values():
    """Snapshot and restore as the flow's recovery does, twice: the same records as without, TA-Lib's values."""
    bars = random_bars(2000, seed=11)
    params = DetectionParams(DetectionSettings())
    whole = BarDetector("TST", params)
    expected = [e for b in bars for e in whole.on_bar(b)]
    d, got = BarDetector("TST", params), []
    for i, b in enumerate(bars):
        if i in (777, 1501):
            d = BarDetector.restore("TST", d.snapshot(), params)
        got.extend(d.on_bar(b))
    assert got == expected
    _, h, low, c, _ = arrays(bars)
    records = [e for e in got if e.kind == "indicator"]
    want = talib_values(DetectionSettings().indicators, h, low, c)
    assert float(np.nanmax(np.abs(indicator_matrix(records) - want))) <= 1e-9


def revised(b: Bar, close: float) -> Bar:
    return Bar(symbol=b.symbol, timestamp=b.timestamp, open=b.open, high=max(b.high, close), low=min(b.low, close),
               close=close, volume=b.volume + 7, vwap=b.vwap, trades=b.trades + 1, revision=1, status="final")  # fmt: skip


@pytest.mark.parametrize("back", [1, 12, 30, 45])
def test_a_revision_several_bars_back_gives_talibs_values_on_the_corrected_series(back):
    """Within `replay_bars` (32) it replays from the kept state; beyond, it recomputes from the window."""
    bars = random_bars(1200, seed=back)
    d = BarDetector("TST", DetectionParams(DetectionSettings()))
    for b in bars:
        d.on_bar(b)
    at = len(bars) - 1 - back
    bars[at] = revised(bars[at], bars[at].close + 1.5)
    out = [e for e in d.on_bar(bars[at]) if e.kind == "indicator"]  # (and the decisions made again: test_amended_events)
    assert [e.timestamp for e in out] == [b.timestamp for b in bars[at:]]
    _, h, low, c, _ = arrays(bars)
    want = talib_values(DetectionSettings().indicators, h, low, c)[:, at:]
    got = indicator_matrix(out)
    assert not np.isnan(got).any() and not np.isnan(want).any(), "every re-emitted bar has all its values"
    worst = float(np.nanmax(np.abs(got - want)))
    # replayed: TA-Lib's on the whole series to rounding; recomputed over the 400-bar window: to 1e-9
    assert worst <= (1e-12 if back < 32 else 1e-9), worst
    # and the next new bar goes on from the corrected state
    nxt = Bar(symbol="TST", timestamp=bars[-1].timestamp + MINUTE, open=100.0, high=101.0, low=99.0, close=100.5,
              volume=100, vwap=100.5, trades=1, revision=0, status="final")  # fmt: skip
    record = next(e for e in d.on_bar(nxt) if e.kind == "indicator")
    h, low, c = np.append(h, 101.0), np.append(low, 99.0), np.append(c, 100.5)
    assert abs(record.rsi - talib.RSI(c, 14)[-1]) <= 1e-9 and abs(record.atr - talib.ATR(h, low, c, 14)[-1]) <= 1e-9


def test_an_old_snapshot_without_the_streaming_state_still_restores():
    """Version 1 (before the streaming state): restored by stepping the window, as TA-Lib over it was."""
    import msgspec

    from flows.detect.bar_detector import SNAPSHOT_VERSION

    bars = random_bars(600, seed=2)
    params = DetectionParams(DetectionSettings())
    d = BarDetector("TST", params)
    for b in bars[:500]:
        d.on_bar(b)
    fields = list(msgspec.msgpack.decode(d.snapshot()))
    old = msgspec.msgpack.encode([1, *fields[1:11]])
    resumed = BarDetector.restore("TST", old, params)
    records = [e for b in bars[500:] for e in resumed.on_bar(b) if e.kind == "indicator"]
    _, h, low, c, _ = arrays(bars)
    want = talib_values(DetectionSettings().indicators, h, low, c)[:, 500:]
    assert float(np.nanmax(np.abs(indicator_matrix(records) - want))) <= 1e-9
    with pytest.raises(ValueError, match="snapshot version"):
        BarDetector.restore("TST", msgspec.msgpack.encode([SNAPSHOT_VERSION + 1, *fields[1:]]), params)


@pytest.mark.parametrize("decimals", [None, 1])
def test_screened_patterns_equal_talib_on_every_bar(decimals):
    """The cheap screens never drop a TA-Lib hit and the doji decided without TA-Lib is TA-Lib's,
    also with prices on a coarse grid (ties between opens, closes and shadows everywhere)."""
    o, h, low, c, v = arrays(random_bars(6000, seed=21))
    if decimals is not None:
        o, h, low, c = (np.round(x, decimals) for x in (o, h, low, c))
    entries = patterns.select(list(patterns.TABLE))
    whole = {name: fn(o, h, low, c) for name, fn, *_ in entries}
    lists = [x.tolist() for x in (o, h, low, c, v)]
    n = patterns.BARS
    for i in range(len(c)):
        s = max(0, i - n + 1)

        def columns(s: int = s, i: int = i) -> tuple[np.ndarray, ...]:
            return o[s : i + 1], h[s : i + 1], low[s : i + 1], c[s : i + 1]

        got = patterns.recognise_last(entries, *(x[s : i + 1] for x in lists), columns)
        want = patterns.recognise(entries, o[s : i + 1], h[s : i + 1], low[s : i + 1], c[s : i + 1], v[s : i + 1])
        assert got == want, i
        assert {(name, signal) for name, signal, _ in got} == {(name, int(x[i])) for name, x in whole.items() if x[i]}, i
