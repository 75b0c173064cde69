"""The gateway process: one Redis subscription fanned out to WebSocket clients, plus REST, on one port.

Wiring and the front door; each decision lives in its own module:

- server.py (here): start (fail fast, naming the fix) and stop, the HTTP/WebSocket handshake
  and routing: `/ws` upgrades to a WebSocket after the connection limit, token and Origin
  checks; every other request (REST, /healthz, /metrics, /openapi.json, the dashboard) is answered
  from `process_request` by the FastAPI app (rest.py) through asgi.py.
- session.py: one client's session and the protocol with it (protocol.py for the messages).
- relay.py: the Redis subscription, reconnects, recovery and clients' catch-up from history;
  fanout.py: which client wants which message.
- flush.py: per-client buffers to sockets every `batch_interval_ms`; slow clients are cut.
- probe.py: Redis lag and PostgreSQL checks; metrics.py: counters, health and /metrics.
- supervision.py: every background task (Redis reader, flusher, probe) restarted if it dies.
- auth.py: tokens, grants and admission; errors.py: the error family.

Work per client request is bounded: symbols and positions per message (protocol.py), symbols
per connection, messages per second (a token bucket), and a resume's replay counts against the
client's queue (GATEWAY_MAX_QUEUE): one that would exceed it gets a `reset` instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.backoff import NoBackoff
from redis.retry import Retry
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from connectors.gateway import protocol
from connectors.gateway.asgi import respond_from
from connectors.gateway.auth import Policy, Refused
from connectors.gateway.errors import REDIS_ERRORS, CannotListen, GatewayUnavailable, Unavailable, brief
from connectors.gateway.fanout import ChannelMap, Router
from connectors.gateway.flush import Flusher
from connectors.gateway.metrics import Stats, exposition, health, readiness
from connectors.gateway.probe import Probe
from connectors.gateway.relay import Relay
from connectors.gateway.rest import build_rest
from connectors.gateway.session import Clients, GatewayConnection, Session
from connectors.gateway.settings import GatewaySettings, redact_url
from connectors.gateway.supervision import Supervisor, detach
from connectors.postgres import watchlists as stored_watchlists
from connectors.postgres.watchlists import Watchlist
from connectors.redis.history import History
from schemas.channels import Channels
from schemas.watchlists import WatchlistChange, encode_change

log = logging.getLogger("tickstock.gateway")

STATIC_DIR = Path(__file__).with_name("static")
# The dashboard's chart library, part of the package (infra/dashboard.sh copies it here from npm; the wheel ships it).
VENDOR_DIR = Path(__file__).with_name("vendor")


class Gateway:
    """One gateway: built from settings, `start`ed (connected and listening), `stop`ped.

    `sessions` are the connected clients' sessions; the parts that need a connection exist once
    started: `relay`, `clients` (the protocol with each session), `flusher`, `probe`, `policy`, `rest`.
    """

    relay: Relay
    clients: Clients
    flusher: Flusher
    probe: Probe
    rest: FastAPI
    _history: History

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.channels = ChannelMap(Channels(settings.redis_namespace), max_bytes=settings.max_relay_bytes)
        self.router: Router[Session] = Router()
        self.stats = Stats(dev_mode=settings.dev_mode)
        self.stats.ignored = self.channels.ignored  # one counter, read by health and metrics
        self.sessions: set[Session] = set()
        self.supervisor = Supervisor(self.stats)
        self.policy: Policy | None = None
        self.port = settings.port
        self.probe_channel = f"{settings.redis_namespace}:gateway:probe:{uuid.uuid4().hex[:12]}"
        self._redis: aioredis.Redis | None = None
        self._pool: AsyncConnectionPool | None = None
        self._server: Server | None = None

    # ---------------------------------------------------------------- start / stop
    async def start(self) -> None:
        """Connect to Redis and PostgreSQL (fail fast, naming the fix), then listen."""
        s = self.settings
        redis_at = redact_url(s.redis_url)
        # a bounded pool: a burst of subscribes queues for a connection instead of opening hundreds
        pool = aioredis.BlockingConnectionPool.from_url(s.redis_url, max_connections=16, timeout=30, socket_connect_timeout=5)
        self._redis = aioredis.Redis(connection_pool=pool)
        try:
            await self._redis.ping()
        except REDIS_ERRORS as exc:
            raise GatewayUnavailable(
                f"Redis at {redis_at} is unreachable ({brief(exc)}); start it with `make services` or set REDIS_URL"
            ) from None
        # no retries inside redis-py (it would wait out a LOADING Redis for many seconds, holding the
        # reader): the gateway's own loops retry, with backoff, and report
        history = History(
            redis.Redis.from_url(s.redis_url, socket_connect_timeout=5, socket_timeout=10, retry=Retry(NoBackoff(), 0))
        )
        options = f"-c statement_timeout={int(s.db_statement_timeout_s * 1000)}"
        self._pool = AsyncConnectionPool(
            s.database_url,
            min_size=s.db_pool_min,
            max_size=s.db_pool_max,
            open=False,
            check=AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": 5, "options": options},
        )
        try:
            await self._pool.open(wait=True, timeout=10)
            async with self._pool.connection() as conn:
                await conn.execute("SELECT 1 FROM ohlcv_1min LIMIT 0")
        except Exception as exc:  # noqa: BLE001 - any failure here means the same: not usable
            await self._pool.close()
            raise GatewayUnavailable(
                f"PostgreSQL at {redact_url(s.database_url)} is unreachable or not migrated ({brief(exc)}); "
                "run `make services migrate` or set DATABASE_URL"
            ) from None
        self.relay = Relay(
            s,
            self.channels,
            self.router,
            self.stats,
            redis=self._redis,
            history=history,
            sessions=self.sessions,
            probe_channel=self.probe_channel,
            closing=lambda: self.supervisor.closing,
        )
        self._history = history
        self.clients = Clients(
            s, self.channels, self.router, self.relay, self.stats, self.sessions, read_watchlist=self.read_watchlist
        )
        self.relay.watchlist_changed = self.clients.on_watchlist
        self.relay.watchlists_lost = self.clients.resync_watchlists
        self.flusher = Flusher(s, self.router, self.stats, self.sessions)
        self.probe = Probe(self._redis, self._pool, self.stats, channel=self.probe_channel, interval_s=s.probe_interval_s)
        self.supervisor.start("redis-reader", self.relay.subscribe_forever)
        try:
            await asyncio.wait_for(self.relay.subscribed.wait(), 10)
        except TimeoutError:
            await self.supervisor.cancel()
            raise GatewayUnavailable(f"could not subscribe to Redis at {redis_at} within 10 s") from None
        try:
            self._server = await serve(
                self.clients.serve,
                s.host,
                s.port,
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
            await self.supervisor.cancel()
            await self._pool.close()
            raise CannotListen(
                f"cannot listen on {s.host}:{s.port} ({exc.strerror or exc}); set GATEWAY_HOST / GATEWAY_PORT"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        self.policy = self.make_policy(s.origins(self.port))
        self.rest = build_rest(
            self._pool,
            self.policy,
            max_bars=s.max_bars,
            health=self.health,
            readiness=self.readiness,
            metrics=self.metrics,
            static_dir=str(STATIC_DIR),
            vendor_dir=str(VENDOR_DIR),
            db_timeout_s=s.db_timeout_s,
            on_database_error=self.probe.database_failed,
            announce=self.announce,
        )
        if not (VENDOR_DIR / "lightweight-charts.standalone.production.js").exists():
            log.warning(
                "the dashboard's chart library is missing from %s: run `make dashboard-assets` in a checkout; "
                "an installed wheel carries it (setup.py)",
                VENDOR_DIR,
            )
        self.supervisor.start("flusher", self.flusher.flush_forever)
        self.supervisor.start("redis-probe", self.probe.probe_forever)
        log.info(
            "gateway listening on http://%s:%d (ws: /ws, dashboard: /dashboard/)%s",
            s.host,
            self.port,
            " DEV MODE: no authentication" if s.dev_mode else "",
        )

    # ---------------------------------------------------------------- watchlists
    async def read_watchlist(self, user: str, name: str) -> Watchlist | None:
        """A user's stored list for a session's subscribe; PostgreSQL down is Unavailable (the client is told)."""
        assert self._pool is not None
        try:
            async with self._pool.connection(timeout=self.settings.db_timeout_s) as conn:
                return await stored_watchlists.watchlist(conn, user, name)
        except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.probe.database_failed()
            log.warning("PostgreSQL failed reading a watchlist: %s", brief(exc))
            raise Unavailable("PostgreSQL is unavailable: could not read the watchlist; send the same subscribe again") from None

    async def announce(self, change: WatchlistChange) -> bool:
        """Publish a stored change on the watchlist channel (with its history); False if Redis refused."""
        try:
            await asyncio.to_thread(self._history.publish, [(self.channels.channels.watchlist, encode_change(change))])
        except REDIS_ERRORS as exc:
            self.stats.redis_errors += 1
            self.stats.watchlist_unannounced += 1
            log.warning("could not announce a watchlist change of %s: %s", change.user[:60], brief(exc))
            return False
        return True

    def make_policy(self, origins: list[str] | tuple[str, ...] = ()) -> Policy:
        s = self.settings
        return Policy(
            s.jwt_secret,
            origins,
            s.dev_mode,
            audience=s.jwt_audience,
            issuer=s.jwt_issuer,
            leeway_s=s.jwt_leeway_s,
            max_lifetime_s=s.max_token_lifetime_s,
        )

    def validate(self) -> None:
        """Settings problems that need no server (e.g. a missing secret) fail before connecting."""
        self.make_policy()

    async def stop(self) -> None:
        """Close clients (1001), stop the tasks, release the pools; each step bounded in time."""
        self.supervisor.closing = True
        if self._server is not None:
            for session in list(self.sessions):
                detach(session.ws.close(protocol.CLOSE_GOING_AWAY, "gateway shutting down"))
            self._server.close()
            await _bounded(self._server.wait_closed(), 15, "closing client connections")
        await _bounded(self.supervisor.cancel(), 10, "stopping tasks")
        if self._pool is not None:
            await _bounded(self._pool.close(timeout=5), 10, "closing the PostgreSQL pool")
        if self._redis is not None:
            await _bounded(self._redis.aclose(), 5, "closing the Redis pool")

    # ---------------------------------------------------------------- HTTP + handshake
    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path != "/ws":
            return await respond_from(self.rest, connection, request)
        assert self.policy is not None and isinstance(connection, GatewayConnection)
        try:
            if len(self.sessions) >= self.settings.max_connections:
                raise Refused(
                    f"too many connections ({self.settings.max_connections}, GATEWAY_MAX_CONNECTIONS); retry later", 503
                )
            connection.grant = self.policy.admit_request(
                authorization=request.headers.get_all("Authorization"),
                tokens=parse_qs(url.query, keep_blank_values=True).get("token", []),
                origins=request.headers.get_all("Origin"),
                now=time.time(),
            )
        except Refused as exc:
            self.stats.rejected[exc.status] += 1
            return connection.respond(exc.status, exc.reason + "\n")
        return None  # go on with the WebSocket handshake

    # ---------------------------------------------------------------- observability
    def health(self) -> dict:
        return health(
            self.stats, database_ok=self.probe.database_ok, now=time.time(), probe_interval_s=self.settings.probe_interval_s
        )

    def readiness(self) -> dict:
        return readiness(
            self.stats, database_ok=self.probe.database_ok, now=time.time(), probe_interval_s=self.settings.probe_interval_s
        )

    def metrics(self) -> bytes:
        return exposition(self.stats, self.flusher.depths, lambda: bool(self.readiness()["ready"]))


async def _bounded(awaitable: Awaitable[object], timeout_s: float, what: str) -> None:
    try:
        await asyncio.wait_for(awaitable, timeout_s)
    except TimeoutError:
        log.warning("%s took longer than %.0f s; going on", what, timeout_s)
