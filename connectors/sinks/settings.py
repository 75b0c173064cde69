"""What the flows' outputs need: the three servers they write to and how long a retry may wait."""

from __future__ import annotations

from pydantic import Field

from connectors.kafka.settings import KafkaSettings
from connectors.postgres.settings import PostgresSettings
from connectors.redis.settings import RedisSettings


class OutputSettings(KafkaSettings, PostgresSettings, RedisSettings):
    sink_max_backoff_s: float = Field(30.0, gt=0, le=3600, description="cap of the retry backoff when a sink's server is down")
