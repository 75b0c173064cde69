"""Typed settings, read from environment variables (no prefix; names documented in README).

Every service calls `Settings()` at start-up, so a bad value fails fast with a message
naming the variable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.redis_history import HistoryLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    topic_trades: str = "stocks.trades"
    topic_quotes: str = "stocks.quotes"
    topic_second_aggs: str = "stocks.aggs.second"
    topic_minute_aggs: str = "stocks.aggs.minute"
    topic_dead_letter: str = "stocks.deadletter"
    topic_bars: str = Field("stocks.bars.1m", description="final 1-minute bars and revisions, key = symbol (JSON)")
    topic_partitions: int = Field(4, ge=1, description="partitions per topic when we create them")
    kafka_batch_size: int = Field(10_000, ge=1, description="max messages per consume call")
    kafka_start: Literal["earliest", "latest"] = "earliest"
    kafka_tail: bool = Field(True, description="keep waiting at the end of the topic; false = stop at EOF")

    # --- Bars --------------------------------------------------------------------------
    bar_source: Literal["trades", "second_aggs"] = "trades"
    bar_close_delay_s: float = Field(2.0, ge=0, description="wait after a minute ends before the bar is final")
    allowed_lateness_s: float = Field(900.0, ge=0, description="late trades within this revise a final bar")
    live_update_interval_s: float = Field(1.0, gt=0, description="at most one live update per symbol per interval")
    idle_advance_s: float = Field(
        5.0, gt=0, description="a partition silent this long advances its watermark by wall-clock time"
    )
    health_interval_s: float = Field(10.0, gt=0, description="seconds between health lines and health messages")
    health_max_lag_s: float = Field(
        300.0, gt=0, description="a tailing flow whose watermark lags the wall clock more than this reports degraded"
    )

    # --- Sinks -------------------------------------------------------------------------
    database_url: str = "postgresql://postgres@127.0.0.1:5432/tickstock"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_namespace: str = Field("tickstock", description="first segment of every Redis channel")
    sink_max_backoff_s: float = Field(30.0, gt=0, description="cap of the retry backoff when a sink's server is down")
    redis_history_max_len: int = Field(1000, ge=1, description="about how many messages each channel's catch-up history keeps")
    redis_history_max_age_s: float = Field(
        120.0, ge=0, description="about how many seconds each channel's catch-up history keeps; 0 = no age cap"
    )

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
        }

    def history_limits(self) -> HistoryLimits:
        return HistoryLimits(self.redis_history_max_len, self.redis_history_max_age_s)

    def bar_input_topic(self) -> str:
        return self.topic_trades if self.bar_source == "trades" else self.topic_second_aggs
