"""Logging and monitoring settings every service shares (environment variables, no prefix).

The ports themselves belong to each service (`BRIDGE_OPS_PORT`, `BAR_FLOW_OPS_PORT`,
`DETECTION_FLOW_OPS_PORT`; the gateway serves on `GATEWAY_PORT`), so one environment file can
configure all four on one host without two of them asking for the same port.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from connectors.settings import CONFIG, DAY_S

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class LogSettings(BaseSettings):
    """`LOG_LEVEL` (any case) and `LOG_FORMAT` (`text` or `json`, one object per line)."""

    model_config = CONFIG

    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)")
    log_format: Literal["text", "json"] = Field("text", description="text lines, or one JSON object per line")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value


def port(default: int, description: str) -> int:
    """A service's ops port field: 0 turns the server off (tests that run flows in-process)."""
    return Field(default, ge=0, le=65535, description=description)


class OpsSettings(LogSettings):
    """Where the ops server listens and what `/readyz` and `/healthz` demand."""

    ops_host: str = Field(
        "127.0.0.1", min_length=1, max_length=253, description="address of the /healthz, /readyz, /metrics server"
    )
    ops_port_per_process: bool = Field(
        True,
        description="a flow process listens on its base port + its Bytewax process id (several processes on one "
        "host); false: every process on the base port (one process per pod)",
    )
    ready_max_lag_messages: int = Field(
        10_000, ge=0, le=2**62, description="a flow is ready only while every input partition lags at most this"
    )
    liveness_stall_s: float = Field(
        300.0, gt=0, le=DAY_S,
        description="a flow whose input has not been polled this long while no dependency is failing is not alive",
    )  # fmt: skip
