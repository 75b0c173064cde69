"""What the flows' outputs need: the three servers they write to and how long a retry may wait."""

from __future__ import annotations

from pydantic import Field

from connectors.kafka.settings import KafkaSettings
from connectors.postgres.settings import PostgresSettings
from connectors.redis.settings import RedisSettings
from connectors.sinks.parts import MAX_LANES


class OutputSettings(KafkaSettings, PostgresSettings, RedisSettings):
    sink_max_backoff_s: float = Field(30.0, gt=0, le=3600, description="cap of the retry backoff when a sink's server is down")
    # Final bars are written by this many writers per worker (each a database session, a Redis
    # client and two threads), over the sink partitions the worker holds (connectors.sinks.parts).
    sink_bar_writers: int = Field(2, ge=1, le=MAX_LANES, description="final-bar writers per worker (SINK_BAR_WRITERS)")
