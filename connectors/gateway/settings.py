"""The gateway's typed settings, from environment variables (`GATEWAY_*`, plus the shared ones).

REDIS_URL, DATABASE_URL and REDIS_NAMESPACE are the pipeline's own variables (flows/settings.py),
so a gateway deployed beside the flow needs no extra configuration for them.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing import Annotated


def _shared(name: str) -> AliasChoices:
    return AliasChoices(f"GATEWAY_{name}", name)


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", case_sensitive=False, extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535, description="0 picks a free port (tests)")
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_shared("REDIS_URL"))
    redis_namespace: str = Field("tickstock", validation_alias=_shared("REDIS_NAMESPACE"))
    database_url: str = Field("postgresql://postgres@127.0.0.1:5432/tickstock", validation_alias=_shared("DATABASE_URL"))
    db_pool_min: int = Field(1, ge=0)
    db_pool_max: int = Field(8, ge=1)

    # delivery
    batch_interval_ms: float = Field(250.0, gt=0, le=10_000, description="flush period of every client's buffer")
    max_queue: int = Field(2000, ge=1, description="unsent messages a client may have while its socket is full")
    max_buffer_bytes: int = Field(1 << 20, ge=1024, description="socket write buffer above which nothing more is written")
    slow_timeout_s: float = Field(10.0, gt=0, description="a socket full this long is cut even with a short queue")
    max_symbols: int = Field(5000, ge=1, description="symbols one connection may subscribe to")
    ping_interval_s: float = Field(20.0, gt=0, description="WebSocket ping period")
    ping_timeout_s: float = Field(20.0, gt=0, description="a pong missing this long closes the connection")
    max_message_bytes: int = Field(64 * 1024, ge=256, description="largest client message")
    max_errors: int = Field(10, ge=1, description="invalid client messages per error window before disconnecting")
    error_window_s: float = Field(60.0, gt=0)

    # auth
    dev_mode: bool = Field(False, description="no token needed, any origin: local development only")
    jwt_secret: str | None = Field(None, repr=False, description="HS256 signing secret, >= 32 bytes")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated; the gateway's own http://host:port is always allowed"
    )
    token_ttl_s: float = Field(3600.0, gt=0, description="default lifetime of tokens the token command issues")

    # REST limits
    max_bars: int = Field(10_000, ge=1, description="bars one /api/bars request may cover")
    probe_interval_s: float = Field(1.0, gt=0, description="Redis lag probe period")

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("redis_url", "database_url")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    def origins(self, port: int) -> list[str]:
        """The allowlist plus the gateway's own origin (the dashboard it serves)."""
        own = {f"http://{self.host}:{port}", f"http://localhost:{port}", f"http://127.0.0.1:{port}"}
        return sorted(own | set(self.allowed_origins))
