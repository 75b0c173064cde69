"""Bars onto Redis pub/sub: one message per bar on the all-symbols channel and on the symbol's own."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis

from connectors.redis_channels import Channels
from connectors.retry import with_backoff
from schemas.bars import Bar, encode_bar

log = logging.getLogger(__name__)


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached: say where and how to fix it."""


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RedisUnavailable(
            f"Redis at {url} is unreachable ({exc}); start it with `make services` or set REDIS_URL"
        ) from exc
    return client


# One round trip and one reply for a whole batch: per-command PUBLISH costs ~20 us of client
# time each, which at thousands of bars per second is most of the flow's Redis budget.
_PUBLISH_ALL = """
for i = 1, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
"""


class BarPublisher:
    """Publishes final and live bars; blocks and retries while Redis is down."""

    def __init__(self, url: str, channels: Channels, *, max_backoff_s: float = 30.0) -> None:
        self._client = connect(url)
        self._publish_all = self._client.register_script(_PUBLISH_ALL)
        self._channels = channels
        self._max_backoff_s = max_backoff_s

    def publish_final(self, bars: Sequence[Bar]) -> None:
        c = self._channels
        self._publish([(c.ohlcv, c.ohlcv_for(b.symbol), encode_bar(b)) for b in bars])

    def publish_live(self, bars: Sequence[Bar]) -> None:
        c = self._channels
        self._publish([(c.live, c.live_for(b.symbol), encode_bar(b)) for b in bars])

    def _publish(self, messages: list[tuple[str, str, bytes]]) -> None:
        if not messages:
            return

        args: list[str | bytes] = []
        for everyone, own, payload in messages:
            args += (everyone, payload, own, payload)

        def send() -> None:
            self._publish_all(args=args)

        with_backoff(
            send,
            retry_on=(redis.ConnectionError, redis.TimeoutError),
            what=f"publishing {len(messages)} bars to Redis",
            log=log,
            max_backoff_s=self._max_backoff_s,
        )

    def close(self) -> None:
        self._client.close()
