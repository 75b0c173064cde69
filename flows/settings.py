"""The flows' settings: the outputs' (Kafka, PostgreSQL, Redis, each beside its client) and the bars'.

Read from environment variables without prefix (names in the README). Every program calls
`load_or_exit()` at start-up, so a bad value fails fast with a message naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_serializer, field_validator
from pydantic_settings import NoDecode

from connectors.monitoring.settings import OpsSettings, port
from connectors.settings import DAY_S, SettingsError, describe
from connectors.settings import load as _load
from connectors.settings import load_or_exit as _load_or_exit
from connectors.sinks.settings import OutputSettings
from flows.timeframes import parse_timeframes
from schemas.timeframes import TimeframeName

__all__ = ["Settings", "SettingsError", "describe", "load", "load_or_exit"]


class Settings(OutputSettings, OpsSettings):
    """Every value is bounded, so no setting can overflow what uses it (timers, snapshots, int64)."""

    # --- Monitoring (docs/monitoring.md; LOG_LEVEL, LOG_FORMAT, OPS_* in OpsSettings) ----
    bar_flow_ops_port: int = port(9500, "the bar flow's /healthz, /readyz, /metrics (+ the Bytewax process id); 0: off")
    detection_flow_ops_port: int = port(9600, "the detection flow's (+ the Bytewax process id); 0: off")

    # --- Bars --------------------------------------------------------------------------
    bar_source: Literal["trades", "second_aggs"] = "trades"
    bar_timeframes: Annotated[tuple[TimeframeName, ...], NoDecode] = Field(
        ("5m", "15m", "1h", "1d"),
        description="coarser bars rolled up from the final 1-minute bars (comma-separated 5m, 15m, 1h, 1d; empty: "
        "none); 1m is always built",
    )
    bar_close_delay_s: float = Field(2.0, ge=0, le=3600, description="wait after a minute ends before the bar is final")
    allowed_lateness_s: float = Field(900.0, ge=0, le=DAY_S, description="late trades within this revise a final bar")
    live_update_interval_s: float = Field(1.0, gt=0, le=3600, description="at most one live update per symbol per interval")
    live_coarse_update_interval_s: float = Field(
        5.0, gt=0, le=3600,
        description="at most one live update per symbol and coarser timeframe (5m ...) per interval (not more often "
        "than LIVE_UPDATE_INTERVAL_S): each costs one Redis message per channel, four timeframes quadruple the 1m's",
    )  # fmt: skip
    idle_advance_s: float = Field(
        5.0, gt=0, le=DAY_S,
        description="a partition silent this long, while its source is caught up and the broker answers, advances its "
        "watermark by wall-clock time",
    )  # fmt: skip
    event_max_ahead_s: float = Field(
        60.0, ge=0, le=DAY_S, description="an event further ahead of the wall clock is dead-lettered as `future`"
    )
    watermark_max_jump_s: float | None = Field(
        None, gt=0, le=30 * DAY_S,
        description="an event further ahead of its partition's watermark is held until WATERMARK_JUMP_CONFIRM more "
        "events confirm the jump (else dead-lettered as `future`); default: ALLOWED_LATENESS_S, so an outlier it "
        "lets through costs revisions, never too_late refusals",
    )  # fmt: skip
    watermark_jump_confirm: int = Field(20, ge=1, le=10_000, description="held events that confirm a watermark jump")
    max_symbols_per_partition: int = Field(
        100_000, ge=1, le=10_000_000,
        description="symbols one partition may hold bars for at once; a new symbol beyond it is dead-lettered `capacity`",
    )  # fmt: skip
    symbol_idle_s: float = Field(
        DAY_S, gt=0, le=365 * DAY_S,
        description="per-symbol detection state of a symbol idle this long is dropped, and rebuilt from the database "
        "when it trades again (event time in the bar flow, wall-clock time in the detection flow)",
    )  # fmt: skip
    health_interval_s: float = Field(10.0, gt=0, le=3600, description="seconds between health lines and health messages")
    health_max_lag_s: float = Field(
        300.0,
        gt=0,
        le=365 * DAY_S,
        description="a tailing flow whose watermark lags the wall clock more than this reports degraded",
    )

    detection_boundary_hold_s: float = Field(
        0.5, ge=0, le=30,
        description="bars the tailing detection flow reads within this long after a minute closes (its end plus "
        "BAR_CLOSE_DELAY_S, wall clock) wait until then: the bar flow's sink writes the minute's bars first "
        "(flows.boundary); 0: never",
    )  # fmt: skip

    stage_log: Path | None = Field(
        None,
        description="a file the bar flow appends its stage marks to (connectors.sinks.stages; bench.ohlcv --latency-only "
        "reads it); its folder must exist. Unset: no marks",
    )

    @field_validator("stage_log")
    @classmethod
    def _stage_log_folder(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        try:
            folder = value.parent.is_dir()
        except OSError as exc:  # a name too long for the file system, say
            raise ValueError(f"{str(value)[:200]!r}: {exc.strerror}") from None  # pydantic names the variable
        if not folder:
            raise ValueError(f"{str(value)[:200]!r}: its folder does not exist")
        return value

    @field_validator("bar_timeframes", mode="before")
    @classmethod
    def _timeframes(cls, value: object) -> tuple[str, ...]:
        if not isinstance(value, str | list | tuple):
            raise ValueError(
                f"expected a comma-separated list of timeframes, got {type(value).__name__}"
            )  # pydantic reports ValueErrors with the variable's name
        return parse_timeframes(value)

    @field_serializer("bar_timeframes")
    def _timeframes_text(self, value: tuple[str, ...]) -> str:
        return ",".join(value)

    def as_env(self) -> dict[str, str]:
        """These settings as environment variables, for starting another process with them."""
        kafka = {"kafka_properties", "kafka_secret_files", "kafka_properties_file"}  # as their own variables
        return {
            name.upper(): (str(value).lower() if isinstance(value, bool) else str(value))
            for name, value in self.model_dump(exclude=kafka).items()
            if value is not None
        } | self.kafka_env()

    def max_jump_ms(self) -> int:
        """How far one event may move a partition's watermark at once (see WATERMARK_MAX_JUMP_S)."""
        jump = self.watermark_max_jump_s if self.watermark_max_jump_s is not None else self.allowed_lateness_s
        return max(1, int(jump * 1000))

    def bar_input_topic(self) -> str:
        return self.topic_trades if self.bar_source == "trades" else self.topic_second_aggs


def load() -> Settings:
    """The deployment's settings from the environment, or `SettingsError` saying what is wrong."""
    return _load(Settings)


def load_or_exit(component: str) -> Settings:
    """`load()` for a program's start-up: a bad setting ends it with the message and exit code 2, no traceback."""
    return _load_or_exit(Settings, component)
