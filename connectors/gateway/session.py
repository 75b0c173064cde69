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
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.server import ServerProtocol

from connectors.gateway import bodies, protocol
from connectors.gateway.auth import Grant, Refused
from connectors.gateway.errors import REDIS_ERRORS, Unavailable, brief
from connectors.gateway.fanout import ChannelMap, Router, Subscriber
from connectors.gateway.metrics import Stats
from connectors.gateway.protocol import ALL, BadMessage, Ping, Subscribe, Unsubscribe
from connectors.gateway.relay import Relay
from connectors.gateway.settings import GatewaySettings
from connectors.gateway.supervision import Backoff, detach
from connectors.gateway.watchlists import Following, Listed, NoSuchWatchlist, visible
from connectors.postgres.watchlists import Watchlist
from schemas.watchlists import WatchlistChange

log = logging.getLogger("tickstock.gateway")

T = TypeVar("T")
ReadWatchlist = Callable[[str, str], Awaitable[Watchlist | None]]  # (user, name) -> the stored list
MAX_REMEMBERED_CHANGES = 10_000


class GatewayConnection(ServerConnection):
    """A connection that reads request bodies (bodies.py: REST's PUT) and remembers its handshake's grant."""

    grant: Grant | None = None

    def __init__(self, protocol: ServerProtocol, server: Server, **options: Any) -> None:
        super().__init__(protocol, server, **options)
        bodies.install(protocol)


class Session(Subscriber):
    """One connected client: its filters and buffer (Subscriber) plus its socket and grant."""

    __slots__ = ("ws", "grant", "errors", "full_since", "expiry", "busy", "tokens", "refilled", "following")

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
        self.following = Following()  # symbols subscribed by name, and the watchlists followed

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
            "watchlists": sorted(self.following.lists),
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
        read_watchlist: ReadWatchlist | None = None,
    ) -> None:
        self.settings = settings
        self.channels = channels
        self.router = router
        self.relay = relay
        self.stats = stats
        self.connected = connected
        self.read_watchlist = read_watchlist
        # the newest revision announced per (user, list): a subscribe that read an older list from
        # PostgreSQL while a notice went by reads it again (bounded, least recently changed forgotten first)
        self.latest: OrderedDict[tuple[str, str], tuple[int, bool]] = OrderedDict()  # -> (revision, deleted)

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
        except NoSuchWatchlist as exc:
            await session.ws.send(protocol.error("not_found", str(exc)), text=True)
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
        direct_new = [s for s in message.symbols if s not in session.symbols]
        if len(session.symbols) + len(direct_new) > self.settings.max_symbols:
            raise BadMessage(f"at most {self.settings.max_symbols} symbols per connection (GATEWAY_MAX_SYMBOLS)")
        listed = await self.current_list(grant.user, message.watchlist) if message.watchlist is not None else None
        before_following = (set(session.following.direct), dict(session.following.lists))
        session.following.direct |= set(message.symbols)
        if listed is not None:
            session.following.follow(listed.name)
            session.following.apply(listed.name, listed.revision, listed.symbols)
        wanted, left_out = session.following.wanted(grant, self.settings.max_symbols)
        new_symbols = [s for s in wanted if s not in session.symbols]
        following = session.symbols | set(new_symbols)
        for channel in message.positions:
            owner = self.channels.channel_symbol(channel)
            if channel != self.channels.indicators and (owner is None or (owner not in following and ALL not in following)):
                session.following.direct, session.following.lists = before_following
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
            fresh = dict.fromkeys([*message.symbols, *new_symbols])
            new_channels = sorted(
                c for s in fresh if s != ALL for c in self.channels.symbol_channels(s, session.kinds, session.timeframes)
            )
            positions = await self.retrying(lambda: self.relay.positions(new_channels), "read channel positions")
            catch_ups = await self.retrying(lambda: self.relay.read_missed(session, message.positions), "read channel history")
        except Unavailable:
            self.router.unsubscribe(session, new_symbols)
            gone = set(new_symbols)
            session.pending = {k: m for k, m in session.pending.items() if m.symbol not in gone}
            session.kinds, session.min_confidence, session.timeframes = before
            session.following.direct, session.following.lists = before_following
            session.busy = False
            raise
        extra: dict[str, object] = {"positions": positions}
        if listed is not None:
            extra["watchlist"] = self.list_state(session, listed.name, left_out)
        try:
            await session.ws.send(protocol.encode(session.state("subscribed", **extra)), text=True)
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
        """Remove symbols (those a followed watchlist still has stay), kinds, and a watchlist followed."""
        session.following.direct -= set(message.symbols)
        if message.watchlist is not None:
            session.following.lists.pop(message.watchlist, None)
        if message.kinds:
            session.kinds = session.kinds - set(message.kinds)
            session.pending = {k: m for k, m in session.pending.items() if m.kind in session.kinds}
        self.refollow(session)

    def refollow(self, session: Session) -> tuple[list[str], list[str]]:
        """Subscribe the session to what it follows now (direct + watchlists, granted, capped); (added, left out)."""
        wanted, left_out = session.following.wanted(session.grant, self.settings.max_symbols)
        keep = set(wanted)
        added = [s for s in wanted if s not in session.symbols]
        gone = session.symbols - keep
        self.router.subscribe(session, added)
        if gone:
            self.router.unsubscribe(session, gone)
            session.pending = {k: m for k, m in session.pending.items() if m.symbol not in gone}
            session.replay = [m for m in session.replay if m.symbol not in gone]
            symbol_of = self.channels.channel_symbol
            session.floor = {c: o for c, o in session.floor.items() if symbol_of(c) not in gone}
        return added, left_out

    # ---------------------------------------------------------------- server-side watchlists
    async def current_list(self, user: str, name: str) -> Listed:
        """The list as stored, read again while a newer revision was announced meanwhile; NoSuchWatchlist.

        A notice is published after its change commits, so a second read sees what it announced.
        """
        if self.read_watchlist is None:
            raise Unavailable("this gateway has no watchlist store")
        found = await self.read_watchlist(user, name)
        for _ in range(3):
            announced, deleted = self.latest.get((user, name), (0, False))
            if announced <= (found.revision if found is not None else 0) or (found is None and deleted):
                break
            found = await self.read_watchlist(user, name)
        if found is None:
            raise NoSuchWatchlist(f"you have no watchlist {name!r} (create it with PUT /api/watchlists/{name})")
        return Listed(name, found.revision, tuple(found.symbols))

    def list_state(self, session: Session, name: str, left_out: list[str]) -> dict:
        """A followed list as the session sees it: its granted symbols, how many withheld, those left out."""
        held = session.following.lists[name]
        shown, withheld = visible(held.symbols, session.grant)
        return {"name": name, "revision": held.revision, "symbols": shown, "withheld": withheld, "left_out": left_out}

    def on_watchlist(self, change: WatchlistChange) -> None:
        """A change notice from Redis (any gateway's REST): move every session of that user following the list."""
        key = (change.user, change.name)
        held = self.latest.pop(key, (0, False))
        self.latest[key] = max(held, (change.revision, change.deleted))
        while len(self.latest) > MAX_REMEMBERED_CHANGES:
            self.latest.popitem(last=False)
        for session in list(self.connected):
            if session.grant.user == change.user:
                self.apply_change(session, change.name, change.revision, change.symbols, change.deleted)

    def apply_change(self, session: Session, name: str, revision: int, symbols: Sequence[str], deleted: bool) -> None:
        if not session.following.apply(name, revision, symbols):
            return  # not followed, or not newer than what the session holds
        added, left_out = self.refollow(session)
        self.stats.watchlist_changes += 1
        session.busy = True  # its frames wait until the `watchlist` message is out
        detach(self.tell_change(session, name, deleted, added, left_out))

    async def tell_change(self, session: Session, name: str, deleted: bool, added: list[str], left_out: list[str]) -> None:
        try:
            channels = sorted(
                c for s in added if s != ALL for c in self.channels.symbol_channels(s, session.kinds, session.timeframes)
            )
            try:
                positions = await self.retrying(lambda: self.relay.positions(channels), "read channel positions")
            except Unavailable:
                positions = {}  # the client still follows; it only has no position to resume these from yet
            if name not in session.following.lists:
                return  # unfollowed meanwhile
            message = {
                "type": "watchlist",
                **self.list_state(session, name, left_out),
                "deleted": deleted,
                "subscribed": sorted(session.symbols),
                "positions": positions,
            }
            await session.ws.send(protocol.encode(message), text=True)
        except ConnectionClosed:
            pass
        except Exception:  # a detached task: log it here, nobody else will
            self.stats.internal_errors += 1
            log.exception("telling %s about a watchlist change failed", session.grant.user)
        finally:
            session.busy = False
            self.router.dirty.add(session)

    async def resync_watchlists(self) -> None:
        """After notices may have been missed (the Redis subscription was lost): re-read every followed list.

        A list PostgreSQL cannot give now stays as it is (logged); the next lost subscription, or
        the client's next subscribe with that watchlist, reads it again.
        """
        unread = 0
        for session in list(self.connected):
            for name, held in list(session.following.lists.items()):
                try:
                    found = await self.current_list(session.grant.user, name)
                except NoSuchWatchlist:
                    # deleted meanwhile: any revision above the held one is older than a re-creation's
                    self.apply_change(session, name, held.revision + 1, (), True)
                    continue
                except Unavailable:
                    unread += 1
                    continue
                except Exception:  # a detached task: log it here, nobody else will
                    self.stats.internal_errors += 1
                    log.exception("re-reading a watchlist of %s failed", session.grant.user)
                    continue
                self.apply_change(session, name, found.revision, found.symbols, False)
        if unread:
            log.warning("could not re-read %d followed watchlist(s) after the Redis outage (PostgreSQL unavailable)", unread)
