"""One client session: its subscriptions and filters, its limits, and the conversation over its socket.

A `Session` is a `fanout.Subscriber` (watchlist, kinds, minimum confidence, unsent messages)
plus what belongs to one connection: its socket, the grant its handshake was admitted with, a
token bucket for its message rate and the times of its recent invalid messages.

`Clients` holds the connected sessions and speaks the protocol (protocol.py) with each one:
welcome, subscribe (checked against the grant, then the new channels' positions and the missed
messages of a resume read from Redis by the relay), unsubscribe and ping. Every bad message
gets an `error` reply; a client that keeps sending them, or sends too fast, is cut. A Redis
failure on the client's behalf is retried a few times, then answered `unavailable` with the
subscription exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from connectors.gateway import protocol
from connectors.gateway.auth import Grant, Refused
from connectors.gateway.errors import REDIS_ERRORS, Unavailable, brief
from connectors.gateway.fanout import ChannelMap, Router, Subscriber
from connectors.gateway.metrics import Stats
from connectors.gateway.protocol import ALL, BadMessage, Ping, Subscribe, Unsubscribe
from connectors.gateway.relay import Relay
from connectors.gateway.settings import GatewaySettings
from connectors.gateway.supervision import Backoff, detach

log = logging.getLogger("tickstock.gateway")

T = TypeVar("T")


class GatewayConnection(ServerConnection):
    """A WebSocket connection that remembers the grant its handshake was admitted with."""

    grant: Grant | None = None


class Session(Subscriber):
    """One connected client: its filters and buffer (Subscriber) plus its socket and grant."""

    __slots__ = ("ws", "grant", "errors", "full_since", "expiry", "busy", "tokens", "refilled")

    def __init__(self, ws: ServerConnection, grant: Grant, max_errors: int = 10, burst: int = 50) -> None:
        super().__init__(kinds=grant.kinds)
        self.ws = ws
        self.grant = grant
        self.errors: deque[float] = deque(maxlen=max_errors)
        self.full_since: float | None = None  # since when its socket's write buffer is full (flush.py)
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

    def state(self, kind: str, **extra: object) -> dict:
        """The reply to a (un)subscribe: what the session follows now."""
        return {
            "type": kind,
            "symbols": sorted(self.symbols),
            "kinds": sorted(self.kinds),
            "timeframes": sorted(self.timeframes, key=protocol.TIMEFRAME_NAMES.index),
            "min_confidence": self.min_confidence,
            **extra,
        }


class Clients:
    """The connected clients (their sessions), and the gateway's side of the protocol with each of them."""

    def __init__(
        self,
        settings: GatewaySettings,
        channels: ChannelMap,
        router: Router[Session],
        relay: Relay,
        stats: Stats,
        connected: set[Session],
    ) -> None:
        self.settings = settings
        self.channels = channels
        self.router = router
        self.relay = relay
        self.stats = stats
        self.connected = connected

    async def serve(self, ws: ServerConnection) -> None:
        """One client, from the welcome until its socket closes (admitted by the handshake: it has a grant)."""
        assert isinstance(ws, GatewayConnection)  # server.py creates every connection as one
        grant = ws.grant
        assert grant is not None
        s = self.settings
        session = Session(ws, grant, max_errors=s.max_errors, burst=s.rate_burst)
        self.connected.add(session)
        self.stats.connections += 1
        self.stats.connections_total += 1
        if grant.expires is not None:
            delay = max(0.0, grant.expires - time.time())
            session.expiry = asyncio.get_running_loop().call_later(
                delay, lambda: detach(ws.close(protocol.CLOSE_UNAUTHORIZED, "token expired"))
            )
        try:
            await ws.send(
                protocol.encode(
                    {
                        "type": "welcome",
                        "protocol": protocol.PROTOCOL_VERSION,
                        "user": grant.user,
                        "symbols": sorted(grant.symbols),
                        "kinds": sorted(grant.kinds),
                        "batch_interval_ms": s.batch_interval_ms,
                        "dev_mode": s.dev_mode,
                        "limits": {
                            "max_symbols": s.max_symbols,
                            "max_queue": s.max_queue,
                            "max_message_bytes": s.max_message_bytes,
                            "rate_limit_per_s": s.rate_limit_per_s,
                            "rate_burst": s.rate_burst,
                            "max_symbols_per_message": protocol.MAX_SYMBOLS_PER_MESSAGE,
                        },
                    }
                ),
                text=True,
            )
            async for raw in ws:
                await self.on_message(session, raw)
        except ConnectionClosed:
            pass
        except Exception:  # never let one client's failure escape into the server
            self.stats.internal_errors += 1
            log.exception("connection of %s failed", grant.user)
        finally:
            if session.expiry is not None:
                session.expiry.cancel()
            self.router.remove(session)
            self.connected.discard(session)
            self.stats.connections -= 1

    async def on_message(self, session: Session, raw: str | bytes) -> None:
        s = self.settings
        if session.ws.state is not State.OPEN:  # closing (e.g. cut for misbehaving): read no further
            return
        if not session.take_token(s.rate_limit_per_s, s.rate_burst, time.monotonic()):
            self.stats.rate_limited += 1
            await self.misbehaved(
                session,
                "rate_limited",
                f"more than {s.rate_limit_per_s:g} messages/s "
                f"(burst {s.rate_burst}, GATEWAY_RATE_LIMIT_PER_S): message ignored, slow down",
            )
            return
        try:
            if not isinstance(raw, str):
                raise BadMessage(protocol.BINARY_FRAME)
            message = protocol.decode_client(raw)
            if isinstance(message, Ping):
                reply = {"type": "pong", "id": message.id, "time": time.time()}
                await session.ws.send(protocol.encode(reply), text=True)
            elif isinstance(message, Subscribe):
                await self.subscribe(session, message)
            elif isinstance(message, Unsubscribe):
                self.unsubscribe(session, message)
                await session.ws.send(protocol.encode(session.state("unsubscribed")), text=True)
        except BadMessage as exc:
            await self.misbehaved(session, "bad_message", str(exc))
        except Refused as exc:
            await session.ws.send(protocol.error("forbidden", exc.reason), text=True)
        except Unavailable as exc:
            await session.ws.send(protocol.error("unavailable", str(exc)), text=True)
        except ConnectionClosed:
            raise
        except Exception:  # our failure: log it with a reference, tell the client only that
            ref = uuid.uuid4().hex[:12]
            self.stats.internal_errors += 1
            log.exception("handling a message from %s failed (ref %s)", session.grant.user, ref)
            await session.ws.send(
                protocol.error("internal", f"the gateway could not handle that (ref {ref}); nothing was changed"), text=True
            )

    async def misbehaved(self, session: Session, code: str, text: str) -> None:
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
            await session.ws.close(
                protocol.CLOSE_MISBEHAVING, f"{len(session.errors)} invalid messages in {s.error_window_s:.0f} s"
            )

    async def subscribe(self, session: Session, message: Subscribe) -> None:
        """Check, apply, read positions and history, reply; on a Redis failure undo and say so."""
        grant = session.grant
        forbidden = grant.forbidden_symbols(s for s in message.symbols if s != ALL)
        if ALL in message.symbols and ALL not in grant.symbols:
            forbidden.append(ALL)
        if forbidden:
            raise Refused(
                f"symbol(s) {', '.join(forbidden[:20])}{' ...' if len(forbidden) > 20 else ''} not allowed by your token"
            )
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
                raise BadMessage(
                    f"position for {protocol.safe_text(repr(channel))}, which is not a channel of the symbols subscribed"
                )
        before = (session.kinds, session.min_confidence, session.timeframes)
        if message.kinds is not None:
            session.kinds = frozenset(message.kinds)
        if message.timeframes is not None:
            session.timeframes = frozenset(message.timeframes)
            session.pending = {k: m for k, m in session.pending.items() if not m.timeframe or m.timeframe in session.timeframes}
        if message.min_confidence is not None:
            session.min_confidence = message.min_confidence
        session.busy = True  # nothing of this session is written until the reply and replay are queued
        self.router.subscribe(session, new_symbols)
        try:
            # Positions of the new channels, so a client that gets no message before a disconnect
            # still has somewhere to resume from.
            new_channels = sorted(
                c
                for s in message.symbols
                if s != ALL
                for c in self.channels.symbol_channels(s, session.kinds, session.timeframes)
            )
            positions = await self.retrying(lambda: self.relay.positions(new_channels), "read channel positions")
            catch_ups = await self.retrying(lambda: self.relay.read_missed(session, message.positions), "read channel history")
        except Unavailable:
            self.router.unsubscribe(session, new_symbols)
            gone = set(new_symbols)
            session.pending = {k: m for k, m in session.pending.items() if m.symbol not in gone}
            session.kinds, session.min_confidence, session.timeframes = before
            session.busy = False
            raise
        try:
            await session.ws.send(protocol.encode(session.state("subscribed", positions=positions)), text=True)
            for reply in catch_ups:
                await session.ws.send(protocol.encode(reply), text=True)
        finally:
            session.busy = False
            self.router.dirty.add(session)

    async def retrying(self, read: Callable[[], Awaitable[T]], what: str) -> T:
        """`read()` with a few quick retries on a Redis failure, then Unavailable (no exception text to the client)."""
        backoff = Backoff(0.1, 1.0)
        for attempt in range(4):
            try:
                return await read()
            except REDIS_ERRORS as exc:
                self.stats.redis_errors += 1
                log.warning("redis: could not %s (attempt %d): %s", what, attempt + 1, brief(exc))
                if attempt < 3:
                    await asyncio.sleep(backoff.next())
        raise Unavailable(f"Redis is unavailable: could not {what}; nothing was changed, send the same subscribe again")

    def unsubscribe(self, session: Session, message: Unsubscribe) -> None:
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
