"""The bridge's settings: where the feed is and how the bridge behaves, checked before it starts.

`BridgeSettings` are the bridge's own variables (no prefix); the topics and the broker come from
`connectors.kafka.settings.KafkaSettings`. A bad value is a `SettingsError` whose message names
the variable, the value (never the API key) and what is wrong; the program turns it into exit
code 2.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from connectors.kafka.settings import KafkaSettings
from connectors.monitoring.settings import LogSettings, port
from connectors.settings import SettingsError
from schemas.symbols import SYMBOL_PATTERN

_SUBSCRIPTION = re.compile(rf"[A-Z]{{1,10}}\.(\*|{SYMBOL_PATTERN})")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?")


def _default_spool_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "tickstock" / "bridge-spool"


def _seconds(default: float, low: float, high: float, description: str) -> Any:
    return Field(default, ge=low, le=high, allow_inf_nan=False, description=description)


class BridgeSettings(LogSettings):
    """Where the feed is and how the bridge behaves (environment variables, no prefix; LOG_LEVEL, LOG_FORMAT)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", populate_by_name=True)

    api_key: str = Field(
        validation_alias=AliasChoices("massive_api_key", "polygon_api_key", "api_key"), min_length=1, max_length=1024
    )
    massive_feed: str = Field("socket.massive.com", description="socket.massive.com (real time) or delayed.massive.com")
    massive_url: str | None = Field(None, description="full endpoint URL; overrides the feed (e.g. ws://127.0.0.1:8765/stocks)")
    massive_subscriptions: str = Field("T.*,Q.*,A.*,AM.*", max_length=1_000_000)
    bridge_max_in_flight: int = Field(100_000, ge=1, le=10_000_000, description="events handed to Kafka, not yet acknowledged")
    bridge_max_in_flight_mb: int = Field(256, ge=1, le=16_384, description="the same window in MiB of records")
    bridge_max_frame_mb: int = Field(
        16, ge=1, le=1024, description="largest WebSocket frame read (a larger one drops the connection)"
    )
    bridge_backoff_initial_s: float = _seconds(0.5, 0.001, 60, "first reconnect delay")
    bridge_backoff_max_s: float = _seconds(30.0, 0.001, 3600, "reconnect delay cap")
    bridge_retry_backoff_initial_s: float = _seconds(0.1, 0.001, 60, "first delay before a failed delivery is produced again")
    bridge_retry_backoff_max_s: float = _seconds(5.0, 0.001, 600, "cap of that delay")
    bridge_handshake_timeout_s: float = _seconds(10.0, 0.1, 600, "for each step of connect, greeting, auth")
    bridge_stop_timeout_s: float = _seconds(
        10.0, 0, 3600, "on SIGTERM, how long Kafka may take what is in flight before it is spooled"
    )
    bridge_spool_dir: Path = Field(default_factory=_default_spool_dir, description="where a stop writes what Kafka did not take")
    bridge_health_interval_s: float = _seconds(10.0, 0.01, 86_400, "health line interval")
    bridge_ops_port: int = port(9401, "the bridge's /healthz, /readyz, /metrics; 0: off")
    ops_host: str = Field("127.0.0.1", min_length=1, max_length=253, description="address of that server")
    bridge_idempotence: bool = Field(
        True, description="false only for a broker that forgets producer state (in-memory Tansu restarts)"
    )

    @field_validator("massive_feed")
    @classmethod
    def _host(cls, v: str) -> str:
        if not _HOST.fullmatch(v):
            raise ValueError("must be a host name, optionally with :port (e.g. socket.massive.com)")
        return v

    @field_validator("massive_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = urlsplit(v)
            port_ok = parts.port is None or parts.port > 0
        except ValueError as exc:
            raise ValueError(f"not a URL ({exc})") from None
        if parts.scheme not in ("ws", "wss") or not parts.hostname or not port_ok or len(v) > 2000:
            raise ValueError("must be a ws:// or wss:// URL with a host (e.g. wss://socket.massive.com/stocks)")
        return v

    @field_validator("massive_subscriptions")
    @classmethod
    def _channels(cls, v: str) -> str:
        channels = [s.strip() for s in v.split(",") if s.strip()]
        if not channels:
            raise ValueError("names no channel (e.g. T.*,Q.*,A.*,AM.*)")
        bad = [c for c in channels if not _SUBSCRIPTION.fullmatch(c)]
        if bad:
            raise ValueError(f"{bad[0][:60]!r} is not a channel: an event type, '.', then '*' or a symbol (T.*, AM.AAPL)")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> BridgeSettings:
        if self.bridge_backoff_initial_s > self.bridge_backoff_max_s:
            raise ValueError("BRIDGE_BACKOFF_INITIAL_S must not exceed BRIDGE_BACKOFF_MAX_S")
        if self.bridge_retry_backoff_initial_s > self.bridge_retry_backoff_max_s:
            raise ValueError("BRIDGE_RETRY_BACKOFF_INITIAL_S must not exceed BRIDGE_RETRY_BACKOFF_MAX_S")
        return self

    def url(self) -> str:
        return self.massive_url or f"wss://{self.massive_feed}/stocks"

    def subscriptions(self) -> list[str]:
        return [s.strip() for s in self.massive_subscriptions.split(",") if s.strip()]


def settings_problem(exc: ValidationError) -> str:
    """Pydantic's errors as `VARIABLE=value: what is wrong`, one clause each (the key is never shown)."""
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]).upper() if error["loc"] else ""
        if name in ("MASSIVE_API_KEY", "POLYGON_API_KEY", "API_KEY"):
            if error["type"] == "missing":
                parts.append("MASSIVE_API_KEY (or POLYGON_API_KEY) is not set")
            else:
                parts.append(f"MASSIVE_API_KEY: {error['msg']}")
            continue
        value = error.get("input")
        shown = f"={str(value)[:80]!r}" if name and isinstance(value, str | int | float) else ""
        parts.append(f"{name}{shown}: {error['msg']}" if name else str(error["msg"]))
    return "; ".join(parts)


def load_settings() -> tuple[BridgeSettings, KafkaSettings]:
    """Both settings, or SettingsError saying which variable is wrong and why."""
    try:
        bridge, kafka = BridgeSettings(), KafkaSettings()
    except ValidationError as exc:
        raise SettingsError(f"bad settings: {settings_problem(exc)}") from None
    return bridge, kafka
