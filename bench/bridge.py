"""`make bench-bridge`: throughput of the Polygon bridge and the flat-file replay, into real Kafka.

- `fake_feed_events_per_s`: the local protocol server alone, read by a bare websockets client
  (the ceiling the bridge measurement is under);
- `bridge_events_per_s`: `python -m connectors.polygon_bridge` from its subscription until Kafka
  acknowledged every event (frames of 100 mixed events);
- `replay_events_per_s`: `connectors.replay` on a gzipped trades_v1 file, parse + encode + publish;
  `replay_encode_events_per_s`: parse + encode only.
Writes `bench/bridge.json`.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from connectors.replay import flat_file_events, replay
from connectors.synthetic import generate
from tests.conftest import base_settings, create_topics
from tests.polygon_server import PolygonServer
from tests.test_replay import write_trades_flat_file

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench"


def feed(n: int) -> list[dict[str, object]]:
    return [orjson.loads(e.value) for e in generate(seed=5, count=n, symbols=4000, quote_ratio=0.5, rate=2000)]


def frames(events: list[dict[str, object]], size: int = 100) -> list[list[dict[str, object]]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


async def _read_all(url: str, n_frames: int) -> None:
    async with connect(url, max_size=None) as ws:
        await ws.recv()
        await ws.send(orjson.dumps({"action": "auth", "params": KEY}))
        await ws.recv()
        await ws.send(orjson.dumps({"action": "subscribe", "params": "T.*,Q.*"}))
        await ws.recv()
        for _ in range(n_frames):
            await ws.recv()


def fake_feed_rate(events: list[dict[str, object]]) -> float:
    fs = frames(events)
    with PolygonServer(KEY, fs) as server:
        started = time.monotonic()
        asyncio.run(_read_all(server.url, len(fs)))
        return len(events) / (time.monotonic() - started)


def bridge_rate(events: list[dict[str, object]]) -> float:
    """From subscription until the bridge's health line counts every event acknowledged by Kafka."""
    s = base_settings()
    create_topics(s)
    with PolygonServer(KEY, frames(events)) as server:
        env = os.environ | s.as_env() | {"MASSIVE_API_KEY": KEY, "MASSIVE_URL": server.url, "BRIDGE_HEALTH_INTERVAL_S": "0.1"}
        proc = subprocess.Popen([sys.executable, "-m", "connectors.polygon_bridge"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        started = None
        assert proc.stderr is not None
        for line in proc.stderr:
            if started is None and "subscribed to" in line:
                started = time.monotonic()
            acked = re.search(r" out=(\{.*?\})", line)
            if started is not None and acked and sum(ast.literal_eval(acked.group(1)).values()) >= len(events):
                break
        elapsed = time.monotonic() - (started or 0)
        proc.terminate()
        proc.communicate(timeout=30)
    return len(events) / elapsed


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
    parser.add_argument("--events", type=int, default=200_000, help="events through the bridge")
    parser.add_argument("--replay-events", type=int, default=1_000_000, help="trades in the flat file")
    args = parser.parse_args()
    events = feed(args.events)
    result = {"events": len(events), "fake_feed_events_per_s": round(fake_feed_rate(events))}
    result["bridge_events_per_s"] = round(bridge_rate(events))
    replay_per_s, encode_per_s = replay_rates(args.replay_events)
    result |= {"replay_events": args.replay_events, "replay_events_per_s": round(replay_per_s),
               "replay_encode_events_per_s": round(encode_per_s)}  # fmt: skip
    out = Path(__file__).with_name("bridge.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
