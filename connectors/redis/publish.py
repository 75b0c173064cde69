"""Records onto Redis pub/sub, each also kept in its channel's bounded history (see `connectors.redis.history`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import redis

from connectors.backoff import with_backoff, within
from connectors.monitoring.metrics import RECONNECTS
from connectors.redis.history import History, HistoryLimits
from connectors.unavailable import ServiceUnavailable
from schemas.bars import Bar, encode_bar
from schemas.channels import Channels, route
from schemas.events import Event, IndicatorValues, encode_event
from schemas.prices import Price, encode_price
from schemas.status import FlowHealth, Status, encode_status

log = logging.getLogger(__name__)

# One script call per chunk: a whole batch in one round trip (per-command PUBLISH costs ~20 us of
# client time each), in chunks small enough not to stall other Redis clients for long.
_CHUNK = 500


class RedisUnavailable(ServiceUnavailable):
    """Redis cannot be reached: say where and how to fix it."""

    service = "Redis"


def connect(url: str, timeout_s: float = 5.0, wait_s: float = 0.0) -> redis.Redis:
    """A client whose server answered. A server that does not answer is waited for, with backoff
    and a warning per try, for `wait_s` (a flow that starts during a Redis restart rides it out),
    then refused with where and how to fix it (a wrong REDIS_URL does not hang a start forever)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    within(
        client.ping,
        retry_on=(redis.RedisError,),
        wait_s=wait_s,
        refused=lambda exc: RedisUnavailable(
            f"Redis at {url} is unreachable ({exc}); start it with `make services` or set REDIS_URL"
        ),
        what=f"Redis at {url}",
        log=log,
        dependency="redis",
    )
    return client


def _reconnecting() -> None:
    """redis-py opens a new connection for the next command after a failed one: count it."""
    RECONNECTS.labels("redis").inc()


class Publisher:
    """Publishes (channel, JSON) messages with history; blocks and retries while Redis is down.

    Delivery is at least once: a batch whose reply was lost is sent again, so a consumer may
    see a message twice (under a new offset). Bars carry a revision and events a stable id
    for that reason.
    """

    def __init__(
        self, url: str, *, history: HistoryLimits | None = None, max_backoff_s: float = 30.0, start_wait_s: float = 60.0
    ) -> None:
        self._client = connect(url, wait_s=start_wait_s)
        self._history = History(self._client, history)
        self._max_backoff_s = max_backoff_s

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        for start in range(0, len(messages), _CHUNK):
            chunk = messages[start : start + _CHUNK]
            # Every Redis refusal is waited out: down, loading, OOM, READONLY (a replica), MISCONF
            # (failing to save), missing ACL grants. The script writes nothing before such a refusal,
            # so a retry publishes each message once. Only a client-side DataError (a bug) is raised.
            with_backoff(
                functools.partial(self._history.publish, chunk),
                retry_on=(redis.RedisError,),
                give_up_on=(redis.DataError,),
                what=f"publishing {len(chunk)} messages to Redis",
                log=log,
                max_backoff_s=self._max_backoff_s,
                dependency="redis",
                on_retry=_reconnecting,
            )

    def close(self) -> None:
        self._client.close()


class BarPublisher(Publisher):
    """Bars on their timeframe's all-symbols channel and on the symbol's own (1m keeps the old names)."""

    def __init__(self, url: str, channels: Channels, **options: object) -> None:
        super().__init__(url, **options)  # type: ignore[arg-type]  # the options dict mixes value types; each matches its keyword
        self._channels = channels

    def publish_final(self, bars: Sequence[Bar]) -> None:
        self.publish(_fan_out(bars, self._channels.ohlcv_at, self._channels.ohlcv_at_for))

    def publish_live(self, bars: Sequence[Bar]) -> None:
        self.publish(_fan_out(bars, self._channels.live_at, self._channels.live_at_for))


def _fan_out(bars: Sequence[Bar], everyone: Callable[[str], str], own: Callable[[str, str], str]) -> list[tuple[str, bytes]]:
    messages: list[tuple[str, bytes]] = []
    channels: dict[str, str] = {}  # timeframe -> its all-symbols channel
    for bar in bars:
        payload = encode_bar(bar)
        tf = bar.timeframe
        channel = channels.get(tf)
        if channel is None:
            channel = channels[tf] = everyone(tf)
        messages.append((channel, payload))
        messages.append((own(tf, bar.symbol), payload))
    return messages


class PricePublisher(Publisher):
    """Last prices on the all-symbols prices channel and on the symbol's own."""

    def __init__(self, url: str, channels: Channels, **options: object) -> None:
        super().__init__(url, **options)  # type: ignore[arg-type]  # the options dict mixes value types; each matches its keyword
        self._channels = channels

    def publish_prices(self, prices: Sequence[Price]) -> None:
        everyone, own = self._channels.prices, self._channels.prices_for
        messages: list[tuple[str, bytes]] = []
        for price in prices:
            payload = encode_price(price)
            messages.append((everyone, payload))
            messages.append((own(price.symbol), payload))
        self.publish(messages)


class EventPublisher(Publisher):
    """Detection records on the channels the catalog routes them to (schemas.channels.route)."""

    def __init__(self, url: str, channels: Channels, **options: object) -> None:
        super().__init__(url, **options)  # type: ignore[arg-type]  # the options dict mixes value types; each matches its keyword
        self._channels = channels

    def publish_events(self, events: Sequence[Event]) -> None:
        messages: list[tuple[str, bytes]] = []
        indicators = self._channels.indicators
        for event in events:
            payload = encode_event(event)
            if event.__class__ is IndicatorValues:  # most records: one channel, skip the routing
                messages.append((indicators, payload))
            else:
                messages.extend((channel, payload) for channel in route(event, self._channels))
        self.publish(messages)


class StatusPublisher(Publisher):
    """The flow's health and refused input, on the old system's status channels."""

    def __init__(self, url: str, channels: Channels, **options: object) -> None:
        super().__init__(url, **options)  # type: ignore[arg-type]  # the options dict mixes value types; each matches its keyword
        self._channels = channels

    def publish_status(self, records: Sequence[Status]) -> None:
        c = self._channels
        self.publish([(c.health if r.__class__ is FlowHealth else c.errors, encode_status(r)) for r in records])
