"""A real gateway in a background thread (its own event loop) and real WebSocket clients, for tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
from websockets.asyncio.client import ClientConnection, connect

from connectors.gateway.server import Gateway
from connectors.gateway.settings import GatewaySettings
from connectors.redis.history import History, HistoryLimits
from connectors.redis.publish import BarPublisher
from schemas.bars import Bar
from schemas.channels import Channels
from schemas.events import Alert, Event, PatternEvent, PatternName, encode_event, stable_id

BarStatus = Literal["live", "final"]
SECRET = "test-secret-" + "x" * 32
WAIT_S = 20.0  # bounds waiting only; nothing asserts how long anything took


@dataclass
class Running:
    gateway: Gateway
    namespace: str
    redis_url: str
    history: HistoryLimits = field(default_factory=HistoryLimits)

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def channels(self) -> Channels:
        return Channels(self.namespace)

    def bars(self) -> BarPublisher:
        return BarPublisher(self.redis_url, self.channels, history=self.history)

    def publish_events(self, events: Sequence[Event]) -> None:
        """As the detection sink does: each event on its symbol's channel, with its history.

        One attempt: a Redis refusal surfaces here (the sinks' publisher would wait it out),
        so a test can make Redis misbehave and see the gateway's side of it.
        """
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            History(client, self.history).publish([(self.channels.events_for(e.symbol), encode_event(e)) for e in events])
        finally:
            client.close()

    def publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        """(channel, JSON payload) pairs published as the sinks do (history, offset, epoch), one attempt."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            History(client, self.history).publish(list(items))
        finally:
            client.close()


@contextlib.contextmanager
def running_gateway(
    database_url: str, redis_url: str, history: HistoryLimits | None = None, **overrides: object
) -> Iterator[Running]:
    values: dict[str, Any] = {
        "port": 0,
        "redis_namespace": f"test{uuid.uuid4().hex[:8]}",
        "database_url": database_url,
        "redis_url": redis_url,
        "dev_mode": True,
        "batch_interval_ms": 20,
        "db_pool_min": 0,
        "db_pool_max": 2,
    }
    values.update(overrides)
    settings = GatewaySettings(**values)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway-loop", daemon=True)
    thread.start()
    gateway = Gateway(settings)
    asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(30)
    try:
        yield Running(gateway, settings.redis_namespace, redis_url, history or HistoryLimits())
    finally:
        asyncio.run_coroutine_threadsafe(gateway.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def live_bar(symbol: str, close: float, minute: int = 0, status: BarStatus = "live", revision: int = 0) -> Bar:
    return Bar(
        symbol=symbol,
        timestamp=1_800_000_000_000 + minute * 60_000,
        open=close - 0.2,
        high=close + 0.3,
        low=close - 0.4,
        close=close,
        volume=100,
        vwap=close,
        trades=1,
        revision=revision,
        status=status,
    )


class Client:
    """A WebSocket client that sorts what it receives: batch messages vs. control replies."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict] = []  # {"channel":..., "data":...} in arrival order
        self._data: list[dict] = []  # their data, kept alongside (no rebuild per check)
        self.frames = 0
        self.control: list[dict] = []
        self.closed_code: int | None = None
        self.closed_reason: str | None = None

    @classmethod
    async def open(cls, url: str, **options: Any) -> Client:
        ws = await connect(url, open_timeout=WAIT_S, **options)
        client = cls(ws)
        welcome = await client.control_reply()
        assert welcome["type"] == "welcome", welcome
        return client

    async def send(self, message: dict | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def _receive_one(self, timeout: float) -> bool:
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            return False
        item = json.loads(raw)
        if item["type"] == "batch":
            self.frames += 1
            self.messages.extend(item["messages"])
            self._data.extend(m["data"] for m in item["messages"])
        else:
            self.control.append(item)
        return True

    async def control_reply(self, timeout: float = WAIT_S) -> dict:
        deadline = time.monotonic() + timeout
        while not self.control:
            left = deadline - time.monotonic()
            assert left > 0, "no reply from the gateway"
            await self._receive_one(left)
        return self.control.pop(0)

    async def request(self, message: dict | str) -> dict:
        await self.send(message)
        return await self.control_reply()

    async def until(self, done: Callable[[list[dict]], bool], timeout: float = WAIT_S) -> list[dict]:
        """Receive until `done(messages)`; the messages so far (data only)."""
        deadline = time.monotonic() + timeout
        while not done(self.data()):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; received {self.data()[-20:]}"
            await self._receive_one(min(left, 0.25))  # `done` may also turn true by the test's doing
        return self.data()

    def data(self) -> list[dict]:
        return self._data

    def forget(self) -> None:
        self.messages.clear()
        self._data.clear()

    async def wait_closed(self, timeout: float = WAIT_S) -> tuple[int | None, str | None]:
        """Read everything until the server closes; its close code and reason."""
        from websockets.exceptions import ConnectionClosed

        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                await self._receive_one(deadline - time.monotonic())
        except ConnectionClosed:
            pass
        rcvd = self.ws.close_code, self.ws.close_reason
        return rcvd

    async def close(self) -> None:
        await self.ws.close()


def pattern(symbol: str, confidence: float, minute: int = 0, name: PatternName = "doji") -> PatternEvent:
    ts = 1_800_000_000_000 + minute * 60_000
    return PatternEvent(
        id=stable_id("pattern", symbol, "1m", ts, name),
        type=name,
        symbol=symbol,
        timestamp=ts,
        confidence=confidence,
        direction="neutral",
        params={},
        signal=100,
    )


def alert(symbol: str, minute: int = 0) -> Alert:
    ts = 1_800_000_000_000 + minute * 60_000
    return Alert(
        id=stable_id("alert", symbol, ts, "rsi_overbought"),
        type="rsi_overbought",
        symbol=symbol,
        timestamp=ts,
        confidence=0.95,
        direction="down",
        params={"period": 14},
        severity="warning",
        indicator="rsi",
        value=75.0,
        threshold=70.0,
        message="RSI 75 above 70",
    )
