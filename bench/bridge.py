"""`make bench-bridge`: throughput of the Polygon bridge and the flat-file replay, into real Kafka.

The fake feed is `tests.support.polygon_server` serving synthetic trades and quotes (4,000 symbols) in
text frames of 1..100 mixed events (about 50 on average), with the permessage-deflate
compression the official client negotiates by default. Every client runs in its own process.

- `fake_feed_events_per_s`: the feed read by a bare websockets client that does nothing with
  the frames: the fastest the feed goes on this machine;
- `bridge_events_per_s`: the same feed through `python -m connectors.feeds.bridge`, from its
  subscription until Kafka acknowledged every event;
- `bridge_cpu_us_per_event` / `feed_cpu_us_per_event` / `reader_cpu_us_per_event`: CPU time per
  event of the bridge's Python thread, of the feed server's thread and of the bare reader (the
  WebSocket's own share of the bridge's cost). On 2 cores the feed server, the bridge (and its Kafka
  thread) and the broker share the cores, so `bridge_events_per_s` is bounded by the machine;
  `bridge_capacity_events_per_s` (1e6 / bridge_cpu_us_per_event) is what the bridge forwards
  with a core of its own, to compare with the feed's rate;
- `peak_*`: the feed paced at `--peak-rate` events/s (20x the all-market average of ~10,000/s)
  and the rate the bridge forwarded it at;
- `replay_events_per_s`: `connectors.feeds.replay` on a gzipped trades_v1 file, parse + encode + publish;
  `replay_encode_events_per_s`: parse + encode only.
Writes `bench/bridge.json`; `load_average` is the 1-minute load when the run started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from connectors.feeds.flat_files import flat_file_events
from connectors.feeds.replay import replay
from connectors.feeds.synthetic import generate
from tests.support.fixtures.flat_files import write_trades_flat_file
from tests.support.polygon_server import PolygonServer
from tests.support.services import base_settings, create_topics

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench"
FRAME_MAX = 100  # events per frame: 1..100, about 50 on average


def feed(n: int) -> list[dict[str, object]]:
    return [orjson.loads(e.value) for e in generate(seed=5, count=n, symbols=4000, quote_ratio=0.5, rate=2000)]


def frames(events: list[dict[str, object]], max_size: int = FRAME_MAX) -> list[list[dict[str, object]]]:
    """Frames of 1..max_size events (seeded), mixing event types, as Polygon batches them."""
    rng = random.Random(7)
    out, i = [], 0
    while i < len(events):
        n = rng.randint(1, max_size)
        out.append(events[i : i + n])
        i += n
    return out


async def _read_all(url: str, n_frames: int) -> tuple[float, float]:
    """A bare client: handshake, then receive `n_frames` frames doing nothing with them."""
    async with connect(url, max_size=None) as ws:
        await ws.recv()
        await ws.send(orjson.dumps({"action": "auth", "params": KEY}).decode())
        await ws.recv()
        await ws.send(orjson.dumps({"action": "subscribe", "params": "T.*,Q.*"}).decode())
        await ws.recv()
        started, cpu = time.monotonic(), time.thread_time()
        for _ in range(n_frames):
            await ws.recv()
        return time.monotonic() - started, time.thread_time() - cpu


def read_feed(url: str, n_frames: int) -> None:
    """Entry point of the bare reader's process: prints the seconds it took and its CPU seconds."""
    print(json.dumps(asyncio.run(_read_all(url, n_frames))))


def _cpu_s(stat_path: str) -> float:
    """utime + stime of a process or thread from /proc."""
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_cpu(server: PolygonServer) -> float:
    return _cpu_s(f"/proc/self/task/{server.thread_id}/stat")


def fake_feed_rate(events: list[dict[str, object]]) -> dict[str, float]:
    """The feed read by a bare client in its own process, as the bridge is (no shared GIL)."""
    fs = frames(events)
    with PolygonServer(KEY, fs) as server:
        code = f"from bench.bridge import read_feed; read_feed({server.url!r}, {len(fs)})"
        cpu = _server_cpu(server)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
        cpu = _server_cpu(server) - cpu
    elapsed, reader_cpu = json.loads(out.stdout)
    return {"fake_feed_events_per_s": len(events) / elapsed, "feed_cpu_us_per_event": cpu / len(events) * 1e6,
            "reader_cpu_us_per_event": reader_cpu / len(events) * 1e6}  # fmt: skip


def bridge_rate(events: list[dict[str, object]], rate: float | None = None) -> dict[str, float]:
    """From subscription until the bridge's health line counts every event acknowledged by Kafka."""
    s = base_settings()
    create_topics(s)
    with PolygonServer(KEY, frames(events), rate=rate) as server:
        env = os.environ | s.as_env() | {"MASSIVE_API_KEY": KEY, "MASSIVE_URL": server.url,
                                         "BRIDGE_HEALTH_INTERVAL_S": "0.05", "BRIDGE_OPS_PORT": "0"}  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "connectors.feeds.bridge"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        main_thread = f"/proc/{proc.pid}/task/{proc.pid}/stat"
        started, cpu, acked = 0.0, 0.0, 0
        assert proc.stderr is not None
        for line in proc.stderr:
            if not started and "subscribed to" in line:
                started, cpu = time.monotonic(), _cpu_s(main_thread)
            found = re.search(r" acked=(\d+)", line)
            acked = int(found.group(1)) if found else acked
            if started and acked >= len(events):
                break
        elapsed = time.monotonic() - started
        cpu = _cpu_s(main_thread) - cpu
        proc.terminate()
        proc.communicate(timeout=60)
    if acked < len(events):
        raise SystemExit(f"bench: the bridge stopped after {acked} of {len(events)} events (exit {proc.returncode})")
    return {"events_per_s": len(events) / elapsed, "cpu_us_per_event": cpu / len(events) * 1e6}


def replay_rates(n: int) -> tuple[float, float]:
    values = [e.value for e in generate(seed=6, count=n, symbols=4000) if e.topic_kind == "trades"]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_trades_flat_file(Path(tmp) / "trades_v1.csv.gz", values)
        started = time.monotonic()
        flat_file_events(path)
        encode = len(values) / (time.monotonic() - started)
        s = base_settings()
        create_topics(s)
        started = time.monotonic()
        sent = replay([path], settings=s)
        return sent / (time.monotonic() - started), encode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events through the bridge")
    parser.add_argument("--peak-rate", type=float, default=200_000, help="paced feed rate, events/s (0: skip)")
    parser.add_argument("--replay-events", type=int, default=1_000_000, help="trades in the flat file")
    args = parser.parse_args()
    result: dict[str, float | int] = {"load_average": round(os.getloadavg()[0], 2)}
    events = feed(args.events)
    result["events"] = len(events)
    result |= fake_feed_rate(events)
    bridge = bridge_rate(events)
    result |= {"bridge_events_per_s": bridge["events_per_s"], "bridge_cpu_us_per_event": bridge["cpu_us_per_event"],
               "bridge_capacity_events_per_s": 1e6 / bridge["cpu_us_per_event"]}  # fmt: skip
    if args.peak_rate:
        peak = bridge_rate(events, rate=args.peak_rate)
        result |= {"peak_feed_events_per_s": args.peak_rate, "peak_bridge_events_per_s": peak["events_per_s"]}
    replay_per_s, encode_per_s = replay_rates(args.replay_events)
    result |= {"replay_events": args.replay_events, "replay_events_per_s": replay_per_s,
               "replay_encode_events_per_s": encode_per_s}  # fmt: skip
    result = {k: round(v, 2) if k.endswith("_us_per_event") or k == "load_average" else round(v)
              for k, v in result.items()}  # fmt: skip
    out = Path(__file__).with_name("bridge.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
