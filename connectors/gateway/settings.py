"""The gateway's typed settings, from environment variables (`GATEWAY_*`, plus the shared ones).

REDIS_URL, DATABASE_URL and REDIS_NAMESPACE are the pipeline's own variables, with the rules of
`connectors/redis/settings.py` and `connectors/postgres/settings.py`,
so a gateway deployed beside the flow needs no extra configuration for them.

Every number has a lower and an upper bound (and no NaN or infinity), so no value can make a
timer overflow, a loop spin or a buffer grow without limit; a bad value stops the gateway at
start with the variable's name and the rule (`describe_errors`, exit code 2), never a traceback.
Development mode takes an explicit `true` only (`1`, `yes`, `on` are refused, so it cannot turn
on by accident) and binds to loopback only unless GATEWAY_DEV_MODE_ALLOW_REMOTE is also `true`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from connectors.postgres import settings as postgres_settings
from connectors.postgres.settings import DatabaseUrl
from connectors.redis import settings as redis_settings
from connectors.redis.settings import Namespace, RedisUrl

SECRET_FIELDS = frozenset({"jwt_secret", "redis_url", "database_url"})  # never echoed in errors or logs
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*$"
)
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


def _shared(name: str) -> AliasChoices:
    return AliasChoices(f"GATEWAY_{name}", name)


def _explicit_bool(value: object, name: str) -> bool:
    """True/False from a real bool or the words `true`/`false` (any case); nothing else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(
        f"{name} must be `true` or `false` (not {str(value)[:20]!r}: an explicit word, so it cannot turn on by accident)"
    )


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """`url` without its password (Redis or PostgreSQL URL), safe for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None and "password=" not in parts.query:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        user = f"{parts.username}:***@" if parts.username else ":***@" if parts.password is not None else ""
        port = f":{parts.port}" if parts.port else ""
        query = re.sub(r"password=[^&]*", "password=***", parts.query)
        return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, query, ""))
    except ValueError:
        return "(unparseable URL)"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", case_sensitive=False, extra="ignore", populate_by_name=True, allow_inf_nan=False
    )

    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535, description="0 picks a free port (tests)")
    # The pipeline's own variables (and rules), also readable with the GATEWAY_ prefix.
    redis_url: RedisUrl = Field(redis_settings.DEFAULT_URL, max_length=4096, validation_alias=_shared("REDIS_URL"), repr=False)
    redis_namespace: Namespace = Field("tickstock", validation_alias=_shared("REDIS_NAMESPACE"))
    database_url: DatabaseUrl = Field(
        postgres_settings.DEFAULT_URL, max_length=4096, validation_alias=_shared("DATABASE_URL"), repr=False
    )
    db_pool_min: int = Field(1, ge=0, le=100)
    db_pool_max: int = Field(8, ge=1, le=100)
    db_timeout_s: float = Field(5.0, ge=0.1, le=60, description="wait for a pooled connection before answering 503")
    db_statement_timeout_s: float = Field(10.0, ge=0.1, le=300, description="longest REST query")

    # delivery
    batch_interval_ms: float = Field(250.0, ge=1, le=10_000, description="flush period of every client's buffer")
    max_queue: int = Field(2000, ge=1, le=1_000_000, description="unsent messages a client may have while its socket is full")
    max_buffer_bytes: int = Field(
        1 << 20, ge=1024, le=1 << 30, description="socket write buffer above which nothing more is written"
    )
    slow_timeout_s: float = Field(10.0, ge=0.1, le=3600, description="a socket full this long is cut even with a short queue")
    max_symbols: int = Field(5000, ge=1, le=100_000, description="symbols one connection may subscribe to")
    max_connections: int = Field(10_000, ge=1, le=1_000_000, description="open WebSocket connections; more get HTTP 503")
    ping_interval_s: float = Field(20.0, ge=0.1, le=3600, description="WebSocket ping period")
    ping_timeout_s: float = Field(20.0, ge=0.1, le=3600, description="a pong missing this long closes the connection")
    max_message_bytes: int = Field(64 * 1024, ge=256, le=16 << 20, description="largest client message")
    max_relay_bytes: int = Field(256 * 1024, ge=1024, le=64 << 20, description="largest Redis message relayed to clients")
    max_errors: int = Field(10, ge=1, le=10_000, description="invalid client messages per error window before disconnecting")
    error_window_s: float = Field(60.0, ge=1, le=86_400)
    rate_limit_per_s: float = Field(20.0, ge=0.1, le=100_000, description="client messages per second, sustained")
    rate_burst: int = Field(50, ge=1, le=100_000, description="client messages allowed at once above the sustained rate")
    max_tracked_channels: int = Field(
        200_000, ge=100, le=10_000_000, description="channel positions remembered for recovery after a Redis outage"
    )

    # auth
    dev_mode: bool = Field(False, description="no token needed, any origin: local development only (explicit `true`)")
    dev_mode_allow_remote: bool = Field(False, description="dev mode on a non-loopback GATEWAY_HOST (explicit `true`)")
    jwt_secret: str | None = Field(None, repr=False, description="HS256 signing secret, >= 32 bytes")
    jwt_audience: str | None = Field(None, min_length=1, max_length=256, description="required `aud` claim, when set")
    jwt_issuer: str | None = Field(None, min_length=1, max_length=256, description="required `iss` claim, when set")
    jwt_leeway_s: float = Field(30.0, ge=0, le=300, description="clock skew tolerated on exp/nbf/iat")
    max_token_lifetime_s: float = Field(86_400.0, ge=1, le=366 * 86_400, description="longest exp - iat accepted or issued")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated; the gateway's own http://host:port is always allowed"
    )
    token_ttl_s: float = Field(3600.0, ge=1, le=366 * 86_400, description="default lifetime of tokens the token command issues")

    # REST limits
    max_bars: int = Field(10_000, ge=1, le=1_000_000, description="bars one /api/bars request may cover")
    probe_interval_s: float = Field(1.0, ge=0.05, le=60, description="Redis lag probe period")

    @field_validator("dev_mode", "dev_mode_allow_remote", mode="before")
    @classmethod
    def _explicit(cls, v: object, info) -> bool:
        return _explicit_bool(v, f"GATEWAY_{info.field_name.upper()}")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v.strip("[]"))
            return v
        except ValueError:
            pass
        if not _HOSTNAME.match(v):
            raise ValueError("must be an IP address or a host name")
        return v

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        bad = [o for o in v if not _ORIGIN.match(o.rstrip("/"))]
        if bad:
            raise ValueError(
                f"not an origin (scheme://host[:port], no path, no wildcard): {', '.join(repr(o[:60]) for o in bad[:3])}"
            )
        if len(v) > 1000:
            raise ValueError("at most 1000 origins")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> GatewaySettings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError(f"GATEWAY_DB_POOL_MIN ({self.db_pool_min}) must not exceed GATEWAY_DB_POOL_MAX ({self.db_pool_max})")
        if self.token_ttl_s > self.max_token_lifetime_s:
            raise ValueError(
                f"GATEWAY_TOKEN_TTL_S ({self.token_ttl_s:g}) must not exceed GATEWAY_MAX_TOKEN_LIFETIME_S "
                f"({self.max_token_lifetime_s:g})"
            )
        if self.dev_mode and not is_loopback(self.host) and not self.dev_mode_allow_remote:
            raise ValueError(
                f"GATEWAY_DEV_MODE=true needs a loopback GATEWAY_HOST (127.0.0.1, ::1, localhost), not "
                f"{self.host!r}: development mode has no authentication. Set GATEWAY_DEV_MODE_ALLOW_REMOTE=true "
                "as well to expose it anyway"
            )
        return self

    def origins(self, port: int) -> list[str]:
        """The allowlist plus the gateway's own origin (the dashboard it serves)."""
        own = {f"http://{self.host}:{port}", f"http://localhost:{port}", f"http://127.0.0.1:{port}"}
        return sorted(own | set(self.allowed_origins))

    def public(self) -> dict[str, object]:
        """The settings for logs and /healthz: secrets dropped, URLs without their passwords."""
        out = self.model_dump(exclude={"jwt_secret"})
        out["redis_url"] = redact_url(self.redis_url)
        out["database_url"] = redact_url(self.database_url)
        return out


def describe_errors(exc: ValidationError) -> str:
    """One line per invalid setting: the variable, the rule, and the value unless it may hold a secret."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error.get("loc", ()) if part != "__root__"]
        field = loc[0].lower().removeprefix("gateway_") if loc else ""  # a field name or the alias (REDIS_URL)
        name = f"GATEWAY_{field.upper()}" if field else "settings"
        message = error.get("msg", "invalid").removeprefix("Value error, ")
        value = error.get("input")
        secret = field in SECRET_FIELDS or not loc or isinstance(value, dict)
        shown = "" if secret else f" (got {str(value)[:60]!r})"
        lines.append(f"  {name}: {message}{shown}")
    return "\n".join(lines)
