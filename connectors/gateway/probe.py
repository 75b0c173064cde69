"""What /healthz needs to know about the dependencies: the Redis lag, and whether PostgreSQL answers.

The probe publishes its own timestamp on the gateway's private probe channel: its delay through
Redis and the relay's reader is the Redis lag (the relay records it in `Stats`). Every 5th probe
also checks PostgreSQL, which only REST needs: while it fails, health says `degraded` (live
delivery goes on). A REST request that PostgreSQL fails marks it down at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from connectors.gateway.errors import REDIS_ERRORS, brief
from connectors.gateway.metrics import Stats

log = logging.getLogger("tickstock.gateway")

DATABASE_EVERY = 5  # probes per PostgreSQL check


class Probe:
    """The Redis lag probe and the PostgreSQL check; `database_ok` is read by health."""

    def __init__(
        self, redis: aioredis.Redis, pool: AsyncConnectionPool, stats: Stats, *, channel: str, interval_s: float
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.stats = stats
        self.channel = channel
        self.interval_s = interval_s
        self.database_ok = True

    def database_failed(self) -> None:
        """A REST request could not use PostgreSQL (counted; health degraded until a check succeeds)."""
        self.stats.database_errors += 1
        self.database_ok = False

    async def probe_forever(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.redis.publish(self.channel, repr(time.time()))
            except REDIS_ERRORS as exc:
                log.debug("probe publish failed: %s", brief(exc))
            n += 1
            if n % DATABASE_EVERY == 0:
                try:
                    async with self.pool.connection(timeout=5) as conn:
                        await conn.execute("SELECT 1")
                    self.database_ok = True
                except Exception as exc:  # noqa: BLE001 - any failure means REST cannot answer
                    if self.database_ok:
                        log.error("PostgreSQL check failed: %s", brief(exc))
                    self.database_ok = False
