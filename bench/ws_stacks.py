"""Which WebSocket server stack for the gateway: the `websockets` library or Starlette on uvicorn.

Measures what the gateway's hot path does: every `--interval-ms`, send one pre-encoded ~400-byte
frame to each of `--clients` connections, for `--rounds` rounds. Reports the server's CPU time per
frame sent and the send-to-receipt latency seen by the clients (one asyncio process).

    python -m bench.ws_stacks --stack websockets
    python -m bench.ws_stacks --stack starlette

`websockets`: frames are written synchronously (`protocol.send_text` + `send_data`, what
`websockets.broadcast` does), backpressure is read from the transport's write buffer size.
`starlette`: uvicorn (uvloop, httptools, websockets-sansio) + Starlette, one writer task per
client fed by a bounded queue (Starlette's `send_bytes` waits while a socket is not writable, so
a slow client must not be sent to from the shared flush loop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import time

FRAME_PAD = "x" * 340


def _frame(seq: int) -> bytes:
    return json.dumps({"type": "batch", "sent": time.time(), "seq": seq, "pad": FRAME_PAD}).encode()


async def _rounds(clients: list, send_one, rounds: int, interval_s: float) -> float:
    cpu0 = time.process_time()
    for seq in range(rounds):
        frame = _frame(seq)
        for client in clients:
            send_one(client, frame)
        await asyncio.sleep(interval_s)
    return time.process_time() - cpu0


def serve_websockets(port: int, n: int, rounds: int, interval_s: float, out: multiprocessing.Queue) -> None:
    import uvloop
    from websockets.asyncio.server import serve

    async def main() -> None:
        clients: list = []
        ready = asyncio.Event()

        async def handler(ws) -> None:
            clients.append(ws)
            if len(clients) == n:
                ready.set()
            await ws.wait_closed()

        def send_one(ws, frame: bytes) -> None:
            ws.protocol.send_text(frame)
            ws.send_data()

        async with serve(handler, "127.0.0.1", port, compression=None, max_queue=16):
            await ready.wait()
            await asyncio.sleep(0.5)
            out.put(await _rounds(clients, send_one, rounds, interval_s))
            await asyncio.sleep(1.0)

    uvloop.run(main())


def serve_starlette(port: int, n: int, rounds: int, interval_s: float, out: multiprocessing.Queue) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    clients: list[asyncio.Queue] = []
    ready = asyncio.Event()

    async def endpoint(websocket) -> None:
        await websocket.accept()
        queue: asyncio.Queue = asyncio.Queue(maxsize=64)
        clients.append(queue)
        if len(clients) == n:
            ready.set()
        while True:
            frame = await queue.get()
            await websocket.send_bytes(frame)

    def send_one(queue: asyncio.Queue, frame: bytes) -> None:
        queue.put_nowait(frame)

    async def drive() -> None:
        await ready.wait()
        await asyncio.sleep(0.5)
        out.put(await _rounds(clients, send_one, rounds, interval_s))
        await asyncio.sleep(1.0)
        server.should_exit = True

    app = Starlette(routes=[WebSocketRoute("/", endpoint)])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(drive())
        await server.serve()
        task.cancel()

    import uvloop

    uvloop.run(main())


async def receive(port: int, n: int, expected: int) -> list[float]:
    from websockets.asyncio.client import connect

    latencies: list[float] = []

    async def one() -> None:
        async with connect(f"ws://127.0.0.1:{port}/", compression=None, open_timeout=60, max_queue=None) as ws:
            for _ in range(expected):
                raw = await ws.recv(decode=False)
                latencies.append((time.time() - json.loads(raw)["sent"]) * 1000)

    await asyncio.gather(*(one() for _ in range(n)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", choices=["websockets", "starlette"], required=True)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--interval-ms", type=float, default=50.0)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = serve_websockets if args.stack == "websockets" else serve_starlette
    out: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=target, args=(port, args.clients, args.rounds, args.interval_ms / 1000, out))
    server.start()
    time.sleep(1.5)
    import uvloop

    latencies = uvloop.run(receive(port, args.clients, args.rounds))
    cpu_s = out.get(timeout=60)
    server.join(30)
    latencies.sort()
    frames = args.clients * args.rounds
    result = {
        "stack": args.stack,
        "clients": args.clients,
        "frames": frames,
        "server_cpu_us_per_frame": round(cpu_s / frames * 1e6, 2),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
        "load": os.getloadavg()[0],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
