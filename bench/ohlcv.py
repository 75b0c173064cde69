"""`make bench`: synthetic ticks for 4,000 symbols through Kafka, the flow and both sinks.

Measures, in one run and on the same messages:
- `raw_consume_per_s`: confluent-kafka reading every message (`.value()`), no processing;
- `ticks_per_s`: the flow (one process) from first poll to the last bar in PostgreSQL and on Redis,
  detection off (`DETECT_ENABLED=false`);
- `ticks_per_s_with_detection`: the same messages with every detector on: the bar flow (with its
  session highs/lows) and the detection flow beside it, until the last bar's indicator values
  are in PostgreSQL (`detection_cost_pct`: the throughput it costs);
- `p99_bar_latency_ms`: with a real-time feed, from a minute's end plus the close delay to its
  bar arriving on Redis (the sink writes PostgreSQL first, so it is in the table by then);
  `latency_by_boundary`: each minute's p99 and the coarsest bucket its close closes too;
- `decode_floor_us_per_tick`: the least any Python consumer of this JSON pays per tick: CPU of
  msgspec decoding the same message values into `schemas.polygon.Trade`, the cheaper of one call
  per value and one call per joined batch; `flow_cpu_per_tick_x_floor` is the bar flow's CPU per
  tick (detection off) as a multiple of it, `detection_cpu_us_per_bar` the detection flow's CPU
  per bar. Machines differ (per-core speed varies 2x between runs of this kind), so these
  same-run ratios are the figures to compare, with `load_average_before`/`_after` and `cpu_model`.
Writes `bench/results.json`.

`--latency-only` runs the real-time phase alone (`--latency-seconds 100` from a minute's 30 s: two
minute boundaries in ~2 minutes; `--no-detection`: the bar flow alone) with the bar flow's stage
marks on (`connectors.sinks.stages`), and prints each boundary's breakdown: when each partition's
book closed the minute, when the final-bar sink got the batches, PostgreSQL and Redis done (wall
and the writer thread's CPU), the arrivals, and a timeline of every mark around the boundary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import psycopg
import redis
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from connectors.feeds.synthetic import FeedEvent, generate
from connectors.kafka import clients
from connectors.kafka.admin import ensure_topics
from connectors.kafka.producer import make_producer
from flows.settings import Settings
from infra.databases import ensure_database
from infra.migrate import up
from schemas.bars import decode_bar
from schemas.polygon import Trade

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"


def bench_settings(run: str, database_url: str, **overrides: object) -> Settings:
    return Settings(
        topic_trades=f"bench{run}.trades",
        topic_quotes=f"bench{run}.quotes",
        topic_second_aggs=f"bench{run}.aggs.second",
        topic_minute_aggs=f"bench{run}.aggs.minute",
        topic_dead_letter=f"bench{run}.deadletter",
        topic_bars=f"bench{run}.bars",
        redis_namespace=f"bench{run}",
        database_url=database_url,
        **{"bar_flow_ops_port": 0, "detection_flow_ops_port": 0, **overrides},  # type: ignore[arg-type]
    )


def env_for(s: Settings) -> dict[str, str]:
    return os.environ | s.as_env()


def publish_events(s: Settings, events: Iterable[FeedEvent]) -> int:
    """Every event's value onto the trades topic (idempotent producer, waiting while its queue is full)."""
    producer, delivery = make_producer(s, idempotent=True)
    n = 0
    for e in events:
        try:
            producer.produce(s.topic_trades, e.value, e.key)
        except BufferError:
            producer.flush(5)
            producer.produce(s.topic_trades, e.value, e.key)
        n += 1
        if not n & 0x3FF:
            producer.poll(0)
    if producer.flush(60) or delivery.failed:
        raise SystemExit(f"publishing failed: {delivery.first_error}")
    return n


def publish_ticks(s: Settings, symbols: int, ticks: int) -> int:
    return publish_events(s, generate(seed=42, symbols=symbols, rate=2000.0, count=ticks))


def raw_consume(s: Settings, expected: int, keep: list[bytes] | None = None) -> float:
    """confluent-kafka alone on the same topic, with the flow's consumer settings; the values go to
    `keep` (after the clock stops counting them: appending is outside what a consumer must do)."""
    consumers = []
    for p in range(s.topic_partitions):
        c = clients.consumer(s, {"group.id": "bench-raw", "enable.auto.commit": False,
                                 "enable.partition.eof": True, "fetch.max.bytes": 52_428_800,
                                 "max.partition.fetch.bytes": 10_485_760, "queued.min.messages": 200_000})  # fmt: skip
        c.assign([TopicPartition(s.topic_trades, p, OFFSET_BEGINNING)])
        consumers.append(c)
    started = time.perf_counter()
    seen, live = 0, list(consumers)
    while live:
        for c in list(live):
            for m in c.consume(s.kafka_batch_size, 0.001):
                if m.error() is None:
                    value = m.value()
                    seen += 1
                    if keep is not None:
                        keep.append(value)  # type: ignore[arg-type]  # a value of a message without error is bytes
                else:
                    live.remove(c)
                    break
    elapsed = time.perf_counter() - started
    for c in consumers:
        c.close()
    if seen != expected:
        raise SystemExit(f"raw consume saw {seen} messages, expected {expected}")
    return seen / elapsed


def decode_floor_us(values: list[bytes], batch: int) -> dict[str, float]:
    """CPU per value of msgspec decoding `values` into the trade struct: one `decode` per value (as a
    consumer handed one record at a time), and one per `batch` values joined into a JSON array (what
    a consumer that decodes its whole poll at once pays, the join included). The floor is the lesser."""
    one = msgspec.json.Decoder(Trade)
    many = msgspec.json.Decoder(list[Trade])
    started = time.process_time()
    for value in values:
        one.decode(value)
    per_value = time.process_time() - started
    started = time.process_time()
    for i in range(0, len(values), batch):
        many.decode(b"[" + b",".join(values[i : i + batch]) + b"]")
    per_batch = time.process_time() - started
    n = len(values)
    return {
        "decode_us_per_tick_one_by_one": round(per_value / n * 1e6, 3),
        "decode_us_per_tick_batched": round(per_batch / n * 1e6, 3),
        "decode_floor_us_per_tick": round(min(per_value, per_batch) / n * 1e6, 3),
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    return f"unknown x {os.cpu_count()}"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_flow_to_end(s: Settings, detection: bool) -> dict:
    """The bar flow over the whole topic; with detection, the detection flow beside it until it caught up.

    The detection flow starts first and waits on the empty bars topic, so its start-up is not
    timed; the figure runs from the bar flow's first poll to the moment the last bar's indicator
    values are in PostgreSQL (and its events on Redis before that bar's: the sink writes in order).
    """
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE ohlcv_1min, symbols, events, indicator_values, alerts")
    env = env_for(s) | {"DETECT_ENABLED": str(detection).lower()}
    detector = None
    if detection:
        tailing = env | {"KAFKA_TAIL": "true"}
        detector = subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.detection:build_flow()"], env=tailing,
                                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(3)  # imports, connections, partitions assigned
    out = subprocess.run(
        [sys.executable, "-m", "bench.flow_timer"], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"flow failed:\n{out.stderr[-3000:]}")
    timed = json.loads(out.stdout.strip().splitlines()[-1])
    if detector is not None:
        caught_up = _wait_for_detection(s, detector)
        timed["bar_flow_s"] = timed["elapsed_s"]
        timed["elapsed_s"] = caught_up - timed["started_at"]
        cpu_s, peak_mb = _process_usage(detector.pid)  # it tails: read its usage, then stop it
        detector.kill()
        detector.wait(30)
        timed["cpu_s"] += cpu_s
        timed["detection_cpu_s"] = cpu_s
        timed["detection_peak_rss_mb"] = peak_mb
    return timed


def _process_usage(pid: int) -> tuple[float, float]:
    """CPU seconds (all threads, since start) and peak RSS in MB of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = Path(f"/proc/{pid}/status").read_text()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return cpu_s, peak_kb / 1024


def _wait_for_detection(s: Settings, detector: subprocess.Popen) -> float:
    """When the detection flow has indicator values for every bar with prices (wall clock)."""
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        target = conn.execute("SELECT count(*) FROM ohlcv_1min WHERE close IS NOT NULL").fetchone()[0]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if detector.poll() is not None:
                raise SystemExit(f"detection flow exited early:\n{detector.stderr.read()[-3000:]}")  # type: ignore[union-attr]
            if conn.execute("SELECT count(*) FROM indicator_values").fetchone()[0] >= target:
                return time.time()
            time.sleep(0.02)
    raise SystemExit("the detection flow did not catch up within 10 minutes")


class BarArrivals:
    """Wall-clock arrival time of every final bar on the all-symbols channel."""

    def __init__(self, s: Settings) -> None:
        self._pubsub = redis.Redis.from_url(s.redis_url).pubsub()
        self._pubsub.subscribe(f"{s.redis_namespace}.market.ohlcv")
        self._pubsub.get_message(timeout=5)
        self.arrivals: list[tuple[float, bytes]] = []
        self.failure: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        # A timeout of a second: a shorter one expired in the middle of a message on a loaded
        # machine (redis-py raises then, and the subscription is broken), and the run went on
        # without the rest of the bars. A failure now fails the run (`stop`).
        try:
            while not self._stop.is_set():
                m = self._pubsub.get_message(timeout=1.0)
                if m is not None and m["type"] == "message":
                    self.arrivals.append((time.time(), m["data"]))
        except Exception as exc:  # noqa: BLE001 - reported by stop(), the run's result would be wrong
            self.failure = exc

    def settle(self, quiet_s: float, max_s: float) -> None:
        """Wait until nothing arrived for `quiet_s` (at most `max_s`): a boundary whose last bars take
        longer than the fixed wait would otherwise lose them, and its slowest bars with them."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            last = self.arrivals[-1][0] if self.arrivals else 0.0
            if time.time() - last >= quiet_s:
                return
            time.sleep(0.1)

    def stop(self) -> list[tuple[float, bytes]]:
        self._stop.set()
        self._thread.join(5)
        if self.failure is not None:
            raise SystemExit(f"listening for bars on Redis failed ({self.failure!r}): the arrivals are incomplete")
        return self.arrivals


def bar_latency(s: Settings, symbols: int, rate: int, seconds: int, *, detection: bool = True,
                stage_log: Path | None = None) -> dict:  # fmt: skip
    """Real-time feed stamped with the wall clock; latency of each minute's final bars (revision 0).

    With `stage_log`, the bar flow writes its stage marks there (`connectors.sinks.stages`) and the
    result has each minute boundary's breakdown (`boundaries`)."""
    live = s.model_copy(update={"kafka_tail": True, "kafka_start": "earliest"})
    arrivals = BarArrivals(live)
    flow_env = env_for(live) | ({"STAGE_LOG": str(stage_log)} if stage_log is not None else {})
    flow_log = stage_log.with_suffix(".log").open("wb") if stage_log is not None else subprocess.DEVNULL
    flow = subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.ohlcv:build_flow()"], env=flow_env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=flow_log)  # fmt: skip
    processes = [flow]
    if detection:
        processes.append(subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.detection:build_flow()"],
                                          env=env_for(live), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
    feeder = subprocess.run(
        [sys.executable, "-m", "connectors.feeds.synthetic", "--realtime", "--symbols", str(symbols), "--rate", str(rate),
         "--seconds", str(seconds), "--out-of-order-ratio", "0", "--late-ratio", "0", "--duplicate-ratio", "0"],
        env=env_for(live), cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    time.sleep(live.bar_close_delay_s + 3)
    arrivals.settle(quiet_s=2.0, max_s=30.0)  # a slow boundary's last bars still count
    exited = flow.poll()
    for process in processes:
        process.terminate()
        process.wait(30)
    if stage_log is not None:
        flow_log.close()  # type: ignore[union-attr]  # a file when there is a stage log
        if exited is not None:
            tail = stage_log.with_suffix(".log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"the bar flow exited early ({exited}):\n{tail}")
    received = arrivals.stop()
    if feeder.returncode != 0:
        raise SystemExit(f"feeder failed:\n{feeder.stderr[-2000:]}")
    delay_ms = live.bar_close_delay_s * 1000
    latencies = []
    by_minute: dict[int, list[float]] = {}
    for at, data in received:
        bar = decode_bar(data)
        if bar.revision == 0:
            latency = at * 1000 - (bar.timestamp + 60_000 + delay_ms)
            latencies.append(latency)
            by_minute.setdefault(bar.timestamp, []).append(latency)
    latencies.sort()
    if not latencies:
        raise SystemExit("no final bar arrived during the latency run")
    result: dict = {
        "latency_bars": len(latencies),
        "p50_bar_latency_ms": round(_quantile(latencies, 0.5), 1),
        "p99_bar_latency_ms": round(_quantile(latencies, 0.99), 1),
        "max_bar_latency_ms": round(latencies[-1], 1),
        "latency_by_boundary": [
            {"minute": datetime.fromtimestamp(minute / 1000, UTC).strftime("%H:%M"), "closes": boundary_kind(minute),
             "bars": len(ms), "p99_ms": round(_quantile(sorted(ms), 0.99), 1)}
            for minute, ms in sorted(by_minute.items())
        ],
    }  # fmt: skip
    if stage_log is not None:
        result["boundaries"] = boundary_breakdown(_read_marks(stage_log), by_minute, delay_ms)
    return result


def boundary_kind(minute_ms: int) -> str:
    """The coarsest bucket the close of this minute (its start, epoch ms) also closes: a boundary where
    5-minute or coarser buckets close has their bars to publish and detect too.

    >>> [boundary_kind(m * 60_000) for m in (0, 4, 14, 59, 1439)]
    ['1m', '5m', '15m', '1h', '1d']
    """
    closes = "1m"
    for name, minutes in (("5m", 5), ("15m", 15), ("1h", 60), ("1d", 1440)):
        if (minute_ms // 60_000 + 1) % minutes == 0:
            closes = name
    return closes


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _read_marks(path: Path) -> list[dict]:
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line.strip()]


_WRITE_STAGES = ("write_start", "postgres_done", "publish_start", "redis_done")
# The marks of a boundary's window not shown one by one.
_TIMELINE_SKIP: set[str] = set()


def boundary_breakdown(marks: list[dict], arrivals: dict[int, list[float]], delay_ms: float) -> list[dict]:
    """Per minute whose final bars arrived: each stage's time after the minute's end plus the close delay (ms).

    - `closed`: the partition steps whose book closed the minute (first, last; their own duration);
    - `sink_in`: the final-bar sink handing batches to its writer (the first after the first close);
    - `write_start` / `postgres_done`: the writer thread storing that minute's batches, then
      `publish_start` / `redis_done`: the publisher thread publishing them;
    - `arrived`: the benchmark's subscriber (first, p50, p99, last);
    - `timeline`: every mark from 0.5 s before the boundary to the last arrival, to see what else ran.
    """
    out = []
    for minute, latencies in sorted(arrivals.items()):
        due = (minute + 60_000 + delay_ms) / 1000
        latencies.sort()
        last_arrival = due + latencies[-1] / 1000

        def rel(t: float, due: float = due) -> float:
            return round((t - due) * 1000, 1)

        closed = [m for m in marks if m["stage"] == "closed" and m.get("minute") == minute]
        mine = [m for m in marks if m.get("minute") == minute and m["stage"] in _WRITE_STAGES]
        first_close = min((m["t"] for m in closed), default=due)
        sink_in = [
            m
            for m in marks
            if m["stage"] == "sink_in" and m.get("sink") == "ohlcv_1min" and first_close <= m["t"] <= last_arrival
        ]
        window = [m for m in marks if due - 0.5 <= m["t"] <= last_arrival + 0.05 and m["stage"] not in _TIMELINE_SKIP]
        cpu = _writer_cpu(mine)
        entry: dict = {
            "minute": minute,
            **cpu,
            "bars": len(latencies),
            "closed_ms": [rel(m["t"]) for m in closed],
            "closed_step_ms": [round(m["took_s"] * 1000, 1) for m in closed],
            "sink_in_ms": [rel(m["t"]) for m in sink_in],
            **{f"{stage}_ms": [rel(m["t"]) for m in mine if m["stage"] == stage] for stage in _WRITE_STAGES},
            "arrived_ms": {"first": round(latencies[0], 1), "p50": round(_quantile(latencies, 0.5), 1),
                           "p99": round(_quantile(latencies, 0.99), 1), "last": round(latencies[-1], 1)},
            "timeline": [
                f"{rel(m['t']):+8.1f} {m['stage']:<18} {m['thread']:<14} "
                + " ".join(f"{k}={v}" for k, v in m.items() if k not in ("stage", "t", "thread"))
                for m in sorted(window, key=lambda m: m["t"])
            ],
        }  # fmt: skip
        out.append(entry)
    return out


def _writer_cpu(marks: list[dict]) -> dict:
    """The final-bar sink's wall and CPU time (ms): its writer thread from each write's start to
    PostgreSQL done, its publisher thread from each publish's start to Redis done."""
    pg_wall = pg_cpu = redis_wall = redis_cpu = 0.0
    stored = published = None
    for m in sorted(marks, key=lambda m: m["t"]):
        if m["stage"] == "write_start":
            stored = m
        elif m["stage"] == "postgres_done" and stored is not None:
            pg_wall += m["t"] - stored["t"]
            pg_cpu += m["cpu"] - stored["cpu"]
            stored = None
        elif m["stage"] == "publish_start":
            published = m
        elif m["stage"] == "redis_done" and published is not None:
            redis_wall += m["t"] - published["t"]
            redis_cpu += m["cpu"] - published["cpu"]
            published = None
    ms = {
        "postgres_wall_ms": pg_wall,
        "postgres_writer_cpu_ms": pg_cpu,
        "redis_wall_ms": redis_wall,
        "redis_writer_cpu_ms": redis_cpu,
    }
    return {k: round(v * 1000, 1) for k, v in ms.items()}


def print_breakdown(boundaries: list[dict]) -> None:
    for b in boundaries:
        when = datetime.fromtimestamp(b["minute"] / 1000, UTC).strftime("%H:%M")
        print(f"minute {when} ({b['bars']:,} final bars), ms after its end + close delay:")
        for key in ("closed_ms", "closed_step_ms", "sink_in_ms", *(f"{stage}_ms" for stage in _WRITE_STAGES)):
            print(f"  {key:<18} {b[key]}")
        print(f"  {'arrived_ms':<18} {b['arrived_ms']}")
        print(f"  sink: PostgreSQL {b['postgres_wall_ms']} ms ({b['postgres_writer_cpu_ms']} ms of its writer's CPU), "
              f"Redis {b['redis_wall_ms']} ms ({b['redis_writer_cpu_ms']} ms of its publisher's CPU)")  # fmt: skip
        for line in b["timeline"]:
            print(f"    {line}")


def latency_only(args: argparse.Namespace, database_url: str) -> int:
    """`--latency-only`: the real-time phase alone, with the per-stage breakdown (a try in ~2 minutes)."""
    load_before = load_average()
    run = uuid.uuid4().hex[:6]
    ls = bench_settings(run + "l", database_url)
    ensure_topics(ls)
    time.sleep((30 - time.time()) % 60)  # start at a minute's 30 s: boundaries 30 s and 90 s into the feed
    with tempfile.TemporaryDirectory() as tmp:
        stage_log = Path(tmp) / "stages.jsonl"
        result = bar_latency(ls, args.symbols, args.latency_rate, args.latency_seconds,
                             detection=not args.no_detection, stage_log=stage_log)  # fmt: skip
    boundaries = result.pop("boundaries")
    print_breakdown(boundaries)
    result |= {"detection": not args.no_detection, "load_average_before": load_before,
               "load_average_after": load_average(), "cpu_model": cpu_model()}  # fmt: skip
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=4000)
    parser.add_argument("--ticks", type=int, default=2_000_000)
    parser.add_argument("--latency-seconds", type=int, default=75, help="real-time phase; 0 skips it")
    parser.add_argument("--latency-rate", type=int, default=4000, help="events/s in the real-time phase")
    parser.add_argument("--latency-only", action="store_true",
                        help="only the real-time phase, with each minute boundary's per-stage breakdown; no results.json")  # fmt: skip
    parser.add_argument("--no-detection", action="store_true", help="with --latency-only: the bar flow alone")
    args = parser.parse_args(argv)

    database_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tickstock_bench")
    ensure_database(database_url)
    up(database_url, log=lambda *_: None)
    if args.latency_only:
        return latency_only(args, database_url)

    load_before = load_average()
    run = uuid.uuid4().hex[:6]
    s = bench_settings(run, database_url, kafka_tail=False)
    ensure_topics(s)
    t0 = time.perf_counter()
    ticks = publish_ticks(s, args.symbols, args.ticks)
    print(f"published {ticks:,} ticks for {args.symbols:,} symbols in {time.perf_counter() - t0:.1f} s", flush=True)
    values: list[bytes] = []
    raw = raw_consume(s, ticks, keep=values)
    print(f"raw consume: {raw:,.0f} msg/s", flush=True)
    floor = decode_floor_us(values, s.kafka_batch_size)
    del values
    print(f"decode floor: {floor['decode_floor_us_per_tick']} us/tick (one by one {floor['decode_us_per_tick_one_by_one']},"
          f" batched {floor['decode_us_per_tick_batched']})", flush=True)  # fmt: skip
    timed = run_flow_to_end(s, detection=False)
    ticks_per_s = ticks / timed["elapsed_s"]
    with psycopg.connect(database_url) as conn:
        bars = conn.execute("SELECT count(*) FROM ohlcv_1min").fetchone()[0]
    flow_us = timed["cpu_s"] / ticks * 1e6
    print(f"flow, detection off: {ticks_per_s:,.0f} ticks/s ({ticks_per_s / raw:.2f} x raw), {bars:,} bars, "
          f"{timed['cpu_s']:.2f} s CPU ({flow_us:.2f} us/tick, {flow_us / floor['decode_floor_us_per_tick']:.1f} x the"
          f" decode floor), peak RSS {timed['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    detected = run_flow_to_end(s, detection=True)
    with_detection = ticks / detected["elapsed_s"]
    with psycopg.connect(database_url) as conn:
        records = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("events", "indicator_values", "alerts")}
    cost = 100 * (1 - with_detection / ticks_per_s)
    cpu_cost = 100 * (1 - timed["cpu_s"] / detected["cpu_s"])
    print(f"flows, detection on: {with_detection:,.0f} ticks/s (costs {cost:.1f} %), {records}, "
          f"{detected['cpu_s']:.2f} s CPU in both flows ({cpu_cost:.1f} % of it detection; the detection flow "
          f"{detected['detection_cpu_s']:.2f} s); the bar flow took {detected['bar_flow_s']:.2f} s, the detection "
          f"flow caught up {detected['elapsed_s'] - detected['bar_flow_s']:.2f} s later", flush=True)  # fmt: skip

    results = {
        "symbols": args.symbols,
        "ticks": ticks,
        "ticks_per_s": round(ticks_per_s),
        "raw_consume_per_s": round(raw),
        "flow_to_raw_ratio": round(ticks_per_s / raw, 3),
        "bars_written": bars,
        "peak_rss_mb": round(timed["peak_rss_mb"], 1),
        "ticks_per_s_with_detection": round(with_detection),
        "detection_cost_pct": round(cost, 1),
        "detection_records_written": records,
        "peak_rss_mb_with_detection": round(detected["peak_rss_mb"], 1),
        "detection_flow_peak_rss_mb": round(detected["detection_peak_rss_mb"], 1),
        "flow_cpu_s": round(timed["cpu_s"], 2),
        "flows_cpu_s_with_detection": round(detected["cpu_s"], 2),
        **floor,
        "flow_cpu_us_per_tick": round(flow_us, 3),
        "flow_cpu_per_tick_x_floor": round(flow_us / floor["decode_floor_us_per_tick"], 2),
        "detection_cpu_us_per_bar": round(detected["detection_cpu_s"] / bars * 1e6, 1),
        "cpu_model": cpu_model(),
        "load_average_before": load_before,
    }
    if args.latency_seconds:
        ls = bench_settings(run + "l", database_url)
        ensure_topics(ls)
        results.update(bar_latency(ls, args.symbols, args.latency_rate, args.latency_seconds))
        boundaries = ", ".join(
            f"{b['minute']} (closes {b['closes']}) p99 {b['p99_ms']} ms" for b in results["latency_by_boundary"]
        )
        print(f"bar latency: p50 {results['p50_bar_latency_ms']} ms, p99 {results['p99_bar_latency_ms']} ms "
              f"over {results['latency_bars']:,} bars; by minute: {boundaries}", flush=True)  # fmt: skip
    results["load_average_after"] = load_average()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
