"""Detection settings: from the environment or a TOML file, validated at start-up with the setting named."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.detect.settings import DetectionConfigError, DetectionSettings, load

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "detection.example.toml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("DETECT_") or name == "DETECTION_CONFIG":
            monkeypatch.delenv(name)


def test_the_documented_example_file_loads_and_equals_the_defaults(monkeypatch):
    monkeypatch.setenv("DETECTION_CONFIG", str(EXAMPLE))
    assert load() == DetectionSettings()


def test_environment_overrides_the_file(monkeypatch, tmp_path):
    config = tmp_path / "detection.toml"
    config.write_text("[surge]\nvolume_multiple = 4.0\nprice_pct = 2.5\n[alerts]\ncritical = ['rsi_overbought']\n")
    monkeypatch.setenv("DETECTION_CONFIG", str(config))
    monkeypatch.setenv("DETECT_SURGE__VOLUME_MULTIPLE", "5")
    monkeypatch.setenv("DETECT_PATTERNS__NAMES", "doji, engulfing")
    s = load()
    assert (s.surge.volume_multiple, s.surge.price_pct) == (5.0, 2.5)
    assert s.alerts.critical == ("rsi_overbought",)
    assert s.patterns.names == ("doji", "engulfing")


def test_timeframes_default_to_all_and_an_empty_list_turns_bar_detection_off(monkeypatch):
    assert DetectionSettings().timeframes == ("1m", "5m", "15m", "1h", "1d")
    monkeypatch.setenv("DETECT_TIMEFRAMES", " 5m, 1d ")
    assert load().timeframes == ("5m", "1d") and load().bar_detection_on()
    monkeypatch.setenv("DETECT_TIMEFRAMES", "")
    assert load().timeframes == () and not load().bar_detection_on()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DETECT_SURGE__VOLUME_MULTIPLE", "0.9", "DETECT_SURGE__VOLUME_MULTIPLE"),
        ("DETECT_TREND__BARS", "two", "DETECT_TREND__BARS"),
        ("DETECT_PATTERNS__NAMES", "doji,hamer", "DETECT_PATTERNS__NAMES"),
        ("DETECT_ALERTS__CRITICAL", "rsi_high", "DETECT_ALERTS__CRITICAL"),
        ("DETECT_ALERTS__RSI_LOWER", "80", "rsi_lower (80.0) must be below rsi_upper"),
        ("DETECT_INDICATORS__MACD_FAST", "30", "macd_fast (30) must be below macd_slow"),
        ("DETECT_INDICATORS__WINDOW", "60", "window (60) must be at least twice"),
        ("DETECT_TIMEFRAMES", "1m,2m", "DETECT_TIMEFRAMES"),
        ("DETECT_TIMEFRAMES", "5m,1h,5m", "5m,1h,5m names a timeframe more than once"),
    ],
)
def test_a_bad_variable_is_named_in_the_error(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(DetectionConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[surge]\nvolume_multiple = 0\n", "DETECT_SURGE__VOLUME_MULTIPLE"),
        ("[surge]\nvolume_multipel = 2\n", "volume_multipel"),
        ("[highlow]\ntiers = [{ min_price = 5, min_move = 0.1, min_move_pct = 0.1 }]\n", "tiers must start at min_price 0"),
        ("[surge\n", "invalid detection settings"),
    ],
)
def test_a_bad_file_is_refused_with_the_reason(monkeypatch, tmp_path, text, message):
    config = tmp_path / "detection.toml"
    config.write_text(text)
    monkeypatch.setenv("DETECTION_CONFIG", str(config))
    with pytest.raises(DetectionConfigError, match=message):
        load()


def test_a_missing_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTION_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(DetectionConfigError, match=r"nope.toml: no such file"):
        load()
