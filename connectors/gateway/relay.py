"""The Redis relay: one pub/sub subscription for the whole gateway, fed into every client's buffer.

- One `PSUBSCRIBE` connection per process (the per-symbol channel patterns, the indicator
  channel and the gateway's own probe channel), read by one task that parses and encodes each
  message once (`ChannelMap.parse`) and buffers it for every interested client (`Router.route`).
  It remembers each channel's newest position (bounded: GATEWAY_MAX_TRACKED_CHANNELS, least
  recently updated forgotten first).
- Reconnect: any Redis failure (down, LOADING, OOM, READONLY, MISCONF) is retried with capped,
  jittered backoff. Once subscribed again it routes what was published meanwhile from the
  channels' history, or sends a `reset` to the clients of a channel whose history is gone.
- Watchlists: the subscription also carries `tickstock.dashboard.watchlist`; each valid change
  notice goes to `watchlist_changed` (session.py moves the sessions following that list). After
  a lost subscription `watchlists_lost` re-reads every followed list, since notices may be missed.
- Catch-up: a client's resume (`positions` in a subscribe) is served from the history, counted
  against its queue (GATEWAY_MAX_QUEUE): a channel whose missed messages do not fit gets a reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
import redis.asyncio as aioredis
from websockets.asyncio.server import broadcast

from connectors.gateway import protocol
from connectors.gateway.errors import REDIS_ERRORS, brief
from connectors.gateway.fanout import ChannelMap, Router, Subscriber
from connectors.gateway.metrics import Stats
from connectors.gateway.protocol import ALL
from connectors.gateway.settings import GatewaySettings
from connectors.gateway.supervision import Backoff, detach
from connectors.redis.history import History
from schemas.watchlists import WatchlistChange, decode_change

if TYPE_CHECKING:  # session.py reads through the relay; the relay only resets sessions' channels
    from connectors.gateway.session import Session

log = logging.getLogger("tickstock.gateway")


class Relay:
    """The gateway's Redis side: the subscription, the relay loop, recovery and clients' catch-up."""

    def __init__(
        self,
        settings: GatewaySettings,
        channels: ChannelMap,
        router: Router[Session],
        stats: Stats,
        *,
        redis: aioredis.Redis,
        history: History,
        sessions: set[Session],
        probe_channel: str,
        closing: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.channels = channels
        self.router = router
        self.stats = stats
        self.redis = redis
        self.history = history
        self.sessions = sessions
        self.probe_channel = probe_channel
        self.closing = closing
        self.last: dict[str, tuple[str, int]] = {}  # channel -> newest (epoch, offset) relayed
        self.subscribed = asyncio.Event()  # set once the first subscription is up
        self._subscribed_once = False
        self.watchlist_channel = channels.channels.watchlist
        self.watchlist_changed: Callable[[WatchlistChange], None] = lambda change: None
        self.watchlists_lost: Callable[[], Awaitable[None]] | None = None

    # ---------------------------------------------------------------- Redis -> buffers
    async def subscribe_forever(self) -> None:
        """Keep the pattern subscription up: any Redis failure is retried with capped, jittered backoff.

        Anything else propagates to the supervisor (logged, counted, restarted).
        """
        backoff = Backoff(0.5, 10.0)
        while not self.closing():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(*self.channels.patterns())
                await pubsub.subscribe(*self.channels.exact(), self.probe_channel, self.watchlist_channel)
                self.stats.redis_connected = True
                if self._subscribed_once:
                    self.stats.redis_reconnects += 1
                    log.warning("redis subscription restored; catching up the channels clients follow")
                    await self.recover_after_outage()
                    if self.watchlists_lost is not None:
                        detach(self.watchlists_lost())  # reads PostgreSQL: never holds up (or fails) the reader
                self._subscribed_once = True
                backoff.reset()
                self.subscribed.set()
                await self.forward(pubsub)
            except REDIS_ERRORS as exc:
                if self.stats.redis_connected:
                    log.error("redis subscription lost (%s); retrying with backoff", brief(exc))
                else:
                    log.warning("redis subscription still down (%s)", brief(exc))
            finally:
                self.stats.redis_connected = False
                try:
                    await asyncio.wait_for(pubsub.aclose(), 2)
                except Exception as exc:  # noqa: BLE001 - the connection is gone either way
                    log.debug("closing a broken pubsub failed: %s", brief(exc))
            if not self.closing():
                await asyncio.sleep(backoff.next())

    async def forward(self, pubsub: aioredis.client.PubSub) -> None:
        """Read the subscription until it fails: probes measure the lag, the rest is routed to clients."""
        parse, route, stats, last, probe = self.channels.parse, self.router.route, self.stats, self.last, self.probe_channel
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
            if channel == self.watchlist_channel:
                self.watchlist_notice(data)
                continue
            try:
                symbol = channel_symbol(channel)
                if symbol is not None and not wants(symbol):  # "" (an all-symbol channel) is never wanted
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
            except Exception:  # one message must never stop the relay (and it is not redelivered)
                ignored["internal error"] += 1
                log.exception("relaying a message on %r failed; skipped", channel[:200])

    def watchlist_notice(self, data: object) -> None:
        """One message on the watchlist channel: a valid notice is applied, anything else counted and dropped."""
        if type(data) is not bytes or len(data) > self.channels.max_bytes:
            self.channels.ignored["bad watchlist notice"] += 1
            return
        try:
            change = decode_change(data)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, ValueError):
            self.channels.ignored["bad watchlist notice"] += 1
            return
        try:
            self.watchlist_changed(change)
        except Exception:  # one notice must never stop the relay
            self.channels.ignored["internal error"] += 1
            log.exception("applying a watchlist notice failed; skipped")

    async def recover_after_outage(self) -> None:
        """After the subscription was lost: route what was published meanwhile, or reset clients."""
        for channel, (epoch, offset) in list(self.last.items()):
            symbol = self.channels.channel_symbol(channel)
            if symbol is not None and not self.router.wants(symbol):
                continue
            missed = await asyncio.to_thread(self.history.since, channel, epoch, offset)
            if missed.complete:
                for raw in missed.messages:
                    m = self.channels.parse(channel, raw)
                    if m is not None:
                        self.router.route(m)
                        self.last[channel] = (missed.epoch, m.offset)
                continue
            reset = protocol.encode(
                {
                    "type": "reset",
                    "channel": channel,
                    "epoch": missed.epoch,
                    "offset": missed.offset,
                    "reason": "gateway lost its Redis subscription",
                }
            )
            kinds = self.channels.channel_kinds(channel)
            timeframe = self.channels.channel_timeframe(channel)
            for session in list(self.sessions):
                if (
                    (symbol is None or ALL in session.symbols or symbol in session.symbols)
                    and session.kinds & kinds
                    and (not timeframe or timeframe in session.timeframes)
                ):
                    session.floor[channel] = missed.offset
                    broadcast([session.ws], reset, text=True)
            self.last[channel] = (missed.epoch, missed.offset)

    # ---------------------------------------------------------------- catch-up for one client
    async def positions(self, channels: list[str]) -> dict[str, dict]:
        """Each channel's current (epoch, offset); a channel whose meta is unreadable counts as new."""
        if not channels:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.hmget("history-meta:" + channel, "epoch", "offset")
            replies = await pipe.execute()
        return {c: _position(e, o) for c, (e, o) in zip(channels, replies, strict=True)}

    async def read_missed(self, session: Subscriber, wanted: dict[str, protocol.Position]) -> list[dict]:
        """Queue what `session` missed on each channel of `wanted`; the resets to send for the others.

        The replay is counted against the client's queue (GATEWAY_MAX_QUEUE): a channel whose
        missed messages do not fit gets a reset, without reading its history. Nothing of the
        session changes until every read succeeded (a Redis failure may retry all of it).
        """
        if not wanted:
            return []
        channels = sorted(wanted)
        current = await self.positions(channels)
        budget = self.settings.max_queue - session.queued()
        resets: list[tuple[str, str, int, str]] = []
        queued: list[tuple[str, int, list]] = []
        for channel in channels:
            epoch, offset = wanted[channel].epoch, wanted[channel].offset
            now_epoch, top = current[channel]["epoch"], current[channel]["offset"]
            too_many = f"too many missed messages for your queue (GATEWAY_MAX_QUEUE={self.settings.max_queue})"
            if now_epoch == epoch and top - offset >= 0 and top - offset > budget:
                resets.append((channel, now_epoch, top, too_many))
                continue
            missed = await asyncio.to_thread(self.history.since, channel, epoch, offset)
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
            wanted_messages = [m for m in messages if Router.takes(session, m) and (everything or m.symbol in session.symbols)]
            session.catch_up(channel, offset, wanted_messages)
        replies = []
        for channel, epoch, offset, reason in resets:
            self.stats.resets += 1
            session.floor[channel] = max(session.floor.get(channel, 0), offset)
            replies.append({"type": "reset", "channel": channel, "epoch": epoch, "offset": offset, "reason": reason})
        return replies


def _position(epoch: object, offset: object) -> dict:
    """A history-meta reply as a position; unreadable values (not ours) count as no history.

    >>> _position(b"e1", b"42"), _position(None, None), _position(b"e1", b"-1")
    ({'epoch': 'e1', 'offset': 42}, {'epoch': '', 'offset': 0}, {'epoch': '', 'offset': 0})
    """
    try:
        e = epoch.decode() if isinstance(epoch, bytes) else ""
        o = int(offset) if isinstance(offset, bytes | str | int) else 0
    except (UnicodeDecodeError, ValueError):
        return {"epoch": "", "offset": 0}
    if not 0 <= o <= protocol.INT64_MAX or len(e) > protocol.MAX_EPOCH_LENGTH:
        return {"epoch": "", "offset": 0}
    return {"epoch": e, "offset": o}
