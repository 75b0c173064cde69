"""Gateway delivery benchmark: many WebSocket clients, one gateway process, Redis publish to client receipt.

    python -m bench.gateway                       # 1,000 clients x 20 of 4,000 symbols, 1 update/s each
    python -m bench.gateway --clients 200 --duration 10

One gateway process (`python -m connectors.gateway`, dev mode, GATEWAY_BATCH_INTERVAL_MS=50 by
default) on a private Redis namespace. A publisher process publishes a forming bar for each of
`--symbols` symbols once a second, spread evenly over the second, exactly as the flow's live
sink does (all-symbols channel and the symbol's own, with history), with its publish time in
the payload (`sent`). `--client-procs` processes hold the clients: each client subscribes to
`--per-client` random symbols (kind `live`) and records, for every message it receives,
now - sent. Clients are lean (websockets' Sans-I/O protocol on a plain asyncio Protocol) so
the load generator leaves the gateway its core.

Writes bench/gateway.json: clients, delivered_per_s, p50_ms, p99_ms, dropped_clients, and the
context (expected_per_s, frames_per_s, gateway CPU, load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import msgspec

OUT = Path(__file__).with_name("gateway.json")


# ------------------------------------------------------------------ publisher (own process)
def publish(
    redis_url: str, namespace: str, symbols: list[str], rate_hz: float, start_at: float, stop_at: float, ready: mp.Event
) -> None:
    from connectors.redis.publish import Publisher
    from schemas.bars import Bar, encode_bar
    from schemas.channels import Channels

    channels = Channels(namespace)
    publisher = Publisher(redis_url)
    ready.set()
    tick_s = 0.01
    per_tick = max(1, round(len(symbols) * rate_hz * tick_s))
    prices = {s: 100.0 + i % 50 for i, s in enumerate(symbols)}
    minute = int(time.time() // 60 * 60_000)
    i = 0
    due = start_at
    while time.time() < stop_at:
        now = time.time()
        if due > now:
            time.sleep(due - now)
        batch = []
        for _ in range(per_tick):
            symbol = symbols[i % len(symbols)]
            i += 1
            prices[symbol] += 0.01
            p = prices[symbol]
            raw = encode_bar(
                Bar(
                    symbol=symbol,
                    timestamp=minute,
                    open=p,
                    high=p,
                    low=p,
                    close=p,
                    volume=100,
                    vwap=p,
                    trades=1,
                    revision=0,
                    status="live",
                )
            )
            payload = raw[:-1] + b',"sent":%.6f}' % time.time()
            batch += [(channels.live, payload), (channels.live_for(symbol), payload)]
        publisher.publish(batch)
        due += tick_s
    publisher.close()


# ------------------------------------------------------------------ clients (own processes)
class _Data(msgspec.Struct):
    sent: float = 0.0


class _Item(msgspec.Struct):
    data: _Data


class _Frame(msgspec.Struct):
    type: str
    messages: list[_Item] = []


_frame = msgspec.json.Decoder(_Frame)


def run_clients(url: str, subscriptions: list[list[str]], window, out: mp.Queue, connected: mp.Event) -> None:
    import uvloop

    try:
        out.put(uvloop.run(_clients(url, subscriptions, window, connected)))
    except BaseException as exc:  # the parent reports it instead of waiting for a result
        out.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


async def _clients(url: str, subscriptions: list[list[str]], window, connected: mp.Event) -> dict:
    """`window`: shared [measure_from, measure_to] (epoch s), set by the parent once all are connected."""
    from websockets.client import ClientProtocol
    from websockets.frames import Opcode
    from websockets.http11 import Response
    from websockets.uri import parse_uri

    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    state = {"subscribed": 0, "closed": 0, "frames": 0, "received": 0, "codes": {}}
    uri = parse_uri(url)

    class Client(asyncio.Protocol):
        def __init__(self, symbols: list[str]) -> None:
            self.symbols = symbols
            self.ws = ClientProtocol(uri, max_size=None)
            self.transport: asyncio.Transport | None = None
            self.lost = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            self.ws.send_request(self.ws.connect())
            self._flush()

        def data_received(self, data: bytes) -> None:
            now = time.time()
            self.ws.receive_data(data)
            for event in self.ws.events_received():
                if isinstance(event, Response):
                    message = {"type": "subscribe", "symbols": self.symbols, "kinds": ["live"]}
                    self.ws.send_text(json.dumps(message).encode())
                elif event.opcode is Opcode.TEXT:
                    frame = _frame.decode(event.data)
                    if frame.type == "batch":
                        if window[0] <= now < window[1]:
                            state["frames"] += 1
                            state["received"] += len(frame.messages)
                            latencies.extend([(now - m.data.sent) * 1000 for m in frame.messages])
                    elif frame.type == "subscribed":
                        state["subscribed"] += 1
                elif event.opcode is Opcode.CLOSE and self.ws.close_rcvd is not None:
                    code = self.ws.close_rcvd.code
                    state["codes"][code] = state["codes"].get(code, 0) + 1
            self._flush()

        def _flush(self) -> None:
            for data in self.ws.data_to_send():
                if data and self.transport is not None:
                    self.transport.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost = True
            state["closed"] += 1

    async def open_one(symbols: list[str]) -> Client:
        for attempt in range(5):
            try:
                _transport, protocol = await loop.create_connection(lambda: Client(symbols), uri.host, uri.port)
                return protocol
            except OSError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    clients: list[Client] = []
    for start in range(0, len(subscriptions), 50):  # stay under the listen backlog
        clients += await asyncio.gather(*(open_one(s) for s in subscriptions[start : start + 50]))
    deadline = time.monotonic() + 90
    while state["subscribed"] < len(subscriptions):
        if time.monotonic() > deadline:
            lost = sum(c.lost for c in clients)
            raise RuntimeError(f"{state['subscribed']} of {len(subscriptions)} clients subscribed; {lost} connections lost")
        await asyncio.sleep(0.05)
    connected.set()
    while window[1] == 0 or time.time() < window[1] + 1.0:
        await asyncio.sleep(0.2)
    dropped = sum(c.lost for c in clients)
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    return {
        "latencies": latencies,
        "frames": state["frames"],
        "received": state["received"],
        "dropped": dropped,
        "close_codes": state["codes"],
    }


# ------------------------------------------------------------------ orchestration
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--symbols", type=int, default=4000)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1.0, help="updates per symbol per second")
    parser.add_argument("--batch-ms", type=float, default=50.0, help="GATEWAY_BATCH_INTERVAL_MS")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    from flows.settings import Settings

    settings = Settings()
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    port = _free_port()
    env = {
        **os.environ,
        "GATEWAY_DEV_MODE": "true",
        "GATEWAY_PORT": str(port),
        "REDIS_NAMESPACE": namespace,
        "GATEWAY_BATCH_INTERVAL_MS": str(args.batch_ms),
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
    }
    log_path = args.out.with_suffix(".log")
    log_file = log_path.open("w")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "connectors.gateway"], env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 60
        while "gateway: http" not in log_path.read_text():
            if gateway.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the gateway did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        symbols = [f"S{i:04d}" for i in range(args.symbols)]
        rng = random.Random(args.seed)
        subscriptions = [rng.sample(symbols, args.per_client) for _ in range(args.clients)]
        url = f"ws://127.0.0.1:{port}/ws"

        ctx = mp.get_context("fork")
        out: mp.Queue = ctx.Queue()
        window = ctx.RawArray("d", 2)  # measure_from, measure_to: set once everyone is connected
        connected = [ctx.Event() for _ in range(args.client_procs)]
        chunks = [subscriptions[i :: args.client_procs] for i in range(args.client_procs)]
        t_connect = time.time()
        connect_deadline = t_connect + 120.0
        procs = []
        for chunk, event in zip(chunks, connected, strict=True):
            p = ctx.Process(target=run_clients, args=(url, chunk, window, out, event), daemon=True)
            p.start()
            procs.append(p)
        for event in connected:
            while not event.wait(0.5):
                if not out.empty() or time.time() > connect_deadline:
                    errors = [out.get() for _ in range(out.qsize())] if not out.empty() else []
                    raise SystemExit(f"clients did not all connect and subscribe: {errors or 'timed out'}")
        measure_from = time.time() + args.warmup
        measure_to = measure_from + args.duration
        window[0], window[1] = measure_from, measure_to
        connected_after = time.time() - t_connect
        ready = ctx.Event()
        # Publish from now to the end of the window: everything before measure_from is warm-up.
        publisher = ctx.Process(
            target=publish,
            args=(settings.redis_url, namespace, symbols, args.rate, time.time(), measure_to + 0.5, ready),
            daemon=True,
        )
        publisher.start()
        ready.wait(30)
        while time.time() < measure_from:
            time.sleep(0.05)
        load_before = os.getloadavg()
        cpu0, t0 = _cpu_seconds(gateway.pid), time.time()
        while time.time() < measure_to:
            time.sleep(0.1)
        cpu1, t1 = _cpu_seconds(gateway.pid), time.time()
        load_after = os.getloadavg()
        results = [out.get(timeout=120) for _ in procs]
        publisher.join(30)
        for p in procs:
            p.join(30)
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read())
    finally:
        gateway.terminate()
        try:
            gateway.wait(15)
        except subprocess.TimeoutExpired:
            gateway.kill()
        log_file.close()
        errors = [line for line in log_path.read_text().splitlines() if " ERROR " in line or "cutting" in line]
        if errors:
            print(f"gateway log ({log_path}), warnings and errors:\n" + "\n".join(errors[-20:]), file=sys.stderr)

    latencies = sorted(x for r in results for x in r["latencies"])
    received = sum(r["received"] for r in results)
    frames = sum(r["frames"] for r in results)
    report = {
        "clients": args.clients,
        "symbols": args.symbols,
        "symbols_per_client": args.per_client,
        "updates_per_symbol_per_s": args.rate,
        "batch_interval_ms": args.batch_ms,
        "duration_s": args.duration,
        "delivered_per_s": round(received / args.duration, 1),
        "expected_per_s": round(args.clients * args.per_client * args.rate, 1),
        "frames_per_s": round(frames / args.duration, 1),
        "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p90_ms": round(_percentile(latencies, 0.90), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "dropped_clients": sum(r["dropped"] for r in results),
        "gateway_dropped": health["counters"]["dropped"],
        "gateway_replaced": health["counters"]["replaced"],
        "gateway_cpu_percent": round((cpu1 - cpu0) / (t1 - t0) * 100, 1),
        "connect_s": round(connected_after, 1),
        "client_procs": args.client_procs,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "cores": os.cpu_count(),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
