"""Which detectors run and with what parameters: environment variables, or a TOML file named by one.

Variables are `DETECT_<SECTION>__<FIELD>` (e.g. `DETECT_SURGE__VOLUME_MULTIPLE=2.5`,
`DETECT_ALERTS__CRITICAL=rsi_overbought,bollinger_below`); `DETECTION_CONFIG=path.toml` names a
file with the same sections (`[surge] volume_multiple = 2.5`); variables win over the file.
`load()` validates everything at start-up and raises `DetectionConfigError` naming the bad
setting, so a typo stops the flow before it reads a single tick.

>>> s = DetectionSettings(surge={"volume_multiple": 2.5})
>>> s.surge.volume_multiple, s.indicators.rsi_period
(2.5, 14)
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.events import ALERT_RULES, PATTERNS, AlertRule, PatternName
from schemas.timeframes import TimeframeName

CONFIG_FILE_VARIABLE = "DETECTION_CONFIG"


def _comma_list(value: Any) -> Any:
    """Accept `a,b` as well as a JSON list from an environment variable."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class _Section(BaseModel):
    # Bounded and finite everywhere: no setting may overflow a window, a timer or an integer.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    enabled: bool = True


class PriceTier(BaseModel):
    """From `min_price` up, a break must move the extreme by `min_move` dollars or `min_move_pct` percent."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    min_price: float = Field(ge=0, le=1e8)
    min_move: float = Field(gt=0, le=1e8)
    min_move_pct: float = Field(gt=0, le=100)


# The old TickStock's tiers (its users tuned alerts to them): the smaller of the two minimums counts.
OLD_TIERS = (
    PriceTier(min_price=0, min_move=0.01, min_move_pct=0.5),
    PriceTier(min_price=5, min_move=0.02, min_move_pct=0.2),
    PriceTier(min_price=25, min_move=0.05, min_move_pct=0.1),
    PriceTier(min_price=100, min_move=0.10, min_move_pct=0.05),
)


class HighLowSettings(_Section):
    """New session (US/Eastern trading day) highs and lows, on trades; N-day highs and lows."""

    cooldown_s: float = Field(1.0, ge=0, le=86_400, description="per symbol and side, in event time")
    tiers: tuple[PriceTier, ...] = Field(OLD_TIERS, max_length=32)
    n_days: int = Field(20, ge=0, le=260, description="prior sessions for N-day highs/lows; 0 = off")

    @model_validator(mode="after")
    def _tiers_ascending(self) -> HighLowSettings:
        prices = [t.min_price for t in self.tiers]
        if not prices or prices[0] != 0 or prices != sorted(set(prices)):
            raise ValueError("tiers must start at min_price 0 and ascend without repeats")
        return self


class TrendSettings(_Section):
    """Trend over the last `bars` closes: up/down when |correlation with time| >= min_strength."""

    bars: int = Field(10, ge=3, le=200)
    min_strength: float = Field(0.7, gt=0, le=1)


class SurgeSettings(_Section):
    volume_multiple: float = Field(3.0, gt=1, le=1e6, description="bar volume >= this x mean of the previous bars")
    volume_bars: int = Field(20, ge=2, le=400)
    price_pct: float = Field(1.0, gt=0, le=1000, description="close moved this many percent ...")
    price_bars: int = Field(5, ge=1, le=400, description="... within this many bars")


class PatternSettings(_Section):
    names: Annotated[tuple[PatternName, ...], NoDecode, BeforeValidator(_comma_list)] = PATTERNS  # type: ignore[assignment]  # the tuple holds exactly the Literal's values


class IndicatorSettings(_Section):
    """TA-Lib periods, and how many recent bars per symbol are held.

    The indicators are streamed over the whole series (`streaming.py`), so they are TA-Lib's
    over all of it. The `window` is what a revision older than `replay_bars` (or a snapshot
    from before the streaming state) recomputes from: there, recursive indicators (EMA, RSI,
    MACD, ATR) equal TA-Lib over the whole series to within 1e-10 at 400 (the default), 2e-8
    at 300, 3e-5 at 200 (measured on a random walk around 100).
    """

    sma_period: int = Field(20, ge=2, le=2500)
    ema_period: int = Field(20, ge=2, le=2500)
    rsi_period: int = Field(14, ge=2, le=2500)
    macd_fast: int = Field(12, ge=2, le=2500)
    macd_slow: int = Field(26, ge=2, le=2500)
    macd_signal: int = Field(9, ge=1, le=2500)
    bb_period: int = Field(20, ge=2, le=2500)
    bb_stddev: float = Field(2.0, gt=0, le=100)
    atr_period: int = Field(14, ge=1, le=2500)
    window: int = Field(400, ge=50, le=5000)
    # A revision (or a late minute) up to this many bars back is replayed from the indicator state
    # kept for the bar before it, giving TA-Lib's values on the corrected series; one reaching
    # further back recomputes from the window. The bar flow revises within ALLOWED_LATENESS_S
    # (900 s by default: 15 bars), so the default covers it twice over.
    replay_bars: int = Field(32, ge=1, le=5000)

    @model_validator(mode="after")
    def _consistent(self) -> IndicatorSettings:
        if self.macd_fast >= self.macd_slow:
            raise ValueError(f"macd_fast ({self.macd_fast}) must be below macd_slow ({self.macd_slow})")
        longest = max(self.sma_period, self.ema_period, self.rsi_period + 1, self.macd_slow + self.macd_signal,
                      self.bb_period, self.atr_period + 1)  # fmt: skip
        if self.window < 2 * longest:
            raise ValueError(f"window ({self.window}) must be at least twice the longest look-back ({longest})")
        return self


class AlertSettings(_Section):
    rsi_upper: float = Field(70.0, gt=0, lt=100)
    rsi_lower: float = Field(30.0, gt=0, lt=100)
    rules: Annotated[tuple[AlertRule, ...], NoDecode, BeforeValidator(_comma_list)] = ALERT_RULES  # type: ignore[assignment]  # the tuple holds exactly the Literal's values
    critical: Annotated[tuple[AlertRule, ...], NoDecode, BeforeValidator(_comma_list)] = ()

    @model_validator(mode="after")
    def _levels(self) -> AlertSettings:
        if self.rsi_lower >= self.rsi_upper:
            raise ValueError(f"rsi_lower ({self.rsi_lower}) must be below rsi_upper ({self.rsi_upper})")
        return self


class DetectionSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DETECT_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    enabled: bool = True
    # Bar timeframes the bar detectors run on (bars of others on the bars topic are skipped):
    # `DETECT_TIMEFRAMES=1m,5m`. Each (symbol, timeframe) has a detector of its own.
    timeframes: Annotated[tuple[TimeframeName, ...], NoDecode, BeforeValidator(_comma_list)] = get_args(TimeframeName)
    highlow: HighLowSettings = HighLowSettings()
    trend: TrendSettings = TrendSettings()
    surge: SurgeSettings = SurgeSettings()
    patterns: PatternSettings = PatternSettings()
    indicators: IndicatorSettings = IndicatorSettings()
    alerts: AlertSettings = AlertSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get(CONFIG_FILE_VARIABLE)
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        return tuple(sources)

    @field_validator("timeframes")
    @classmethod
    def _distinct_timeframes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"{','.join(value)} names a timeframe more than once")
        return value

    def bar_detection_on(self) -> bool:
        """Whether any detector that works on bars runs (else the flow skips the whole step)."""
        sections = (self.trend, self.surge, self.patterns, self.indicators, self.alerts)
        return self.enabled and bool(self.timeframes) and any(s.enabled for s in sections)


class DetectionConfigError(ValueError):
    """A detection setting is invalid; the message names each bad setting and its variable."""


def load() -> DetectionSettings:
    """The deployment's detection settings, validated, or `DetectionConfigError` saying what is wrong."""
    path = os.environ.get(CONFIG_FILE_VARIABLE)
    if path and not Path(path).is_file():
        raise DetectionConfigError(f"{CONFIG_FILE_VARIABLE}={path}: no such file")
    try:
        return DetectionSettings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = [str(p) for p in error["loc"] if not isinstance(p, int)]
            variable = "DETECT_" + "__".join(where).upper()
            problems.append(f"{variable} ({'.'.join(where)}): {error['msg']}")
        source = f" (environment and {path})" if path else ""
        raise DetectionConfigError(f"invalid detection settings{source}: " + "; ".join(problems)) from None
    except ValueError as exc:  # malformed TOML or a variable that is not JSON where JSON is needed
        field = re.search(r'field "(\w+)"', str(exc))
        named = ""
        if field:
            prefix = f"DETECT_{field[1].upper()}"
            culprits = sorted(k.upper() for k in os.environ if k.upper().startswith(prefix))
            named = f" ({', '.join(culprits) or prefix + '__*'}: not JSON where a list or table is needed)"
        raise DetectionConfigError(f"invalid detection settings: {exc}{named}") from None


def load_or_exit(component: str) -> DetectionSettings:
    """`load()` for a service's start-up: a bad setting ends the process with the message, no traceback."""
    try:
        return load()
    except DetectionConfigError as exc:
        print(f"{component}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
