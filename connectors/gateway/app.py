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
- Every background task (Redis reader, flusher, probe) runs under `_supervise`: if it dies it is
  logged, counted and restarted with capped, jittered backoff, and /healthz shows it meanwhile.
  Redis failures of any kind (down, LOADING, OOM, READONLY, MISCONF) are retried with backoff;
  on a client's behalf a few times, then the client gets an `unavailable` error and nothing of
  its request is half-applied.
- Work per client request is bounded: symbols and positions per message (protocol.py), symbols
  per connection, messages per second (a token bucket), and a resume's replay counts against
  the client's queue (GATEWAY_MAX_QUEUE): one that would exceed it gets a `reset` instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import redis
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool
from redis.backoff import NoBackoff
from redis.retry import Retry
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from connectors.gateway import protocol
from connectors.gateway.asgi import respond_from
from connectors.gateway.auth import Grant, Policy, Refused
from connectors.gateway.fanout import ChannelMap, Router, Subscriber, frame
from connectors.gateway.metrics import QueueDepths, Stats, exposition, health
from connectors.gateway.protocol import ALL, BadMessage, Ping, Subscribe, Unsubscribe
from connectors.gateway.rest import build_rest
from connectors.gateway.settings import GatewaySettings, redact_url
from connectors.redis.history import History
from schemas.channels import Channels

log = logging.getLogger("tickstock.gateway")

STATIC_DIR = Path(__file__).with_name("static")
VENDOR_DIR = Path(__file__).resolve().parents[2] / "infra" / "dashboard" / "node_modules" / "lightweight-charts" / "dist"


class GatewayUnavailable(RuntimeError):
    """A dependency is unreachable at start (or the address cannot be bound): the message names it and the fix."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Unavailable(Exception):
    """Redis failed on a client's behalf after retries; the client is told, nothing half-applied."""


REDIS_ERRORS = (redis.RedisError, OSError)  # every Redis failure redis-py raises (ConnectionError, ResponseError: OOM, READONLY, MISCONF, LOADING, ...)


class Backoff:
    """Capped exponential backoff with full jitter (no overflow however many attempts)."""

    def __init__(self, first_s: float, cap_s: float) -> None:
        self.first_s, self.cap_s, self.attempts = first_s, cap_s, 0

    def next(self) -> float:
        delay = min(self.cap_s, self.first_s * 2 ** min(self.attempts, 30))
        self.attempts += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempts = 0


class GatewayConnection(ServerConnection):
    """A WebSocket connection that remembers the grant its handshake was admitted with."""

    grant: Grant | None = None


class Session(Subscriber):
    """One connected client: its filters and buffer (Subscriber) plus its socket and grant."""

    __slots__ = ("ws", "grant", "errors", "full_since", "expiry", "busy", "tokens", "refilled")

    def __init__(self, ws: GatewayConnection, grant: Grant, max_errors: int = 10, burst: int = 50) -> None:
        super().__init__(kinds=grant.kinds)
        self.ws = ws
        self.grant = grant
        self.errors: deque[float] = deque(maxlen=max_errors)
        self.full_since: float | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.busy = False  # a subscribe is reading Redis: hold its frames so replies and replay go first
        self.tokens = float(burst)  # rate limit: a token bucket
        self.refilled = time.monotonic()

    def take_token(self, rate_per_s: float, burst: int, now: float) -> bool:
        self.tokens = min(float(burst), self.tokens + (now - self.refilled) * rate_per_s)
        self.refilled = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.channels = ChannelMap(Channels(settings.redis_namespace), max_bytes=settings.max_relay_bytes)
        self.router = Router()
        self.stats = Stats(dev_mode=settings.dev_mode)
        self.stats.ignored = self.channels.ignored  # one counter, read by health and metrics
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
        self._subscribed_once = False

    # ---------------------------------------------------------------- start / stop
    async def start(self) -> None:
        """Connect to Redis and PostgreSQL (fail fast, naming the fix), then listen."""
        s = self.settings
        redis_at = redact_url(s.redis_url)
        # a bounded pool: a burst of subscribes queues for a connection instead of opening hundreds
        pool = aioredis.BlockingConnectionPool.from_url(s.redis_url, max_connections=16, timeout=30,
                                                        socket_connect_timeout=5)
        self._redis = aioredis.Redis(connection_pool=pool)
        try:
            await self._redis.ping()
        except REDIS_ERRORS as exc:
            raise GatewayUnavailable(
                f"Redis at {redis_at} is unreachable ({_brief(exc)}); start it with `make services` or set REDIS_URL"
            ) from None
        # no retries inside redis-py (it would wait out a LOADING Redis for many seconds, holding the
        # reader): the gateway's own loops retry, with backoff, and report
        self._history = History(redis.Redis.from_url(s.redis_url, socket_connect_timeout=5, socket_timeout=10,
                                                     retry=Retry(NoBackoff(), 0)))
        options = f"-c statement_timeout={int(s.db_statement_timeout_s * 1000)}"
        self._pool = AsyncConnectionPool(s.database_url, min_size=s.db_pool_min, max_size=s.db_pool_max,
                                         open=False, check=AsyncConnectionPool.check_connection,
                                         kwargs={"autocommit": True, "connect_timeout": 5, "options": options})
        try:
            await self._pool.open(wait=True, timeout=10)
            async with self._pool.connection() as conn:
                await conn.execute("SELECT 1 FROM ohlcv_1min LIMIT 0")
        except Exception as exc:  # noqa: BLE001 - any failure here means the same: not usable
            await self._pool.close()
            raise GatewayUnavailable(
                f"PostgreSQL at {redact_url(s.database_url)} is unreachable or not migrated ({_brief(exc)}); "
                "run `make services migrate` or set DATABASE_URL"
            ) from None
        self._supervise("redis-reader", self._read_forever)
        try:
            await asyncio.wait_for(self._subscribed.wait(), 10)
        except TimeoutError:
            await self._cancel_tasks()
            raise GatewayUnavailable(f"could not subscribe to Redis at {redis_at} within 10 s") from None
        try:
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
        except OSError as exc:
            await self._cancel_tasks()
            await self._pool.close()
            raise GatewayUnavailable(f"cannot listen on {s.host}:{s.port} ({exc.strerror or exc}); "
                                     "set GATEWAY_HOST / GATEWAY_PORT", exit_code=2) from None
        self.port = self._server.sockets[0].getsockname()[1]
        self.policy = self.make_policy(s.origins(self.port))
        self.rest = build_rest(
            self._pool, self.policy, max_bars=s.max_bars, health=self.health, metrics=self.metrics,
            static_dir=str(STATIC_DIR), vendor_dir=str(VENDOR_DIR), db_timeout_s=s.db_timeout_s,
            on_database_error=self._on_database_error,
        )
        if not (VENDOR_DIR / "lightweight-charts.standalone.production.js").exists():
            log.warning("the dashboard's chart library is missing from %s: run `make dashboard-assets`", VENDOR_DIR)
        self._supervise("flusher", self._flush_forever)
        self._supervise("redis-probe", self._probe_forever)
        log.info("gateway listening on http://%s:%d (ws: /ws, dashboard: /dashboard/)%s", s.host, self.port,
                 " DEV MODE: no authentication" if s.dev_mode else "")

    def make_policy(self, origins: list[str] | tuple[str, ...] = ()) -> Policy:
        s = self.settings
        return Policy(s.jwt_secret, origins, s.dev_mode, audience=s.jwt_audience, issuer=s.jwt_issuer,
                      leeway_s=s.jwt_leeway_s, max_lifetime_s=s.max_token_lifetime_s)

    def validate(self) -> None:
        """Settings problems that need no server (e.g. a missing secret) fail before connecting."""
        self.make_policy()

    def _on_database_error(self) -> None:
        self.stats.database_errors += 1
        self._database_ok = False

    # ---------------------------------------------------------------- supervision
    def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run` as a background task for the gateway's lifetime, restarting it if it dies."""
        self._tasks.append(asyncio.create_task(self._supervisor(name, run), name=name))

    async def _supervisor(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        state = self.stats.task(name)
        backoff = Backoff(0.2, 10.0)
        while not self._closing:
            state.running = True
            started = time.monotonic()
            try:
                await run()
                if self._closing:
                    break
                raise RuntimeError("returned")  # these tasks run forever: returning is a failure too
            except asyncio.CancelledError:
                state.running = False
                raise
            except Exception as exc:  # noqa: BLE001 - supervision: any failure is logged, counted, restarted
                state.running = False
                state.restarts += 1
                state.last_error = type(exc).__name__
                state.last_error_at = time.time()
                if time.monotonic() - started > 60:
                    backoff.reset()  # it ran a good while: a fresh failure, start backing off anew
                delay = backoff.next()
                log.error("background task %s died (%s: %s); restart %d in %.1f s", name, type(exc).__name__,
                          _brief(exc), state.restarts, delay, exc_info=exc)
                await asyncio.sleep(delay)
        state.running = False

    async def _cancel_tasks(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Close clients (1001), stop the tasks, release the pools; each step bounded in time."""
        self._closing = True
        if self._server is not None:
            for session in list(self.sessions):
                asyncio.ensure_future(session.ws.close(protocol.CLOSE_GOING_AWAY, "gateway shutting down"))
            self._server.close()
            await _bounded(self._server.wait_closed(), 15, "closing client connections")
        await _bounded(self._cancel_tasks(), 10, "stopping tasks")
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
        try:
            if len(self.sessions) >= self.settings.max_connections:
                raise Refused(f"too many connections ({self.settings.max_connections}, GATEWAY_MAX_CONNECTIONS); "
                              "retry later", 503)
            auth = _one_header(request, "Authorization") or ""
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            if token is None:
                tokens = parse_qs(url.query).get("token") or []
                if len(tokens) > 1:
                    raise Refused("`token` given more than once", 400)
                token = tokens[0] if tokens else None
            connection.grant = self.policy.admit(token, _one_header(request, "Origin"), now=time.time())
        except Refused as exc:
            self.stats.rejected[exc.status] += 1
            return connection.respond(exc.status, exc.reason + "\n")
        return None  # go on with the WebSocket handshake

    # ---------------------------------------------------------------- one client
    async def _handle(self, ws: GatewayConnection) -> None:
        grant = ws.grant
        assert grant is not None
        s = self.settings
        session = Session(ws, grant, max_errors=s.max_errors, burst=s.rate_burst)
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
                "limits": {"max_symbols": s.max_symbols, "max_queue": s.max_queue, "max_message_bytes": s.max_message_bytes,
                           "rate_limit_per_s": s.rate_limit_per_s, "rate_burst": s.rate_burst,
                           "max_symbols_per_message": protocol.MAX_SYMBOLS_PER_MESSAGE},
            }), text=True)
            async for raw in ws:
                await self._on_message(session, raw)
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - never let one client's failure escape into the server
            self.stats.internal_errors += 1
            log.exception("connection of %s failed", grant.user)
        finally:
            if session.expiry is not None:
                session.expiry.cancel()
            self.router.remove(session)
            self.sessions.discard(session)
            self.stats.connections -= 1

    async def _on_message(self, session: Session, raw: str | bytes) -> None:
        s = self.settings
        if session.ws.state is not State.OPEN:  # closing (e.g. cut for misbehaving): read no further
            return
        if not session.take_token(s.rate_limit_per_s, s.rate_burst, time.monotonic()):
            self.stats.rate_limited += 1
            await self._misbehaved(session, "rate_limited", f"more than {s.rate_limit_per_s:g} messages/s "
                                   f"(burst {s.rate_burst}, GATEWAY_RATE_LIMIT_PER_S): message ignored, slow down")
            return
        try:
            if not isinstance(raw, str):
                raise BadMessage(protocol.BINARY_FRAME)
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
        except Unavailable as exc:
            await session.ws.send(protocol.error("unavailable", str(exc)), text=True)
        except ConnectionClosed:
            raise
        except Exception:  # noqa: BLE001 - our failure: log it with a reference, tell the client only that
            ref = uuid.uuid4().hex[:12]
            self.stats.internal_errors += 1
            log.exception("handling a message from %s failed (ref %s)", session.grant.user, ref)
            await session.ws.send(protocol.error("internal", f"the gateway could not handle that (ref {ref}); "
                                                 "nothing was changed"), text=True)

    async def _misbehaved(self, session: Session, code: str, text: str) -> None:
        """Say what was wrong; cut a client that keeps sending invalid messages."""
        s = self.settings
        self.stats.client_errors += 1
        now = time.monotonic()
        session.errors.append(now)  # a deque of at most max_errors times
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
        """Check, apply, read positions and history, reply; on a Redis failure undo and say so."""
        grant = session.grant
        forbidden = grant.forbidden_symbols(s for s in message.symbols if s != ALL)
        if ALL in message.symbols and ALL not in grant.symbols:
            forbidden.append(ALL)
        if forbidden:
            raise Refused(f"symbol(s) {', '.join(forbidden[:20])}{' ...' if len(forbidden) > 20 else ''} not allowed by your token")
        if message.kinds is not None:
            refused = sorted(set(message.kinds) - grant.kinds)
            if refused:
                raise Refused(f"kind(s) {', '.join(refused)} not allowed by your token")
        new_symbols = [s for s in message.symbols if s not in session.symbols]
        if len(session.symbols) + len(new_symbols) > self.settings.max_symbols:
            raise BadMessage(f"at most {self.settings.max_symbols} symbols per connection (GATEWAY_MAX_SYMBOLS)")
        following = session.symbols | set(message.symbols)
        for channel in message.positions:
            owner = self.channels.channel_symbol(channel)
            if channel != self.channels.indicators and (owner is None or (owner not in following and ALL not in following)):
                raise BadMessage(f"position for {protocol.safe_text(repr(channel))}, which is not a channel of the symbols subscribed")
        before = (session.kinds, session.min_confidence)
        if message.kinds is not None:
            session.kinds = frozenset(message.kinds)
        if message.min_confidence is not None:
            session.min_confidence = message.min_confidence
        session.busy = True  # nothing of this session is written until the reply and replay are queued
        self.router.subscribe(session, new_symbols)
        try:
            # Positions of the new channels, so a client that gets no message before a disconnect
            # still has somewhere to resume from.
            new_channels = sorted(c for s in message.symbols if s != ALL for c in self.channels.symbol_channels(s, session.kinds))
            positions = await self._retrying(lambda: self._positions(new_channels), "read channel positions")
            catch_ups = await self._retrying(lambda: self._read_missed(session, message.positions), "read channel history")
        except Unavailable:
            self.router.unsubscribe(session, new_symbols)
            gone = set(new_symbols)
            session.pending = {k: m for k, m in session.pending.items() if m.symbol not in gone}
            session.kinds, session.min_confidence = before
            session.busy = False
            raise
        try:
            await session.ws.send(protocol.encode(self._state(session, "subscribed", positions=positions)), text=True)
            for reply in catch_ups:
                await session.ws.send(protocol.encode(reply), text=True)
        finally:
            session.busy = False
            self.router.dirty.add(session)

    async def _retrying(self, read: Callable[[], Awaitable], what: str):
        """`read()` with a few quick retries on a Redis failure, then Unavailable (no exception text to the client)."""
        backoff = Backoff(0.1, 1.0)
        for attempt in range(4):
            try:
                return await read()
            except REDIS_ERRORS as exc:
                self.stats.redis_errors += 1
                log.warning("redis: could not %s (attempt %d): %s", what, attempt + 1, _brief(exc))
                if attempt < 3:
                    await asyncio.sleep(backoff.next())
        raise Unavailable(f"Redis is unavailable: could not {what}; nothing was changed, send the same subscribe again")

    def _unsubscribe(self, session: Session, message: Unsubscribe) -> None:
        self.router.unsubscribe(session, message.symbols)
        if message.kinds:
            session.kinds = session.kinds - set(message.kinds)
            session.pending = {k: m for k, m in session.pending.items() if m.kind in session.kinds}
        if message.symbols:
            gone = set(message.symbols)
            session.pending = {k: m for k, m in session.pending.items() if m.symbol not in gone}
            session.replay = [m for m in session.replay if m.symbol not in gone]
            symbol_of = self.channels.channel_symbol
            session.floor = {c: o for c, o in session.floor.items() if symbol_of(c) not in gone}

    async def _positions(self, channels: list[str]) -> dict[str, dict]:
        """Each channel's current (epoch, offset); a channel whose meta is unreadable counts as new."""
        if not channels:
            return {}
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.hmget("history-meta:" + channel, "epoch", "offset")
            replies = await pipe.execute()
        return {c: _position(e, o) for c, (e, o) in zip(channels, replies, strict=True)}

    async def _read_missed(self, session: Session, wanted: dict[str, protocol.Position]) -> list[dict]:
        """Queue what `session` missed on each channel of `wanted`; the resets to send for the others.

        The replay is counted against the client's queue (GATEWAY_MAX_QUEUE): a channel whose
        missed messages do not fit gets a reset, without reading its history. Nothing of the
        session changes until every read succeeded (a Redis failure may retry all of it).
        """
        if not wanted:
            return []
        assert self._history is not None
        channels = sorted(wanted)
        current = await self._positions(channels)
        budget = self.settings.max_queue - session.queued()
        resets: list[tuple[str, str, int, str]] = []
        queued: list[tuple[str, int, list]] = []
        for channel in channels:
            epoch, offset = wanted[channel].epoch, wanted[channel].offset
            now_epoch, top = current[channel]["epoch"], current[channel]["offset"]
            too_many = f"too many missed messages for your queue (GATEWAY_MAX_QUEUE={self.settings.max_queue})"
            if now_epoch == epoch and 0 <= top - offset and top - offset > budget:
                resets.append((channel, now_epoch, top, too_many))
                continue
            missed = await asyncio.to_thread(self._history.since, channel, epoch, offset)
            if not missed.complete:
                reason = "history gone" if missed.epoch == epoch else "history lost (new epoch)"
                resets.append((channel, missed.epoch, missed.offset, reason))
                continue
            messages = [m for m in (self.channels.parse(channel, raw) for raw in missed.messages) if m is not None]
            if len(messages) > budget:
                resets.append((channel, missed.epoch, missed.offset, too_many))
                continue
            budget -= len(messages)
            queued.append((channel, missed.offset, messages))
        everything = ALL in session.symbols
        for channel, offset, messages in queued:
            self.stats.resumes += 1
            wanted_messages = [m for m in messages if m.kind in session.kinds and m.confidence >= session.min_confidence
                               and (everything or m.symbol in session.symbols)]
            session.catch_up(channel, offset, wanted_messages)
        replies = []
        for channel, epoch, offset, reason in resets:
            self.stats.resets += 1
            session.floor[channel] = max(session.floor.get(channel, 0), offset)
            replies.append({"type": "reset", "channel": channel, "epoch": epoch, "offset": offset, "reason": reason})
        return replies

    # ---------------------------------------------------------------- Redis -> buffers
    async def _read_forever(self) -> None:
        """Keep the pattern subscription up: any Redis failure is retried with capped, jittered backoff.

        Anything else propagates to the supervisor (logged, counted, restarted).
        """
        assert self._redis is not None
        backoff = Backoff(0.5, 10.0)
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(*self.channels.patterns())
                await pubsub.subscribe(*self.channels.exact(), self.probe_channel)
                self.stats.redis_connected = True
                if self._subscribed_once:
                    self.stats.redis_reconnects += 1
                    log.warning("redis subscription restored; catching up the channels clients follow")
                    await self._recover_after_outage()
                self._subscribed_once = True
                backoff.reset()
                self._subscribed.set()
                await self._relay(pubsub)
            except REDIS_ERRORS as exc:
                if self.stats.redis_connected:
                    log.error("redis subscription lost (%s); retrying with backoff", _brief(exc))
                else:
                    log.warning("redis subscription still down (%s)", _brief(exc))
            finally:
                self.stats.redis_connected = False
                try:
                    await asyncio.wait_for(pubsub.aclose(), 2)
                except Exception as exc:  # noqa: BLE001 - the connection is gone either way
                    log.debug("closing a broken pubsub failed: %s", _brief(exc))
            if not self._closing:
                await asyncio.sleep(backoff.next())

    async def _relay(self, pubsub: aioredis.client.PubSub) -> None:
        parse, route, stats, last, probe = self.channels.parse, self.router.route, self.stats, self._last, self.probe_channel
        wants = self.router.wants
        channel_symbol = self.channels.channel_symbol
        ignored = self.channels.ignored
        cap = self.settings.max_tracked_channels
        while True:
            item = await pubsub.get_message(timeout=1.0)
            if item is None:
                continue
            try:
                raw_channel, data = item["channel"], item["data"]
                channel = raw_channel.decode() if type(raw_channel) is bytes else str(raw_channel)
            except UnicodeDecodeError:
                stats.received += 1
                ignored["channel name not UTF-8"] += 1
                continue
            if channel == probe:
                try:
                    sent = float(data)
                except (TypeError, ValueError):
                    ignored["unreadable probe"] += 1
                    continue
                stats.redis_lag_s = min(max(0.0, time.time() - sent), 86_400.0)
                stats.last_probe_at = time.time()
                continue
            stats.received += 1
            try:
                symbol = channel_symbol(channel)
                if symbol is not None and not wants(symbol):
                    continue
                m = parse(channel, data)
                if m is None:
                    continue
                if channel in last:
                    del last[channel]  # re-inserted last: the dict's order is least recently updated first
                elif len(last) >= cap:
                    del last[next(iter(last))]
                    stats.channels_forgotten += 1
                last[channel] = (m.epoch, m.offset)
                if route(m):
                    stats.relayed += 1
            except Exception:  # noqa: BLE001 - one message must never stop the relay (and it is not redelivered)
                ignored["internal error"] += 1
                log.exception("relaying a message on %r failed; skipped", channel[:200])

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
            kinds = self.channels.channel_kinds(channel)
            for session in list(self.sessions):
                if (symbol is None or ALL in session.symbols or symbol in session.symbols) and session.kinds & kinds:
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
            except REDIS_ERRORS as exc:
                log.debug("probe publish failed: %s", _brief(exc))
            n += 1
            if n % 5 == 0:
                try:
                    async with self._pool.connection(timeout=5) as conn:
                        await conn.execute("SELECT 1")
                    self._database_ok = True
                except Exception as exc:  # noqa: BLE001 - any failure means REST cannot answer
                    if self._database_ok:
                        log.error("PostgreSQL check failed: %s", _brief(exc))
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
            if session.busy:  # a subscribe is reading Redis: its reply and replay go first
                router.dirty.add(session)
                continue
            ws = session.ws  # type: ignore[attr-defined]
            transport = ws.transport
            if transport is None or transport.is_closing():
                continue
            if transport.get_write_buffer_size() > s.max_buffer_bytes:
                if session.full_since is None:
                    session.full_since = now
                queued = session.queued()
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
        pending = [s.queued() for s in self.sessions]
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


def _brief(exc: BaseException) -> str:
    """An exception for a log line: its type and first line, bounded (no traceback, no URL with a password)."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _position(epoch: object, offset: object) -> dict:
    """A history-meta reply as a position; unreadable values (not ours) count as no history."""
    try:
        e = epoch.decode() if isinstance(epoch, bytes) else ""
        o = int(offset) if offset is not None else 0
    except (UnicodeDecodeError, ValueError):
        return {"epoch": "", "offset": 0}
    if not 0 <= o <= protocol.INT64_MAX or len(e) > protocol.MAX_EPOCH_LENGTH:
        return {"epoch": "", "offset": 0}
    return {"epoch": e, "offset": o}


def _one_header(request: Request, name: str) -> str | None:
    values = request.headers.get_all(name)
    if len(values) > 1:
        raise Refused(f"more than one {name} header", 400)
    return values[0] if values else None


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
