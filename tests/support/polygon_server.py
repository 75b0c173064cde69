"""A local stand-in for Massive's stocks WebSocket, speaking its documented protocol.

The real service cannot run here, so tests run the real client against this: `connected`
on open, `auth` -> `auth_success`/`auth_failed` (or `max_connections`, `auth_timeout`),
`subscribe` -> one `success` per channel, then the scripted frames (optionally paced). A frame
cursor survives reconnects, so a connection dropped with `drop_after` resumes where it stopped
on the next connection.

For hostile-feed tests a frame may also be `bytes` (sent as a binary frame) or any text, the
first connection can greet oddly or not at all (`first_greeting`) or answer auth with odd
frames (`first_auth_reply`, then it closes), and `hold_after` stops sending after that many
frames until `release()`, so a test can act (cut Kafka, stop the bridge) at a known point.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve


def status(status: str, message: str) -> str:
    return orjson.dumps([{"ev": "status", "status": status, "message": message}]).decode()


CONNECTED = status("connected", "Connected Successfully")
Frame = Sequence[dict[str, Any]] | str | bytes


class PolygonServer:
    """Runs in its own thread and event loop; `url` is what the bridge connects to."""

    def __init__(
        self,
        key: str,
        frames: Sequence[Frame] = (),
        *,
        drop_after: int | None = None,
        max_connections: bool = False,
        auth_reply: str = "auth_success",
        frame_interval_s: float = 0.0,
        rate: float | None = None,
        first_greeting: str | bytes | None = CONNECTED,
        first_auth_reply: Sequence[str | bytes] | None = None,
        hold_after: int | None = None,
    ) -> None:
        self.key = key
        # text frames, as Massive sends; a str is sent as it is (e.g. a broken frame), bytes as a binary frame
        self.frames: list[str | bytes] = [f if isinstance(f, str | bytes) else orjson.dumps(list(f)).decode()
                                          for f in frames]  # fmt: skip
        self.first_greeting = first_greeting  # None: the first connection hears nothing (a hung server)
        self.first_auth_reply = first_auth_reply  # frames answering the first auth, then a close
        self.hold_after = hold_after
        self.drop_after = drop_after  # first connection: send this many frames, then drop abruptly
        self.max_connections = max_connections
        self.auth_reply = auth_reply  # e.g. "auth_timeout": what the server answers a right key with
        self.frame_interval_s = frame_interval_s
        self.rate = rate  # events per second, paced (None: as fast as the client reads)
        self.frame_sizes = [1 if isinstance(f, str | bytes) else len(f) for f in frames]
        self.thread_id = 0  # native id of the server's thread, for CPU accounting
        self.cursor = 0
        self.connections = 0
        self.subscriptions: list[str] = []
        self.all_sent = threading.Event()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Future[None] | None = None
        self._released: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stocks"

    def __enter__(self) -> PolygonServer:
        self._thread.start()
        assert self._ready.wait(5), "server did not start"
        return self

    def release(self) -> None:
        """Send the frames after `hold_after` too."""
        self._loop.call_soon_threadsafe(lambda: self._released and self._released.set())

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(lambda: self._stop and not self._stop.done() and self._stop.set_result(None))
        self._thread.join(5)

    async def _main(self) -> None:
        self.thread_id = threading.get_native_id()
        self._stop = asyncio.get_running_loop().create_future()
        self._released = asyncio.Event()
        async with serve(self._session, "127.0.0.1", 0) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    async def _session(self, ws: ServerConnection) -> None:
        self.connections += 1
        first = self.connections == 1
        greeting = self.first_greeting if first else CONNECTED
        if greeting is None:
            await ws.wait_closed()  # say nothing: the client must time out
            return
        await ws.send(greeting)
        auth = orjson.loads(await ws.recv())
        if first and self.first_auth_reply is not None:
            for frame in self.first_auth_reply:
                await ws.send(frame)
            await ws.close()
            return
        if auth.get("action") != "auth" or auth.get("params") != self.key:
            await ws.send(status("auth_failed", "authentication failed"))
            await ws.close()
            return
        if self.max_connections:
            await ws.send(status("max_connections", "Maximum number of websocket connections exceeded."))
            await ws.close(1008, "max_connections")
            return
        if self.auth_reply != "auth_success":
            await ws.send(status(self.auth_reply, f"{self.auth_reply} (test server)"))
            await ws.close()
            return
        await ws.send(status("auth_success", "authenticated"))
        sub = orjson.loads(await ws.recv())
        assert sub.get("action") == "subscribe", sub
        channels = [c for c in str(sub["params"]).split(",") if c]
        self.subscriptions.append(",".join(sorted(channels)))
        acks = [{"ev": "status", "status": "success", "message": f"subscribed to: {c}"} for c in channels]
        await ws.send(orjson.dumps(acks).decode())
        sent = 0
        loop = asyncio.get_running_loop()
        started, events = loop.time(), 0
        while self.cursor < len(self.frames):
            if first and self.drop_after is not None and sent >= self.drop_after:
                await asyncio.sleep(0.3)  # let what was sent reach the client first
                ws.transport.abort()  # no close frame: what a network failure looks like
                return
            if self.hold_after is not None and self.cursor >= self.hold_after:
                assert self._released is not None
                await self._released.wait()
            await ws.send(self.frames[self.cursor])
            self.cursor += 1
            sent += 1
            if self.frame_interval_s:
                await asyncio.sleep(self.frame_interval_s)
            if self.rate:
                events += self.frame_sizes[self.cursor - 1]
                ahead = started + events / self.rate - loop.time()
                if ahead > 0.001:
                    await asyncio.sleep(ahead)
        self.all_sent.set()
        await ws.wait_closed()
