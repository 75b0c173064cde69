"""Buffers to sockets: every batching interval, each dirty client's unsent messages as one frame.

The flusher writes without awaiting the socket (`websockets.broadcast` semantics), so one slow
client never holds the loop everyone shares. A client whose socket write buffer stays above
GATEWAY_MAX_BUFFER_BYTES is skipped (its messages keep being replaced by newer ones) and cut
with close 4008 once its queue exceeds GATEWAY_MAX_QUEUE or its socket stays full for
GATEWAY_SLOW_TIMEOUT_S; a client that does not even read up to the close frame is aborted.
"""

from __future__ import annotations

import asyncio
import logging
import time

from websockets.asyncio.server import ServerConnection, broadcast

from connectors.gateway import protocol
from connectors.gateway.fanout import Router, frame
from connectors.gateway.metrics import QueueDepths, Stats
from connectors.gateway.session import Session
from connectors.gateway.settings import GatewaySettings
from connectors.gateway.supervision import detach

log = logging.getLogger("tickstock.gateway")


class Flusher:
    """Writes the router's dirty sessions every GATEWAY_BATCH_INTERVAL_MS; cuts slow consumers."""

    def __init__(self, settings: GatewaySettings, router: Router[Session], stats: Stats, sessions: set[Session]) -> None:
        self.settings = settings
        self.router = router
        self.stats = stats
        self.sessions = sessions

    async def flush_forever(self) -> None:
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
            ws = session.ws
            transport = ws.transport
            if transport is None or transport.is_closing():
                continue
            if transport.get_write_buffer_size() > s.max_buffer_bytes:
                if session.full_since is None:
                    session.full_since = now
                queued = session.queued()
                if queued > s.max_queue or now - session.full_since > s.slow_timeout_s:
                    self.cut_slow(session, queued, now - session.full_since)
                else:
                    router.dirty.add(session)  # try again next interval
                continue
            session.full_since = None
            messages = session.take()
            if messages:
                broadcast((ws,), frame(messages), text=True)
                stats.delivered += len(messages)
                stats.frames += 1

    def cut_slow(self, session: Session, queued: int, full_s: float) -> None:
        self.stats.dropped["slow_consumer"] += 1
        self.router.remove(session)
        reason = f"slow consumer: {queued} messages queued, socket full for {full_s:.1f} s"
        log.warning("cutting %s (%s): %s", session.grant.user, session.ws.remote_address, reason)
        detach(session.ws.close(protocol.CLOSE_SLOW_CONSUMER, reason[:120]))
        # The close frame waits behind what is buffered; a client that reads none of it would
        # hold the socket (and websockets' close, which waits for the socket to drain) forever.
        asyncio.get_running_loop().call_later(self.settings.slow_timeout_s, _abort, session.ws)

    def depths(self) -> QueueDepths:
        """Unsent messages (all clients, the fullest one) and bytes in socket buffers, for /metrics."""
        pending = [s.queued() for s in self.sessions]
        buffered = 0
        for s in self.sessions:
            t = s.ws.transport
            if t is not None and not t.is_closing():
                buffered += t.get_write_buffer_size()
        return QueueDepths(sum(pending), max(pending, default=0), buffered)


def _abort(ws: ServerConnection) -> None:
    transport = ws.transport
    if transport is not None and not transport.is_closing():
        log.warning("aborting %s: it did not read up to its close frame", ws.remote_address)
        transport.abort()
