"""Table-driven tests of each detector on its own: no Kafka, no database, no Redis."""

from __future__ import annotations

import math

import numpy as np
import pytest
import talib

from flows.detect import indicators, patterns, surge, trend
from flows.detect.bar_detector import BarDetector, DetectionParams
from flows.detect.highlow import SessionExtremes
from flows.detect.settings import AlertSettings, DetectionSettings, HighLowSettings, IndicatorSettings
from schemas.bars import Bar
from schemas.sessions import Reference

MINUTE = 60_000
DAY = 86_400_000
T0 = 1_764_253_800_000  # Thursday 2025-11-27 09:30 EST
NO_HISTORY = Reference(None, None, [])


# ---- session and N-day highs and lows ------------------------------------------------------


def extremes(trades, cfg=None, reference=NO_HISTORY):
    """Events for `trades` [(price, ms offset)] of one symbol, references resolved after each trade."""
    x = SessionExtremes(cfg or HighLowSettings(n_days=0))
    for price, dt in trades:
        x.observe("AAA", price, T0 + dt)
        if x.waiting():
            x.resolve({"AAA": reference})
    return [(e.type, e.price, e.previous) for e in x.take()]


@pytest.mark.parametrize(
    ("trades", "expected"),
    [
        pytest.param([(50.0, 0)], [], id="first trade only sets the extremes"),
        pytest.param([(50.0, 0), (50.05, 2000)], [("session_high", 50.05, 50.0)], id="break by the tier minimum"),
        pytest.param([(50.0, 0), (50.04, 2000)], [], id="new high below the minimum move"),
        pytest.param([(50.0, 0), (50.03, 2000), (50.06, 4000)], [("session_high", 50.06, 50.0)],
                     id="small new highs add up against the last reported"),
        pytest.param([(50.0, 0), (50.10, 2000), (50.20, 2500)], [("session_high", 50.10, 50.0)],
                     id="cooldown holds the second break"),
        pytest.param([(50.0, 0), (50.10, 2000), (50.20, 2500), (50.30, 3100)],
                     [("session_high", 50.10, 50.0), ("session_high", 50.30, 50.10)], id="after the cooldown it fires"),
        pytest.param([(50.0, 0), (49.90, 2000)], [("session_low", 49.90, 50.0)], id="lows mirror highs"),
        pytest.param([(50.0, 0), (50.0, 2000), (50.0, 4000)], [], id="flat trades never fire"),
        pytest.param([(250.0, 0), (250.09, 2000), (250.10, 4000)], [("session_high", 250.10, 250.0)],
                     id="from $100 the tier is $0.10"),
        pytest.param([(50.0, 0), (51.0, DAY), (51.06, DAY + 2000)], [("session_high", 51.06, 51.0)],
                     id="a new trading day starts over"),
        pytest.param([(50.0, 0), (51.0, DAY), (60.0, 1000)], [], id="a late trade of yesterday is ignored"),
    ],
)  # fmt: skip
def test_session_highs_and_lows(trades, expected):
    assert extremes(trades) == expected


def test_cold_start_mid_session_uses_the_sessions_bars_from_the_database():
    known = Reference(today_high=51.0, today_low=49.0, sessions=[])
    assert extremes([(50.5, 0), (50.9, 2000)], reference=known) == [], "below today's high from the database"
    assert extremes([(50.5, 0), (51.1, 2000)], reference=known) == [("session_high", 51.1, 51.0)]


@pytest.mark.parametrize(
    ("sessions", "expected"),
    [
        pytest.param([("2025-11-26", 52.0, 48.0), ("2025-11-25", 53.0, 47.0)],
                     [("session_high", 52.5, 50.0), ("session_high", 53.5, 52.5), ("n_day_high", 53.5, 53.0)],
                     id="beyond the prior sessions' high, once"),
        pytest.param([("2025-11-26", 52.0, 48.0)], [("session_high", 52.5, 50.0), ("session_high", 53.5, 52.5)],
                     id="fewer sessions than n_days: no N-day event"),
    ],
)  # fmt: skip
def test_n_day_highs_need_enough_history(sessions, expected):
    cfg = HighLowSettings(n_days=2, cooldown_s=0)
    trades = [(50.0, 0), (52.5, 1000), (53.5, 2000), (53.6, 3000)]
    got = extremes(trades, cfg, Reference(None, None, sessions))
    assert got[: len(expected)] == expected
    assert [e for e in got if e[0] == "n_day_high"] == [e for e in expected if e[0] == "n_day_high"]


def test_finished_sessions_become_the_n_day_history():
    cfg = HighLowSettings(n_days=1, cooldown_s=0)
    got = extremes([(50.0, 0), (55.0, 1000), (52.0, DAY), (55.5, DAY + 1000)], cfg)
    assert ("n_day_high", 55.5, 55.0) in got


def test_same_events_however_the_trades_are_batched_and_across_a_snapshot():
    rng = np.random.default_rng(3)
    trades = [("AB"[i % 2], float(50 + np.cumsum(rng.normal(0, 0.05, 1))[0] + 0.002 * i), T0 + i * 700) for i in range(1200)]
    cfg = HighLowSettings(n_days=0)

    def run(batch: int, snapshot_at: int | None = None) -> list:
        x, out = SessionExtremes(cfg), []
        for start in range(0, len(trades), batch):
            for trade in trades[start : start + batch]:
                x.observe(*trade)
            if x.waiting():
                x.resolve(dict.fromkeys(x.waiting(), NO_HISTORY))
            out += x.take()
            if snapshot_at is not None and start >= snapshot_at:
                x, snapshot_at = SessionExtremes.restore(x.snapshot(), cfg), None
        return out

    one_by_one = run(1)
    assert len(one_by_one) > 10
    assert run(7) == one_by_one == run(1200) == run(13, snapshot_at=600)
    assert len({e.id for e in one_by_one}) == len(one_by_one)


# ---- trend ----------------------------------------------------------------------------------

# 12 rising closes, then falling ones: the first bar whose last-10 closes correlate with time at -0.7 or less
RISE_THEN_FALL = next(
    i
    for i in range(10, 23)
    if np.corrcoef(np.arange(10), ([10 + 0.1 * j for j in range(12)] + [11.1 - 0.2 * j for j in range(1, 12)])[i - 9 : i + 1])[
        0, 1
    ]
    <= -0.7
)


@pytest.mark.parametrize(
    ("closes", "expected"),
    [
        pytest.param([10.0] * 15, [], id="flat bars: no trend"),
        pytest.param([10 + 0.1 * i for i in range(15)], [(9, "trend_start", "up")], id="steady rise from the 10th bar"),
        pytest.param([10 + 0.1 * i for i in range(12)] + [11.1 - 0.2 * i for i in range(1, 12)],
                     [(9, "trend_start", "up"), (RISE_THEN_FALL, "trend_reversal", "down")], id="rise then fall"),
        pytest.param([10.0, 10.1, 10.2], [], id="fewer bars than the window"),
    ],
)  # fmt: skip
def test_trend_changes(closes, expected):
    cfg = DetectionSettings(trend={"bars": 10, "min_strength": 0.7})
    d = BarDetector("AAA", DetectionParams(cfg))
    got = []
    for i, c in enumerate(closes):
        for e in d.on_bar(bar(i, c)):
            if e.kind == "trend":
                got.append((i, e.type, e.direction))
                assert e.confidence == pytest.approx(abs(e.strength), abs=1e-4)
    assert got[: len(expected)] == expected and len(got) == len(expected)


def test_trend_change_rules():
    assert trend.change("down", "flat", "up") == "trend_reversal"
    assert trend.change("down", "up", "up") == "trend_reversal"
    assert trend.change("down", "flat", "down") == "trend_start"
    assert trend.change("flat", "up", "up") is None


# ---- surges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("volumes", "multiple", "expected"),
    [
        pytest.param([100] * 20 + [300], 3.0, 3.0, id="exactly the multiple"),
        pytest.param([100] * 20 + [299], 3.0, None, id="just below"),
        pytest.param([100] * 10 + [900], 3.0, None, id="first bars after start: not enough history"),
        pytest.param([0] * 20 + [500], 3.0, None, id="no volume before: no mean to compare"),
    ],
)  # fmt: skip
def test_volume_surge(volumes, multiple, expected):
    ratio = surge.volume_ratio(np.array(volumes, dtype=float), 20)
    fired = ratio if ratio is not None and ratio >= multiple else None
    assert fired == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize(
    ("closes", "expected"),
    [
        pytest.param([100, 100, 100, 102], 2.0, id="reaches the threshold"),
        pytest.param([100, 100, 102, 102.5], None, id="already beyond on the bar before: no repeat"),
        pytest.param([100, 100, 100, 98], -2.0, id="down moves count"),
        pytest.param([100, 100, 101.9], None, id="too small"),
        pytest.param([100, 103], None, id="not enough bars"),
    ],
)  # fmt: skip
def test_price_surge_fires_once_per_move(closes, expected):
    got = surge.price_surge(np.array(closes, dtype=float), bars=2, pct=2.0)
    assert got == (pytest.approx(expected) if expected is not None else None)


# ---- alerts ---------------------------------------------------------------------------------


def values(**columns):
    out = {name: np.array([math.nan, math.nan]) for name in indicators.COLUMNS}
    out.update({k: np.array(v, dtype=float) for k, v in columns.items()})
    return out


@pytest.mark.parametrize(
    ("columns", "close", "expected"),
    [
        pytest.param({"rsi": [69, 70]}, [1, 1], ["rsi_overbought"], id="RSI reaches 70"),
        pytest.param({"rsi": [71, 75]}, [1, 1], [], id="RSI already above: no repeat"),
        pytest.param({"rsi": [31, 29]}, [1, 1], ["rsi_oversold"], id="RSI below 30"),
        pytest.param({"rsi": [math.nan, 80]}, [1, 1], [], id="RSI warming up"),
        pytest.param({"macd_hist": [-0.1, 0.1]}, [1, 1], ["macd_cross_up"], id="MACD above signal"),
        pytest.param({"macd_hist": [0.1, -0.1]}, [1, 1], ["macd_cross_down"], id="MACD below signal"),
        pytest.param({"bb_upper": [11, 11], "bb_lower": [9, 9]}, [10, 11.5], ["bollinger_above"], id="close above band"),
        pytest.param({"bb_upper": [11, 11], "bb_lower": [9, 9]}, [12, 11.5], [], id="still above: no repeat"),
        pytest.param({"bb_upper": [11, 11], "bb_lower": [9, 9]}, [10, 8.5], ["bollinger_below"], id="close below band"),
    ],
)  # fmt: skip
def test_alert_rules(columns, close, expected):
    fired = indicators.alerts(AlertSettings(), values(**columns), np.array(close, dtype=float), 1)
    assert [f.rule for f in fired] == expected


def test_only_configured_rules_fire_and_critical_ones_say_so():
    cfg = DetectionSettings(alerts={"rules": ("rsi_overbought",), "critical": ("rsi_overbought",)})
    d = BarDetector("AAA", DetectionParams(cfg))
    closes = [10 - 0.05 * i for i in range(20)] + [9 + 0.3 * i for i in range(1, 15)]
    alerts = [e for i, c in enumerate(closes) for e in d.on_bar(bar(i, c)) if e.kind == "alert"]
    assert alerts and {a.type for a in alerts} == {"rsi_overbought"}
    assert all(a.severity == "critical" and a.value >= 70 for a in alerts)


# ---- candlestick patterns -------------------------------------------------------------------


def test_flat_bars_are_talib_dojis_with_the_lowest_confidence():
    flat = np.full(patterns.BARS, 10.0)
    hits = patterns.recognise(patterns.select(patterns.TABLE), flat, flat, flat, flat, np.ones(patterns.BARS))
    assert hits == [("doji", 100, 0.5)]


@pytest.mark.parametrize(
    ("last", "name", "direction", "confidence"),
    [
        pytest.param((10.0, 10.5, 9.5, 10.0), "doji", "neutral", 1.0, id="doji: no body"),
        pytest.param((10.0, 10.5, 9.5, 10.04), "doji", "neutral", 0.6, id="doji: body 4 % of range"),
    ],
)  # fmt: skip
def test_pattern_confidence_follows_the_old_rules(last, name, direction, confidence):
    o, h, low, c = (np.array([10.0] * (patterns.BARS - 1) + [x]) for x in last)
    h[:-1], low[:-1] = 10.5, 9.5
    hits = {n: (s, conf) for n, s, conf in patterns.recognise(patterns.select([name]), o, h, low, c, np.ones(patterns.BARS))}
    signal, conf = hits[name]
    assert patterns.direction(name, signal) == direction
    assert conf == pytest.approx(confidence)


def test_engulfing_gets_the_old_bonuses_for_size_range_and_volume():
    o = np.array([10.0] * 12 + [10.2, 9.9])
    c = np.array([10.0] * 12 + [10.0, 10.5])
    h, low = np.maximum(o, c) + 0.01, np.minimum(o, c) - 0.01
    plain = patterns.recognise(patterns.select(["engulfing"]), o, h, low, c, np.array([100.0] * 14))
    strong = patterns.recognise(patterns.select(["engulfing"]), o, h, low, c, np.array([100.0] * 13 + [200.0]))
    assert plain[0][:2] == ("engulfing", 100) and strong[0][:2] == ("engulfing", 100)
    assert plain[0][2] == pytest.approx(0.9) and strong[0][2] == pytest.approx(1.0)


# ---- one symbol's bar series ----------------------------------------------------------------


def bar(i: int, close: float, revision: int = 0, volume: int = 1000, prices: bool = True) -> Bar:
    price = close if prices else None
    return Bar(symbol="AAA", timestamp=T0 + i * MINUTE, open=close - 0.02 if prices else None, high=close + 0.05 if prices else None,
               low=close - 0.05 if prices else None, close=price, volume=volume, vwap=price, trades=5, revision=revision,
               status="final")  # fmt: skip


def indicator_records(events):
    return [e for e in events if e.kind == "indicator"]


def test_first_bars_after_a_cold_start_have_no_indicators_until_warm():
    d = BarDetector("AAA", DetectionParams(DetectionSettings()))
    records = [r for i in range(30) for r in indicator_records(d.on_bar(bar(i, 10 + 0.01 * i)))]
    assert records[0].rsi is None and records[0].vwap is not None
    assert records[14].rsi is not None and records[13].rsi is None
    assert records[0].confidence < records[-1].confidence


def test_warm_start_makes_indicators_valid_from_the_first_bar():
    history = [bar(i, 10 + 0.01 * i) for i in range(100)]
    rows = [(b.timestamp, b.open, b.high, b.low, b.close, b.volume, b.vwap) for b in history]
    d = BarDetector("AAA", DetectionParams(DetectionSettings()))
    d.warm(rows)
    first = indicator_records(d.on_bar(bar(100, 11.5)))[0]
    close = np.array([b.close for b in history] + [11.5])
    assert first.rsi == pytest.approx(talib.RSI(close, 14)[-1], abs=1e-9)
    assert first.macd == pytest.approx(talib.MACD(close)[0][-1], abs=1e-9)
    assert first.confidence == 1.0


def test_a_gap_in_minutes_is_just_the_next_bar_and_bars_without_prices_are_skipped():
    d = BarDetector("AAA", DetectionParams(DetectionSettings()))
    for i in range(20):
        d.on_bar(bar(i, 10 + 0.01 * i))
    assert d.on_bar(bar(20, 10.0, prices=False)) == []
    after_gap = indicator_records(d.on_bar(bar(45, 10.3)))
    assert [r.timestamp for r in after_gap] == [T0 + 45 * MINUTE]
    closes = np.array([10 + 0.01 * i for i in range(20)] + [10.3])
    assert after_gap[0].sma == pytest.approx(talib.SMA(closes, 20)[-1])


def test_a_revision_recomputes_that_bar_and_every_later_one_and_decides_them_again():
    d = BarDetector("AAA", DetectionParams(DetectionSettings()))
    closes = [10 + 0.02 * math.sin(i / 3) for i in range(40)]
    for i, c in enumerate(closes):
        d.on_bar(bar(i, c))
    revised = d.on_bar(bar(35, 12.0, revision=2))
    records = indicator_records(revised)
    assert [r.timestamp for r in records] == [T0 + i * MINUTE for i in range(35, 40)]
    assert records[0].revision == 2 and records[1].revision == 0
    closes[35] = 12.0
    expected = talib.EMA(np.array(closes), 20)[35:]
    assert [r.ema for r in records] == pytest.approx(list(expected), abs=1e-9)
    # a 20 % jump: a price surge and a Bollinger break now hold on bar 35, decided on its revision 2
    events = [e for e in revised if e.kind != "indicator"]
    new = {(e.type, e.timestamp, e.status, e.revision) for e in events}
    assert ("price_surge", T0 + 35 * MINUTE, "detected", 2) in new
    assert ("bollinger_above", T0 + 35 * MINUTE, "detected", 2) in new


def test_a_late_minute_is_inserted_in_time_order():
    d = BarDetector("AAA", DetectionParams(DetectionSettings()))
    minutes = [i for i in range(30) if i != 25]
    for i in minutes:
        d.on_bar(bar(i, 10 + 0.01 * i))
    late = indicator_records(d.on_bar(bar(25, 10.25)))
    assert [r.timestamp for r in late] == [T0 + i * MINUTE for i in range(25, 30)]
    close = np.array([10 + 0.01 * i for i in range(30)])
    assert late[-1].sma == pytest.approx(talib.SMA(close, 20)[-1])


def test_a_symbol_that_stops_trading_resumes_with_a_fresh_session_vwap():
    d = BarDetector("AAA", DetectionParams(DetectionSettings()))
    for i in range(10):
        d.on_bar(bar(i, 10.0, volume=100))
    next_day = indicator_records(d.on_bar(bar(24 * 60, 20.0, volume=100)))[0]
    assert next_day.vwap == pytest.approx(20.0), "yesterday's trades are not in today's VWAP"
    assert next_day.rsi is None and next_day.sma is None, "11 bars: RSI(14) and SMA(20) are not warm yet"


def test_snapshot_and_restore_continue_exactly():
    cfg = DetectionParams(DetectionSettings())
    rng = np.random.default_rng(5)
    closes = 50 + np.cumsum(rng.normal(0, 0.3, 120))
    whole = BarDetector("AAA", cfg)
    expected = [e for i, c in enumerate(closes) for e in whole.on_bar(bar(i, float(c)))]
    first = BarDetector("AAA", cfg)
    got = [e for i, c in enumerate(closes[:70]) for e in first.on_bar(bar(i, float(c)))]
    resumed = BarDetector.restore("AAA", first.snapshot(), cfg)
    got += [e for i, c in enumerate(closes[70:], 70) for e in resumed.on_bar(bar(i, float(c)))]
    assert got == expected


def test_indicator_settings_reject_a_window_too_short_for_the_periods():
    with pytest.raises(ValueError, match="window"):
        IndicatorSettings(window=50, macd_slow=40)


def test_the_book_reports_just_the_trades_that_can_move_a_session_extreme():
    """Only a new high or low of its minute bar can be a new session high or low: same events as every trade."""
    import orjson

    from connectors.feeds.synthetic import generate
    from flows.book import BarBook
    from schemas.conditions import ConditionRules

    trades = [e.value for e in generate(seed=5, symbols=20, rate=50.0, seconds=20 * 60, condition_mix="regular",
                                        duplicate_ratio=0, out_of_order_ratio=0.05, late_ratio=0.01, too_late_ratio=0,
                                        malformed_ratio=0) if e.topic_kind == "trades"]  # fmt: skip
    cfg = HighLowSettings(n_days=0)

    def events(x: SessionExtremes) -> list:
        if x.waiting():
            x.resolve(dict.fromkeys(x.waiting(), NO_HISTORY))
        return x.take()

    through_book, every_trade = SessionExtremes(cfg), SessionExtremes(cfg)
    calls = []
    book = BarBook(ConditionRules.load(), on_trade=lambda *a: (calls.append(a), through_book.observe(*a)))
    got = []
    for start in range(0, len(trades), 500):
        book.apply(trades[start : start + 500])
        got += events(through_book)
    expected = []
    for start in range(0, len(trades), 500):
        for raw in trades[start : start + 500]:
            t = orjson.loads(raw)
            every_trade.observe(t["sym"], t["p"], t["t"])
        expected += events(every_trade)
    assert len(expected) > 50 and got == expected
    assert len(calls) < len(trades) / 2, "most trades never reach the detector"


def test_a_bar_delivered_again_or_an_older_revision_changes_nothing():
    d = BarDetector("AAA", DetectionParams(DetectionSettings()))
    for i in range(30):
        d.on_bar(bar(i, 10 + 0.01 * i))
    revised = d.on_bar(bar(28, 11.0, revision=1))
    assert revised, "a newer revision recomputes"
    assert d.on_bar(bar(28, 11.0, revision=1)) == [], "the same revision again: a repeat"
    assert d.on_bar(bar(28, 10.28, revision=0)) == [], "an older revision after a newer one: stale"
    assert d.on_bar(bar(29, 10.29)) == [], "the newest bar again"
    assert d.series.close[-2] == 11.0
