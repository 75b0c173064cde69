"""The broker's CPU and the input lag under a real-time feed: `python -m bench.broker [--linger-ms 10 50]`.

For each producer linger, on topics of its own: the synthetic feed publishes `--rate` trades/s
for `--seconds` stamped with the wall clock (`--realtime`), while one consumer (the flows' fetch
wait, `fetch.wait.max.ms` 25) reads all partitions and takes, per trade, the wall clock at
receipt minus the trade's time. Prints the broker's CPU per interval (from /proc, so the broker
must run on this machine: `make broker`) and the lag's quantiles.

Why it matters here: Tansu's memory storage keeps every produced batch as an object and lists all
of a partition's objects on each fetch, so its CPU per fetch grows with the topic, and smaller
batches (a shorter linger) make both more objects and more fetches. Writes `bench/broker.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import msgspec
from confluent_kafka import TopicPartition

from bench.ohlcv import ROOT, bench_settings, cpu_model, env_for, load_average
from connectors.kafka import clients
from connectors.kafka.admin import ensure_topics

OUT = ROOT / "bench" / "broker.json"
_HZ = os.sysconf("SC_CLK_TCK")


class _Stamp(msgspec.Struct):
    t: int | None = None  # the trade's SIP time, ms (Polygon's `t`)


def broker_pid() -> int:
    """The local Tansu broker's process (what `make broker` started)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if "tansu" in Path(command.decode(errors="replace")).name:
                return int(entry.name)
    raise SystemExit("no Tansu process on this machine: start it with `make broker`")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _HZ


def one_run(linger_ms: int, rate: int, seconds: int, interval_s: float, database_url: str) -> dict:
    s = bench_settings(uuid.uuid4().hex[:6] + "b", database_url)
    ensure_topics(s)
    consumer = clients.consumer(s, {"group.id": "bench-broker", "enable.auto.commit": False, "fetch.wait.max.ms": 25})
    consumer.assign([TopicPartition(s.topic_trades, p, 0) for p in range(s.topic_partitions)])
    decode = msgspec.json.Decoder(_Stamp).decode
    lags: list[float] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for m in consumer.consume(1000, 0.05):
                value = m.value()
                stamp = decode(value).t if m.error() is None and value else None
                if stamp is not None:
                    lags.append(time.time() * 1000 - stamp)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pid = broker_pid()
    env = env_for(s) | {"KAFKA_PROPERTY_PRODUCER_LINGER_MS": str(linger_ms)}
    feeder = subprocess.Popen(
        [sys.executable, "-m", "connectors.feeds.synthetic", "--realtime", "--symbols", "4000", "--rate", str(rate),
         "--seconds", str(seconds), "--out-of-order-ratio", "0", "--late-ratio", "0", "--duplicate-ratio", "0"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    per_interval = []
    last = cpu_s(pid)
    while feeder.poll() is None:
        time.sleep(interval_s)
        now = cpu_s(pid)
        per_interval.append(round((now - last) / interval_s * 100, 1))
        last = now
    time.sleep(1)
    stop.set()
    reader.join(5)
    consumer.close()
    if feeder.returncode != 0:
        raise SystemExit(f"the feed failed:\n{feeder.stderr.read()[-2000:]}")  # type: ignore[union-attr]
    lags.sort()
    if not lags:
        raise SystemExit("no trade came back from the broker")

    def q(x: float) -> float:
        return round(lags[min(len(lags) - 1, int(len(lags) * x))], 1)

    return {
        "linger_ms": linger_ms,
        "trades": len(lags),
        "broker_cpu_pct_per_interval": per_interval,
        "lag_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--linger-ms", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rate", type=int, default=4000, help="trades per second, stamped with the wall clock")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--interval-s", type=float, default=5.0, help="broker CPU sampled this often")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    database_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tickstock")
    result: dict = {"cpu_model": cpu_model(), "load_average_before": load_average(), "runs": []}
    for linger in args.linger_ms:
        run = one_run(linger, args.rate, args.seconds, args.interval_s, database_url)
        print(f"linger {linger} ms: broker CPU % of a core per {args.interval_s:g} s {run['broker_cpu_pct_per_interval']}; "
              f"lag p50 {run['lag_ms']['p50']} ms, p90 {run['lag_ms']['p90']} ms, p99 {run['lag_ms']['p99']} ms "
              f"({run['trades']:,} trades)", flush=True)  # fmt: skip
        result["runs"].append(run)
    result["load_average_after"] = load_average()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
