"""The gateway process: one Redis subscription fanned out to WebSocket clients, plus REST, on one port.

Wiring only; the decisions live in protocol.py, fanout.py, auth.py, metrics.py and rest.py.

- Server: the `websockets` library (asyncio). Plain HTTP GETs on the same port (REST, /healthz,
  /metrics, /openapi.json, the dashboard) are answered from `process_request` by the FastAPI
  app through `asgi.py`; `/ws` upgrades to a WebSocket after the token and Origin checks.
- One `PSUBSCRIBE` connection to Redis per process, read by one task that parses and encodes
  each message once (`ChannelMap.parse`) and buffers it for every interested client
  (`Router.route`).
- Every `batch_interval_ms` one task writes each dirty client's buffer as one frame, without
  awaiting the socket (`websockets.broadcast` semantics). A client whose socket stays full is cut
  (close 4008) instead of slowing the loop everyone shares.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import redis
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from connectors.gateway import protocol
from connectors.gateway.asgi import respond_from
from connectors.gateway.auth import Grant, Policy, Refused
from connectors.gateway.fanout import ChannelMap, Router, Subscriber, frame
from connectors.gateway.metrics import QueueDepths, Stats, exposition, health
from connectors.gateway.protocol import ALL, BadMessage, Ping, Subscribe, Unsubscribe
from connectors.gateway.rest import build_rest
from connectors.gateway.settings import GatewaySettings
from connectors.redis_history import History
from schemas.channels import Channels

log = logging.getLogger("tickstock.gateway")

STATIC_DIR = Path(__file__).with_name("static")
VENDOR_DIR = Path(__file__).resolve().parents[2] / "infra" / "dashboard" / "node_modules" / "lightweight-charts" / "dist"


class GatewayUnavailable(RuntimeError):
    """A dependency is unreachable at start: the message names it and the fix."""


class GatewayConnection(ServerConnection):
    """A WebSocket connection that remembers the grant its handshake was admitted with."""

    grant: Grant | None = None


class Session(Subscriber):
    """One connected client: its filters and buffer (Subscriber) plus its socket and grant."""

    __slots__ = ("ws", "grant", "errors", "full_since", "expiry")

    def __init__(self, ws: GatewayConnection, grant: Grant) -> None:
        super().__init__(kinds=grant.kinds)
        self.ws = ws
        self.grant = grant
        self.errors: deque[float] = deque()
        self.full_since: float | None = None
        self.expiry: asyncio.TimerHandle | None = None


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.channels = ChannelMap(Channels(settings.redis_namespace))
        self.router = Router()
        self.stats = Stats()
        self.sessions: set[Session] = set()
        self.policy: Policy | None = None
        self.port = settings.port
        self.probe_channel = f"{settings.redis_namespace}:gateway:probe:{uuid.uuid4().hex[:12]}"
        self._last: dict[str, tuple[str, int]] = {}  # channel -> newest (epoch, offset) relayed
        self._redis: aioredis.Redis | None = None
        self._history: History | None = None
        self._pool: AsyncConnectionPool | None = None
        self._server: Server | None = None
        self._tasks: list[asyncio.Task] = []
        self._database_ok = True
        self._closing = False
        self._subscribed = asyncio.Event()

    # ---------------------------------------------------------------- start / stop
    async def start(self) -> None:
        """Connect to Redis and PostgreSQL (fail fast, naming the fix), then listen."""
        s = self.settings
        # a bounded pool: a burst of subscribes queues for a connection instead of opening hundreds
        pool = aioredis.BlockingConnectionPool.from_url(s.redis_url, max_connections=16, timeout=30,
                                                        socket_connect_timeout=5)
        self._redis = aioredis.Redis(connection_pool=pool)
        try:
            await self._redis.ping()
        except redis.RedisError as exc:
            raise GatewayUnavailable(
                f"Redis at {s.redis_url} is unreachable ({exc}); start it with `make services` or set REDIS_URL"
            ) from exc
        self._history = History(redis.Redis.from_url(s.redis_url, socket_connect_timeout=5, socket_timeout=10))
        self._pool = AsyncConnectionPool(s.database_url, min_size=s.db_pool_min, max_size=s.db_pool_max,
                                         open=False, kwargs={"autocommit": True})
        try:
            await self._pool.open(wait=True, timeout=10)
            async with self._pool.connection() as conn:
                await conn.execute("SELECT 1 FROM ohlcv_1min LIMIT 0")
        except Exception as exc:
            await self._pool.close()
            raise GatewayUnavailable(
                f"PostgreSQL at {s.database_url} is unreachable or not migrated ({exc}); "
                "run `make services migrate` or set DATABASE_URL"
            ) from exc
        self._tasks.append(asyncio.create_task(self._read_forever(), name="redis-reader"))
        try:
            await asyncio.wait_for(self._subscribed.wait(), 10)
        except TimeoutError:
            raise GatewayUnavailable(f"could not subscribe to Redis at {s.redis_url} within 10 s") from None
        self._server = await serve(
            self._handle, s.host, s.port,
            process_request=self._process_request,
            create_connection=GatewayConnection,
            compression=None,  # frames are small and latency matters; deflate costs CPU per client
            ping_interval=s.ping_interval_s,
            ping_timeout=s.ping_timeout_s,
            max_size=s.max_message_bytes,
            max_queue=16,
            server_header="tickstock-gateway",
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.policy = Policy(s.jwt_secret, s.origins(self.port), s.dev_mode)
        self.rest = build_rest(
            self._pool, self.policy, max_bars=s.max_bars, health=self.health, metrics=self.metrics,
            static_dir=str(STATIC_DIR), vendor_dir=str(VENDOR_DIR),
        )
        if not (VENDOR_DIR / "lightweight-charts.standalone.production.js").exists():
            log.warning("the dashboard's chart library is missing from %s: run `make dashboard-assets`", VENDOR_DIR)
        self._tasks.append(asyncio.create_task(self._flush_forever(), name="flusher"))
        self._tasks.append(asyncio.create_task(self._probe_forever(), name="redis-probe"))
        log.info("gateway listening on http://%s:%d (ws: /ws, dashboard: /dashboard/)%s", s.host, self.port,
                 " DEV MODE: no authentication" if s.dev_mode else "")

    def validate(self) -> None:
        """Settings problems that need no server (e.g. a missing secret) fail before connecting."""
        Policy(self.settings.jwt_secret, (), self.settings.dev_mode)

    async def stop(self) -> None:
        """Close clients (1001), stop the tasks, release the pools; each step bounded in time."""
        self._closing = True
        if self._server is not None:
            for session in list(self.sessions):
                asyncio.ensure_future(session.ws.close(protocol.CLOSE_GOING_AWAY, "gateway shutting down"))
            self._server.close()
            await _bounded(self._server.wait_closed(), 15, "closing client connections")
        for task in self._tasks:
            task.cancel()
        await _bounded(asyncio.gather(*self._tasks, return_exceptions=True), 10, "stopping tasks")
        if self._pool is not None:
            await _bounded(self._pool.close(timeout=5), 10, "closing the PostgreSQL pool")
        if self._redis is not None:
            await _bounded(self._redis.aclose(), 5, "closing the Redis pool")

    # ---------------------------------------------------------------- HTTP + handshake
    async def _process_request(self, connection: GatewayConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path != "/ws":
            return await respond_from(self.rest, connection, request)
        assert self.policy is not None
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else (parse_qs(url.query).get("token") or [None])[0]
        try:
            connection.grant = self.policy.admit(token, request.headers.get("Origin"), now=time.time())
        except Refused as exc:
            self.stats.rejected[exc.status] += 1
            return connection.respond(exc.status, exc.reason + "\n")
        return None  # go on with the WebSocket handshake

    # ---------------------------------------------------------------- one client
    async def _handle(self, ws: GatewayConnection) -> None:
        grant = ws.grant
        assert grant is not None
        s = self.settings
        session = Session(ws, grant)
        self.sessions.add(session)
        self.stats.connections += 1
        self.stats.connections_total += 1
        if grant.expires is not None:
            delay = max(0.0, grant.expires - time.time())
            session.expiry = asyncio.get_running_loop().call_later(
                delay, lambda: asyncio.ensure_future(ws.close(protocol.CLOSE_UNAUTHORIZED, "token expired")))
        try:
            await ws.send(protocol.encode({
                "type": "welcome", "protocol": protocol.PROTOCOL_VERSION, "user": grant.user,
                "symbols": sorted(grant.symbols), "kinds": sorted(grant.kinds),
                "batch_interval_ms": s.batch_interval_ms, "dev_mode": s.dev_mode,
            }), text=True)
            async for raw in ws:
                await self._on_message(session, raw)
        except ConnectionClosed:
            pass
        finally:
            if session.expiry is not None:
                session.expiry.cancel()
            self.router.remove(session)
            self.sessions.discard(session)
            self.stats.connections -= 1

    async def _on_message(self, session: Session, raw: str | bytes) -> None:
        try:
            message = protocol.decode_client(raw)
            if isinstance(message, Ping):
                reply = {"type": "pong", "id": message.id, "time": time.time()}
                await session.ws.send(protocol.encode(reply), text=True)
            elif isinstance(message, Subscribe):
                await self._subscribe(session, message)
            elif isinstance(message, Unsubscribe):
                self._unsubscribe(session, message)
                await session.ws.send(protocol.encode(self._state(session, "unsubscribed")), text=True)
        except BadMessage as exc:
            await self._misbehaved(session, "bad_message", str(exc))
        except Refused as exc:
            await session.ws.send(protocol.error("forbidden", exc.reason), text=True)
        except ConnectionClosed:
            raise
        except Exception as exc:  # noqa: BLE001 - our failure (e.g. Redis busy): say so, keep the client
            log.exception("handling a message from %s failed", session.grant.user)
            await session.ws.send(protocol.error("internal", f"the gateway could not handle that: {exc}"), text=True)

    async def _misbehaved(self, session: Session, code: str, text: str) -> None:
        """Say what was wrong; cut a client that keeps sending invalid messages."""
        s = self.settings
        self.stats.client_errors += 1
        now = time.monotonic()
        session.errors.append(now)
        while session.errors and session.errors[0] < now - s.error_window_s:
            session.errors.popleft()
        await session.ws.send(protocol.error(code, text), text=True)
        if len(session.errors) >= s.max_errors:
            self.stats.dropped["misbehaving"] += 1
            await session.ws.close(protocol.CLOSE_MISBEHAVING, f"{len(session.errors)} invalid messages in {s.error_window_s:.0f} s")

    def _state(self, session: Session, kind: str, **extra: object) -> dict:
        return {"type": kind, "symbols": sorted(session.symbols), "kinds": sorted(session.kinds),
                "min_confidence": session.min_confidence, **extra}

    async def _subscribe(self, session: Session, message: Subscribe) -> None:
        grant = session.grant
        forbidden = grant.forbidden_symbols(s for s in message.symbols if s != ALL)
        if ALL in message.symbols and ALL not in grant.symbols:
            forbidden.append(ALL)
        if forbidden:
            raise Refused(f"symbol(s) {', '.join(forbidden)} not allowed by your token")
        if message.kinds is not None:
            refused = sorted(set(message.kinds) - grant.kinds)
            if refused:
                raise Refused(f"kind(s) {', '.join(refused)} not allowed by your token")
        if len(session.symbols | set(message.symbols)) > self.settings.max_symbols:
            raise BadMessage(f"at most {self.settings.max_symbols} symbols per connection (GATEWAY_MAX_SYMBOLS)")
        following = session.symbols | set(message.symbols)
        for channel in message.positions:
            owner = self.channels.channel_symbol(channel)
            if channel != self.channels.indicators and (owner is None or (owner not in following and ALL not in following)):
                raise BadMessage(f"position for {channel!r}, which is not a channel of the symbols subscribed")
        if message.kinds is not None:
            session.kinds = frozenset(message.kinds)
        if message.min_confidence is not None:
            session.min_confidence = message.min_confidence
        self.router.subscribe(session, message.symbols)
        # Positions of the new channels, so a client that gets no message before a disconnect
        # still has somewhere to resume from.
        new_channels = sorted(c for s in message.symbols if s != ALL for c in self.channels.symbol_channels(s, session.kinds))
        positions = await self._positions(new_channels)
        await session.ws.send(protocol.encode(self._state(session, "subscribed", positions=positions)), text=True)
        for channel, position in message.positions.items():
            await self._catch_up(session, channel, position.epoch, position.offset)

    def _unsubscribe(self, session: Session, message: Unsubscribe) -> None:
        self.router.unsubscribe(session, message.symbols)
        if message.kinds:
            session.kinds = session.kinds - set(message.kinds)
            session.pending = {k: m for k, m in session.pending.items() if m.kind in session.kinds}
        if message.symbols:
            gone = set(message.symbols)
            session.pending = {k: m for k, m in session.pending.items() if m.symbol not in gone}

    async def _positions(self, channels: list[str]) -> dict[str, dict]:
        if not channels:
            return {}
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.hmget("history-meta:" + channel, "epoch", "offset")
            replies = await pipe.execute()
        return {c: {"epoch": (e or b"").decode(), "offset": int(o or 0)} for c, (e, o) in zip(channels, replies, strict=True)}

    async def _catch_up(self, session: Session, channel: str, epoch: str, offset: int) -> None:
        """Queue what `session` missed on `channel` since (epoch, offset), or tell it to reset."""
        assert self._history is not None
        missed = await asyncio.to_thread(self._history.since, channel, epoch, offset)
        if not missed.complete:
            self.stats.resets += 1
            session.floor[channel] = max(session.floor.get(channel, 0), missed.offset)
            await session.ws.send(protocol.encode({
                "type": "reset", "channel": channel, "epoch": missed.epoch, "offset": missed.offset,
                "reason": "history gone" if missed.epoch == epoch else "history lost (new epoch)",
            }), text=True)
            return
        self.stats.resumes += 1
        messages = [m for m in (self.channels.parse(channel, raw) for raw in missed.messages) if m is not None]
        everything = ALL in session.symbols
        wanted = [m for m in messages if m.kind in session.kinds and m.confidence >= session.min_confidence
                  and (everything or m.symbol in session.symbols)]
        session.catch_up(channel, missed.offset, wanted)
        self.router.dirty.add(session)

    # ---------------------------------------------------------------- Redis -> buffers
    async def _read_forever(self) -> None:
        assert self._redis is not None
        backoff = 0.5
        first = True
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(*self.channels.patterns())
                await pubsub.subscribe(*self.channels.exact(), self.probe_channel)
                self.stats.redis_connected = True
                if not first:
                    self.stats.redis_reconnects += 1
                    log.warning("redis subscription restored; catching up the channels clients follow")
                    await self._recover_after_outage()
                first = False
                backoff = 0.5
                self._subscribed.set()
                await self._relay(pubsub)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if self.stats.redis_connected:
                    log.error("redis subscription lost (%s); retrying", exc)
                self.stats.redis_connected = False
            finally:
                try:
                    await asyncio.wait_for(pubsub.aclose(), 2)
                except Exception:  # noqa: BLE001 - the connection is gone either way
                    log.debug("closing a broken pubsub failed", exc_info=True)
            if not self._closing:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _relay(self, pubsub: aioredis.client.PubSub) -> None:
        parse, route, stats, last, probe = self.channels.parse, self.router.route, self.stats, self._last, self.probe_channel
        wants = self.router.wants
        channel_symbol = self.channels.channel_symbol
        while True:
            item = await pubsub.get_message(timeout=1.0)
            if item is None:
                continue
            channel = item["channel"].decode()
            data = item["data"]
            if channel == probe:
                stats.redis_lag_s = max(0.0, time.time() - float(data))
                stats.last_probe_at = time.time()
                continue
            stats.received += 1
            symbol = channel_symbol(channel)
            if symbol is not None and not wants(symbol):
                continue
            m = parse(channel, data)
            if m is None:
                continue
            last[channel] = (m.epoch, m.offset)
            if route(m):
                stats.relayed += 1

    async def _recover_after_outage(self) -> None:
        """After the subscription was lost: route what was published meanwhile, or reset clients."""
        assert self._history is not None
        for channel, (epoch, offset) in list(self._last.items()):
            symbol = self.channels.channel_symbol(channel)
            if symbol is not None and not self.router.wants(symbol):
                continue
            missed = await asyncio.to_thread(self._history.since, channel, epoch, offset)
            if missed.complete:
                for raw in missed.messages:
                    m = self.channels.parse(channel, raw)
                    if m is not None:
                        self.router.route(m)
                        self._last[channel] = (missed.epoch, m.offset)
                continue
            reset = protocol.encode({"type": "reset", "channel": channel, "epoch": missed.epoch,
                                     "offset": missed.offset, "reason": "gateway lost its Redis subscription"})
            for session in list(self.sessions):
                if symbol is None or ALL in session.symbols or symbol in session.symbols:
                    session.floor[channel] = missed.offset
                    broadcast([session.ws], reset, text=True)
            self._last[channel] = (missed.epoch, missed.offset)

    async def _probe_forever(self) -> None:
        """Publish our own timestamp: its delay through Redis and our reader is the Redis lag.

        Every 5th probe also checks PostgreSQL, which only REST needs (health says `degraded`).
        """
        assert self._redis is not None and self._pool is not None
        n = 0
        while True:
            await asyncio.sleep(self.settings.probe_interval_s)
            try:
                await self._redis.publish(self.probe_channel, repr(time.time()))
            except redis.RedisError as exc:
                log.debug("probe publish failed: %s", exc)
            n += 1
            if n % 5 == 0:
                try:
                    async with self._pool.connection(timeout=5) as conn:
                        await conn.execute("SELECT 1")
                    self._database_ok = True
                except Exception as exc:  # noqa: BLE001 - any failure means REST cannot answer
                    if self._database_ok:
                        log.error("PostgreSQL check failed: %s", exc)
                    self._database_ok = False

    # ---------------------------------------------------------------- buffers -> sockets
    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.batch_interval_ms / 1000
        due = loop.time()
        while True:
            due += interval
            delay = due - loop.time()
            if delay < 0:  # fell behind (overload): don't burst to catch up
                due, delay = loop.time(), 0
            await asyncio.sleep(delay)
            self.flush()

    def flush(self) -> None:
        """Write every dirty client's buffer as one frame; cut clients whose socket stays full."""
        router, stats, s = self.router, self.stats, self.settings
        dirty, router.dirty = router.dirty, set()
        stats.replaced = router.replaced
        now = time.monotonic()
        for session in dirty:
            ws = session.ws  # type: ignore[attr-defined]
            transport = ws.transport
            if transport is None or transport.is_closing():
                continue
            if transport.get_write_buffer_size() > s.max_buffer_bytes:
                if session.full_since is None:
                    session.full_since = now
                queued = len(session.pending)
                if queued > s.max_queue or now - session.full_since > s.slow_timeout_s:
                    self._cut_slow(session, queued, now - session.full_since)
                else:
                    router.dirty.add(session)  # try again next interval
                continue
            session.full_since = None
            messages = session.take()
            if messages:
                broadcast((ws,), frame(messages), text=True)
                stats.delivered += len(messages)
                stats.frames += 1

    def _cut_slow(self, session: Session, queued: int, full_s: float) -> None:
        self.stats.dropped["slow_consumer"] += 1
        self.router.remove(session)
        reason = f"slow consumer: {queued} messages queued, socket full for {full_s:.1f} s"
        log.warning("cutting %s (%s): %s", session.grant.user, session.ws.remote_address, reason)
        asyncio.ensure_future(session.ws.close(protocol.CLOSE_SLOW_CONSUMER, reason[:120]))
        # The close frame waits behind what is buffered; a client that reads none of it would
        # hold the socket (and websockets' close, which waits for the socket to drain) forever.
        asyncio.get_running_loop().call_later(self.settings.slow_timeout_s, _abort, session.ws)

    # ---------------------------------------------------------------- observability
    def depths(self) -> QueueDepths:
        pending = [len(s.pending) for s in self.sessions]
        buffered = 0
        for s in self.sessions:
            t = s.ws.transport
            if t is not None and not t.is_closing():
                buffered += t.get_write_buffer_size()
        return QueueDepths(sum(pending), max(pending, default=0), buffered)

    def health(self) -> dict:
        return health(self.stats, database_ok=self._database_ok, now=time.time(),
                      probe_interval_s=self.settings.probe_interval_s)

    def metrics(self) -> bytes:
        return exposition(self.stats, self.depths)


async def _bounded(awaitable, timeout_s: float, what: str) -> None:
    try:
        await asyncio.wait_for(awaitable, timeout_s)
    except TimeoutError:
        log.warning("%s took longer than %.0f s; going on", what, timeout_s)


def _abort(ws: ServerConnection) -> None:
    transport = ws.transport
    if transport is not None and not transport.is_closing():
        log.warning("aborting %s: it did not read up to its close frame", ws.remote_address)
        transport.abort()
