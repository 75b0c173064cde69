"""Arbitrary input against the pure parts: the bar book, the event-time horizon, the bar detector, the settings.

Property-based (hypothesis): whatever bytes or values come in, these never raise; what they
refuse they refuse with a kind and a reason, and their state stays encodable and bounded.
"""

from __future__ import annotations

import json
import math

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from flows.book import BarBook
from flows.detect.bar_detector import BarDetector, DetectionParams
from flows.detect.settings import DetectionSettings
from flows.event_time import Horizon
from flows.settings import Settings
from schemas.bars import Bar
from schemas.conditions import ConditionRules
from schemas.status import DEAD_LETTER_KINDS

RULES = ConditionRules.load()
T0 = 1_793_629_800_000
EXTREME_INTS = st.sampled_from([0, -1, 1, 2**31, 2**53, 2**63 - 1, 2**63, 2**64, 2**64 + 5, -(2**63) - 1, 10**30])
EXTREME_FLOATS = st.sampled_from([0.0, -0.0, 1e-300, 1e300, 1e308, -1e308, 0.01, 99_999_999.99, 100_000_000.0])
JSONISH = st.recursive(
    st.none() | st.booleans() | EXTREME_INTS | st.integers() | EXTREME_FLOATS | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)
FIELDS = ("ev", "sym", "x", "i", "z", "p", "s", "c", "t", "q", "trfi", "trft", "ds")


def _valid(i: int) -> dict:
    return {"ev": "T", "sym": "AAPL", "x": 4, "i": str(i), "z": 3, "p": 190.5, "s": 100, "t": T0 + i, "q": i}


@st.composite
def hostile_trade(draw: st.DrawFn) -> bytes | None:
    """A valid trade with fields replaced by extremes, or arbitrary bytes, or a tombstone."""
    kind = draw(st.sampled_from(["mutated", "bytes", "none", "truncated"]))
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    event = _valid(draw(st.integers(0, 10_000)))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        if draw(st.booleans()):
            event[name] = draw(JSONISH)
        else:
            event.pop(name, None)
    raw = json.dumps(event).encode()  # the standard library writes ints of any size (and Infinity)
    if kind == "truncated":
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_trade(), max_size=40))
def test_the_book_never_raises_and_refuses_with_a_known_kind(values):
    book = BarBook(RULES, max_symbols=50)
    finals, rejects = book.apply([*values, orjson.dumps(_valid(20000))])
    for r in rejects:
        assert r.kind in DEAD_LETTER_KINDS and r.reason
    finals += book.close_all()
    restored = BarBook.restore(book.snapshot(), RULES, close_delay_ms=2_000, lateness_ms=900_000, source="trades")
    assert restored.watermark == book.watermark
    for bar in finals:
        assert bar.volume < 2**63 and (bar.high is None or math.isfinite(bar.high))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=200),
                          st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(st.sampled_from(
                              ["ev", "sym", "v", "o", "c", "h", "l", "s", "e", "vw", "z"]), JSONISH, max_size=11))),
                max_size=30))  # fmt: skip
def test_the_book_on_second_aggregates_never_raises(values):
    book = BarBook(RULES, source="second_aggs")
    _, rejects = book.apply(values)
    assert all(r.kind in DEAD_LETTER_KINDS for r in rejects)
    book.close_all()
    book.snapshot()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3 * 86_400_000), min_size=1, max_size=60), st.integers(1, 5))
def test_the_horizon_never_loses_an_event(offsets, confirm):
    """Every event is either applied (released) or refused; none is held forever after the end."""
    h = Horizon(max_ahead_of_clock_ms=60_000, max_jump_ms=900_000, confirm=confirm, clock=lambda: (T0 + 10 * 86_400_000) / 1000)
    watermark, applied, refused = 0, 0, 0
    for n, off in enumerate(offsets):
        t = T0 + off
        if t > h.limit(watermark, h.wall_limit()):
            released = h.hold(t, b"", n)
            if released:
                applied += len(released)
                watermark = max([watermark] + [x.t for x in released])
            continue
        if h.held and t >= watermark:
            outliers = h.normal()
            refused += len(outliers or [])
        applied += 1
        watermark = max(watermark, t)
    refused += len(h.drain())
    assert applied + refused == len(offsets)


PRICE = st.one_of(st.none(), st.floats(min_value=1e-6, max_value=99_999_999.0))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 400), PRICE, PRICE, PRICE, PRICE, st.integers(0, 2**63 - 1),
                          st.integers(0, 3)), min_size=1, max_size=80))  # fmt: skip
def test_the_bar_detector_never_raises_on_extreme_bars(rows):
    detector = BarDetector("AAPL", DetectionParams(DetectionSettings()))
    for minute, o, h, low, c, volume, revision in rows:
        bar = Bar(symbol="AAPL", timestamp=T0 + minute * 60_000, open=o, high=h, low=low, close=c, volume=volume,
                  vwap=c, trades=1, revision=revision, status="final")  # fmt: skip
        for record in detector.on_bar(bar):
            assert 0.0 <= record.confidence <= 1.0
            msgspec.json.encode(record)
    BarDetector.restore("AAPL", detector.snapshot(), DetectionParams(DetectionSettings()))


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.text(max_size=50), st.sampled_from(["nan", "inf", "-inf", "1e400", "-1", "0", str(2**64), "", " "])))
def test_every_setting_takes_any_text_or_refuses_it_with_a_validation_error(name, value):
    try:
        s = Settings(**{name: value})
    except ValidationError:
        return
    for field, got in s.model_dump().items():
        assert not (isinstance(got, float) and not math.isfinite(got)), field


DETECTION_VARIABLES = [
    "DETECT_ENABLED", "DETECT_HIGHLOW__COOLDOWN_S", "DETECT_HIGHLOW__N_DAYS", "DETECT_HIGHLOW__TIERS",
    "DETECT_TREND__BARS", "DETECT_TREND__MIN_STRENGTH", "DETECT_SURGE__VOLUME_MULTIPLE", "DETECT_SURGE__PRICE_PCT",
    "DETECT_PATTERNS__NAMES", "DETECT_INDICATORS__WINDOW", "DETECT_INDICATORS__BB_STDDEV",
    "DETECT_ALERTS__RSI_UPPER", "DETECT_ALERTS__CRITICAL",
]  # fmt: skip


@pytest.mark.parametrize("variable", DETECTION_VARIABLES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.text(max_size=40), st.sampled_from(["nan", "inf", "1e400", "-1", str(2**64), "[]", "{}", "null"])))
def test_every_detection_setting_takes_any_text_or_names_itself_in_the_error(variable, value, monkeypatch):
    from flows.detect.settings import DetectionConfigError, load

    assume("\x00" not in value)  # no environment variable can hold a NUL
    monkeypatch.setenv(variable, value)
    try:
        cfg = load()
    except DetectionConfigError as exc:
        assert "DETECT_" in str(exc)
        return
    assert all(math.isfinite(v) for v in _numbers(cfg.model_dump()))


def _numbers(value: object) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []
