"""Typed settings, read from environment variables (no prefix; names documented in README).

Every service calls `Settings()` at start-up, so a bad value fails fast with a message
naming the variable.
"""

from __future__ import annotations

import re
import sys
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.redis_history import HistoryLimits


# Kafka's own rule for topic names; Redis namespaces must not hold pattern characters (the gateway
# pattern-subscribes under them) nor whitespace.
def _matching(pattern: str, what: str) -> AfterValidator:
    match = re.compile(pattern).fullmatch

    def check(value: str) -> str:
        if match(value) is None:
            raise PydanticCustomError("pattern", what)
        return value

    return AfterValidator(check)


TopicName = Annotated[str, _matching(r"[A-Za-z0-9._-]{1,249}", "not a Kafka topic name (1-249 letters, digits, '.', '_', '-')")]
Namespace = Annotated[str, _matching(r"[A-Za-z0-9_.:-]{1,64}", "not a Redis namespace (1-64 letters, digits, '_', '.', ':', '-')")]
DAY_S = 86_400.0


class Settings(BaseSettings):
    """Every value is bounded, so no setting can overflow what uses it (timers, snapshots, int64)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", allow_inf_nan=False)

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", max_length=4096)
    topic_trades: TopicName = "stocks.trades"
    topic_quotes: TopicName = "stocks.quotes"
    topic_second_aggs: TopicName = "stocks.aggs.second"
    topic_minute_aggs: TopicName = "stocks.aggs.minute"
    topic_dead_letter: TopicName = "stocks.deadletter"
    topic_bars: TopicName = Field("stocks.bars.1m", description="final 1-minute bars and revisions, key = symbol (JSON)")
    topic_partitions: int = Field(4, ge=1, le=10_000, description="partitions per topic when we create them")
    kafka_batch_size: int = Field(10_000, ge=1, le=1_000_000, description="max messages per consume call")
    kafka_start: Literal["earliest", "latest"] = Field(
        "earliest",
        description="where a flow without recovery state starts, and where it resumes when its offset is no longer "
        "on the broker (deleted by retention, or the topic was recreated): logged and counted either way",
    )
    kafka_tail: bool = Field(True, description="keep waiting at the end of the topic; false = stop at EOF")

    # --- Bars --------------------------------------------------------------------------
    bar_source: Literal["trades", "second_aggs"] = "trades"
    bar_close_delay_s: float = Field(2.0, ge=0, le=3600, description="wait after a minute ends before the bar is final")
    allowed_lateness_s: float = Field(900.0, ge=0, le=DAY_S, description="late trades within this revise a final bar")
    live_update_interval_s: float = Field(
        1.0, gt=0, le=3600, description="at most one live update per symbol per interval"
    )
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
        300.0, gt=0, le=365 * DAY_S,
        description="a tailing flow whose watermark lags the wall clock more than this reports degraded",
    )

    # --- Sinks -------------------------------------------------------------------------
    database_url: str = Field("postgresql://postgres@127.0.0.1:5432/tickstock", max_length=4096)
    redis_url: str = Field("redis://127.0.0.1:6379/0", max_length=4096)
    redis_namespace: Namespace = Field("tickstock", description="first segment of every Redis channel")
    sink_max_backoff_s: float = Field(
        30.0, gt=0, le=3600, description="cap of the retry backoff when a sink's server is down"
    )
    redis_history_max_len: int = Field(
        1000, ge=1, le=10_000_000, description="about how many messages each channel's catch-up history keeps"
    )
    redis_history_max_age_s: float = Field(
        120.0, ge=0, le=30 * DAY_S,
        description="about how many seconds each channel's catch-up history keeps; 0 = no age cap",
    )  # fmt: skip

    @field_validator("kafka_bootstrap_servers", "database_url", "redis_url")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    def topics(self) -> list[str]:
        """Every topic the system uses, for creation at set-up."""
        return [
            self.topic_trades,
            self.topic_quotes,
            self.topic_second_aggs,
            self.topic_minute_aggs,
            self.topic_dead_letter,
            self.topic_bars,
        ]

    def as_env(self) -> dict[str, str]:
        """These settings as environment variables, for starting another process with them."""
        return {
            name.upper(): (str(value).lower() if isinstance(value, bool) else str(value))
            for name, value in self.model_dump().items()
            if value is not None
        }

    def max_jump_ms(self) -> int:
        """How far one event may move a partition's watermark at once (see WATERMARK_MAX_JUMP_S)."""
        jump = self.watermark_max_jump_s if self.watermark_max_jump_s is not None else self.allowed_lateness_s
        return max(1, int(jump * 1000))

    def history_limits(self) -> HistoryLimits:
        return HistoryLimits(self.redis_history_max_len, self.redis_history_max_age_s)

    def bar_input_topic(self) -> str:
        return self.topic_trades if self.bar_source == "trades" else self.topic_second_aggs


class SettingsError(ValueError):
    """A setting is invalid; the message names each bad variable and what is wrong with it."""


def describe(exc: ValidationError, prefix: str = "") -> str:
    """A pydantic error as `VARIABLE: problem; ...` (the input is cut short: it may be huge or a secret)."""
    problems = []
    for error in exc.errors():
        where = "__".join(str(p) for p in error["loc"] if not isinstance(p, int)) or "?"
        problems.append(f"{prefix}{where.upper()}: {error['msg']}")
    return "; ".join(problems)


def load() -> Settings:
    """The deployment's settings from the environment, or `SettingsError` saying what is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(f"invalid settings: {describe(exc)}") from None


def load_or_exit(component: str) -> Settings:
    """`load()` for a program's start-up: a bad setting ends it with the message and exit code 2, no traceback."""
    try:
        return load()
    except SettingsError as exc:
        print(f"{component}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
