"""Decisions made again after a revision: retracted, amended and newly detected events, the same across
a restart, and, after any revisions within the bound, the latest word per id equal to deciding on the
corrected bars from scratch."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from msgspec.structs import replace

from connectors.kafka.dead_letter import headers
from connectors.kafka.source import RawBatch
from flows.detect.bar_detector import BarDetector, DetectionParams
from flows.detect.operators import BarGate, detector_key
from flows.detect.settings import DetectionSettings
from flows.settings import Settings
from schemas.bars import Bar, encode_bar
from schemas.events import stable_id

FIVE = 300_000
T0 = 1_764_253_800_000  # 2025-11-27 09:30 EST
PARAMS = DetectionParams(DetectionSettings())


def bar(i: int, close: float, volume: int = 1000, revision: int = 0, open_: float | None = None) -> Bar:
    o = close - 0.01 if open_ is None else open_
    return Bar(symbol="AAA", timeframe="5m", timestamp=T0 + i * FIVE, open=o, high=max(o, close) + 0.05,
               low=min(o, close) - 0.05, close=close, volume=volume, vwap=close, trades=5, revision=revision,
               status="final")  # fmt: skip


def calm(n: int) -> list[Bar]:
    """Closes within a cent of 100, volumes even: nothing surges."""
    return [bar(i, 100 + 0.01 * math.sin(i)) for i in range(n)]


def feed(d: BarDetector, bars: list[Bar]) -> list:
    return [e for b in bars for e in d.on_bar(b) if e.kind != "indicator"]


def of_type(events: list, kind: str, i: int) -> list:
    return [e for e in events if e.type == kind and e.timestamp == T0 + i * FIVE]


def test_a_surge_that_no_longer_holds_is_retracted_and_comes_back_amended():
    d = BarDetector("AAA", PARAMS, "5m")
    (surge,) = of_type(feed(d, [*calm(30), bar(30, 100.0, volume=10_000)]), "volume_surge", 30)
    assert (surge.status, surge.revision, surge.ratio, surge.timeframe) == ("detected", 0, 10.0, "5m")
    assert surge.id == stable_id("surge", "AAA", "5m", T0 + 30 * FIVE, "volume_surge")

    (gone,) = of_type(feed(d, [bar(30, 100.0, volume=1_200, revision=1)]), "volume_surge", 30)
    assert (gone.id, gone.status, gone.revision) == (surge.id, "retracted", 1)
    assert gone.ratio == 10.0 and gone.volume == 10_000, "a retraction says what was retracted"

    (back,) = of_type(feed(d, [bar(30, 100.0, volume=9_000, revision=2)]), "volume_surge", 30)
    assert (back.id, back.status, back.revision, back.ratio) == (surge.id, "amended", 2, 9.0)
    assert of_type(feed(d, [bar(30, 100.0, volume=9_000, revision=3, open_=99.98)]), "volume_surge", 30) == [], (
        "a revision the decision does not depend on says nothing"
    )


def test_a_surge_that_holds_differently_is_amended_with_the_same_id():
    d = BarDetector("AAA", PARAMS, "5m")
    (surge,) = of_type(feed(d, [*calm(30), bar(30, 102.0)]), "price_surge", 30)
    (amended,) = of_type(feed(d, [bar(30, 101.5, revision=1)]), "price_surge", 30)
    assert (amended.id, amended.status, amended.revision, amended.close) == (surge.id, "amended", 1, 101.5)
    assert amended.ratio == pytest.approx((101.5 / calm(31)[25].close - 1) * 100, rel=1e-6)


def test_a_later_bars_decision_whose_window_holds_the_revised_bar_is_made_again():
    """Bar 25's volume revised up: bar 31's volume surge (mean of bars 11-30) no longer holds; bar 25 now surges."""
    d = BarDetector("AAA", PARAMS, "5m")
    (surge,) = of_type(feed(d, [*calm(31), bar(31, 100.0, volume=10_000), *calm(34)[32:]]), "volume_surge", 31)
    out = feed(d, [bar(25, calm(26)[25].close, volume=1_000_000, revision=1)])
    (gone,) = of_type(out, "volume_surge", 31)
    assert (gone.id, gone.status, gone.revision) == (surge.id, "retracted", 1)
    (new,) = of_type(out, "volume_surge", 25)
    assert (new.status, new.revision) == ("detected", 1)
    assert {e.timestamp for e in out} <= {T0 + i * FIVE for i in range(25, 34)}


def test_the_same_decisions_across_a_restart_and_from_a_snapshot_of_before():
    bars = [*calm(31), bar(31, 100.0, volume=10_000), bar(32, 102.5), *calm(36)[33:]]
    revisions = [bar(31, 100.0, volume=1_500, revision=1), bar(32, 101.7, revision=1), bar(25, 100.0, volume=90_000, revision=1)]
    whole = BarDetector("AAA", PARAMS, "5m")
    expected = feed(whole, bars) + feed(whole, revisions)
    assert {e.status for e in expected} >= {"detected", "amended", "retracted"}
    first = BarDetector("AAA", PARAMS, "5m")
    got = feed(first, bars)
    resumed = BarDetector.restore("AAA", first.snapshot(), PARAMS, "5m")
    assert resumed.timeframe == "5m" and list(resumed.decided) == list(first.decided)
    got += feed(resumed, revisions[:1])
    again = BarDetector.restore("AAA", resumed.snapshot(), PARAMS, "5m")
    got += feed(again, revisions[1:])
    assert got == expected

    # a snapshot from before the decisions were kept (version 2) restores, remembering none of them
    fields = list(msgspec.msgpack.decode(first.snapshot()))
    old = BarDetector.restore("AAA", msgspec.msgpack.encode([2, *fields[1:13]]), PARAMS, "5m")
    assert not old.decided and feed(old, calm(40)[36:]) == feed(first, calm(40)[36:])
    assert of_type(feed(old, revisions[:1]), "volume_surge", 31) == [], "decided before the upgrade: not made again"


def random_walk(n: int, seed: int) -> list[Bar]:
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 0.4, n))
    open_ = close + rng.normal(0, 0.3, n) * rng.choice([0.02, 1.0, 2.5], n)
    volume = rng.integers(100, 5_000, n) * rng.choice([1, 1, 1, 6], n)
    return [bar(i, float(close[i]), int(volume[i]), open_=float(open_[i])) for i in range(n)]


@pytest.mark.parametrize("seed", [1, 2])
def test_after_revisions_the_latest_word_per_id_equals_deciding_on_the_corrected_bars(seed):
    """Revisions up to 20 bars back (the bound is 32), interleaved with new bars, some of them twice;
    a restart at three points changes nothing; each id's revisions rise."""
    rng = np.random.default_rng(100 + seed)
    final = random_walk(500, seed)
    shown: list[Bar] = []
    stream: list[Bar] = []
    for b in final:
        stream.append(b)
        shown.append(b)
        if len(shown) > 40 and rng.random() < 0.3:
            i = len(shown) - 1 - int(rng.integers(0, 20))
            old = shown[i]
            close = old.close + float(rng.normal(0, 0.8))
            revised = replace(old, close=close, high=max(old.high, close), low=min(old.low, close),
                              volume=int(old.volume * rng.choice([0.2, 1.0, 8.0])), revision=old.revision + 1)  # fmt: skip
            shown[i] = revised
            stream.append(revised)
    whole = BarDetector("AAA", PARAMS, "5m")
    emitted = [e for b in stream for e in whole.on_bar(b)]

    d, restarted = BarDetector("AAA", PARAMS, "5m"), []
    for n, b in enumerate(stream):
        if n in (150, 401, 555):
            d = BarDetector.restore("AAA", d.snapshot(), PARAMS, "5m")
        restarted.extend(d.on_bar(b))
    assert restarted == emitted

    latest: dict[str, object] = {}
    for e in emitted:
        if e.kind == "indicator":
            latest[e.id] = e
            continue
        before = latest.get(e.id)
        assert before is None or e.revision > before.revision, "a later word has a higher revision"
        latest[e.id] = e
    fresh = BarDetector("AAA", PARAMS, "5m")
    scratch = [e for b in shown for e in fresh.on_bar(b)]

    def content(e):
        return replace(e, revision=0, status="detected")

    held = {i: content(e) for i, e in latest.items() if e.kind != "indicator" and e.status != "retracted"}
    want = {e.id: content(e) for e in scratch if e.kind != "indicator"}
    assert held == want
    assert sum(1 for e in emitted if e.status == "retracted") > 5 and sum(1 for e in emitted if e.status == "amended") > 5
    values = {i: e for i, e in latest.items() if e.kind == "indicator"}
    for e in scratch:
        if e.kind == "indicator":
            got = values[e.id]
            for name in ("sma", "ema", "rsi", "macd", "macd_signal", "bb_upper", "atr"):
                a, b = getattr(got, name), getattr(e, name)
                assert (a is None and b is None) or abs(a - b) <= 1e-9 * max(1.0, abs(b)), name
    assert len(whole.decided) == PARAMS.replay_bars + 1, "the memory of decisions stays bounded"


def test_the_gate_refuses_a_bar_off_its_timeframes_grid_or_with_no_symbol():
    gate = BarGate(Settings(), None)
    good = bar(3, 100.0)
    off_grid = replace(good, timestamp=good.timestamp + 60_000)  # 09:46: a minute, not a 5-minute start
    bad_symbol = replace(good, symbol="AAA/5m")
    out, _ = gate.on_batch([RawBatch("bars", 0, range(3), [encode_bar(b) for b in (off_grid, bad_symbol, good)])])
    assert out[2] == ("AAA", good)
    reasons = [headers(m)["dlq.reason"] for m in out[:2]]
    assert "a 5m bar starts on a multiple of 300000 ms" in reasons[0] and "is not 1-20 characters" in reasons[1]
    assert [detector_key("AAA", tf) for tf in ("1m", "5m", "1d")] == ["AAA", "AAA/5m", "AAA/1d"]
