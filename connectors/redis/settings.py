"""Redis settings: the server, the channel namespace and how much catch-up history each channel keeps."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings

from connectors.redis.history import HistoryLimits
from connectors.settings import CONFIG, DAY_S, NonBlank, matching

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _redis_url(value: str) -> str:
    try:
        scheme = urlsplit(value).scheme
    except ValueError:
        raise ValueError("is not a URL") from None
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return value


RedisUrl = Annotated[NonBlank, AfterValidator(_redis_url)]
# Redis namespaces must not hold pattern characters (the gateway pattern-subscribes under them) nor whitespace.
Namespace = Annotated[str, matching(r"[A-Za-z0-9_.:-]{1,64}", "not a Redis namespace (1-64 letters, digits, '_', '.', ':', '-')")]


class RedisSettings(BaseSettings):
    model_config = CONFIG

    redis_url: RedisUrl = Field(DEFAULT_URL, max_length=4096, repr=False)
    redis_namespace: Namespace = Field("tickstock", description="first segment of every Redis channel")
    redis_history_max_len: int = Field(
        1000, ge=1, le=10_000_000, description="about how many messages each channel's catch-up history keeps"
    )
    redis_history_max_age_s: float = Field(
        120.0, ge=0, le=30 * DAY_S,
        description="about how many seconds each channel's catch-up history keeps; 0 = no age cap",
    )  # fmt: skip

    def history_limits(self) -> HistoryLimits:
        return HistoryLimits(self.redis_history_max_len, self.redis_history_max_age_s)
