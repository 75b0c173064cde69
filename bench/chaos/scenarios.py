"""Chaos scenarios on a live feed: one fault each, compared with the oracle and an uninterrupted run.

A scenario publishes a deterministic synthetic feed (`connectors.feeds.synthetic.generate`) paced to
the wall clock while both flows tail their topics with recovery stores, applies its fault, waits
for the outputs to catch up, then compares (see `compare`). Event time runs `speed` times faster
than the wall clock and ends at a minute boundary no later than the wall clock, so a few wall
minutes hold several bars per symbol, no event is ever ahead of the wall clock, and the last
minute closes a few seconds after the feed stops.

Faults: `kill9` (SIGKILL a flow at random points, restart it from its recovery store each time),
`broker` / `postgres` / `redis` (a TCP proxy the flows connect through resets every connection
and refuses new ones for the outage, then lets them through again; the broker is a private Tansu
advertising the proxy), `poison` (records of every hostile class mixed into the live feed, on the
trades topic and on the bars topic).

Over 400 lines on purpose: a scenario is one sequence (set up, feed, fault, drain, compare,
baseline) that reads top to bottom; its parts (`live`, `compare`) are modules of their own.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.chaos import compare
from bench.chaos.live import (
    BAR_FLOW,
    DETECTION_FLOW,
    Feeder,
    FinalBarRecorder,
    FlowProcess,
    Record,
    Supervisor,
    flow_env,
    free_port,
    port_of,
    wall_ms,
    with_port,
)
from bench.chaos.mutate import YEAR_2099_MS, YEAR_10000_MS, Raw, deep, dumps
from connectors.kafka.settings import KafkaSettings
from tests.support.proxy import start_tansu

MINUTE_MS = 60_000


@dataclass(frozen=True)
class Profile:
    """How long and how big: the full `make chaos`, or the short version `make test` runs."""

    name: str
    wall_s: float  # feed duration of an outage or poison scenario (wall clock)
    speed: float  # event seconds per wall second
    kill_wall_s: float
    kill_speed: float
    kills: int  # per flow
    symbols: int
    event_rate: float  # events per event second
    outage_s: float
    snapshot_s: float  # bytewax -s
    sink_max_backoff_s: float | None  # None: the flows' default
    drain_timeout_s: float
    stall_s: float  # give up waiting for the outputs when nothing changed this long
    baseline_for_outages: bool
    history_bars: int  # bars per symbol in the database before the feed (the detectors warm-start from them)
    fuzz_records: int  # mutated records per decoder
    fuzz_examples: int  # hypothesis examples (lists of records) per decoder


FULL = Profile("full", wall_s=120, speed=3, kill_wall_s=240, kill_speed=2, kills=10, symbols=50, event_rate=40,
               outage_s=30, snapshot_s=5, sink_max_backoff_s=None, drain_timeout_s=240, stall_s=45,
               baseline_for_outages=True, history_bars=200, fuzz_records=100_000, fuzz_examples=2_000)  # fmt: skip
# The short profile is `make test`'s (tests/integration/test_chaos*.py): its fuzz counts are sized to that
# budget (8,000 records per decoder still bring every mutation class hundreds of times); the full run
# and TICKSTOCK_HYPOTHESIS=deep in the tests use FULL's.
SHORT = Profile("short", wall_s=20, speed=10, kill_wall_s=24, kill_speed=10, kills=1, symbols=30, event_rate=20,
                outage_s=5, snapshot_s=2, sink_max_backoff_s=1.0, drain_timeout_s=60, stall_s=15,
                baseline_for_outages=False, history_bars=200, fuzz_records=8_000, fuzz_examples=150)  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str  # kill9 | broker | postgres | redis | poison
    kill: tuple[str, ...] = ()  # for kill9: the flows to kill ("bar", "detection")
    description: str = ""
    outage_s: float = 0.0  # for outages
    baseline: bool = True  # compare detection (and revisions) with an uninterrupted run


def scenarios(profile: Profile) -> list[Scenario]:
    from flows.settings import Settings

    kills = f"{profile.kills} random point{'s' if profile.kills > 1 else ''}"
    out = (
        [Scenario("kill9_bar_flow", "kill9", ("bar",), f"kill -9 of the bar flow at {kills}, restarted from its recovery store"),
         Scenario("kill9_detection_flow", "kill9", ("detection",), f"kill -9 of the detection flow at {kills}, restarted")]
        if profile.kills > 1 else
        [Scenario("kill9_both_flows", "kill9", ("bar", "detection"), "kill -9 of each flow once, restarted from its recovery store")]
    )  # fmt: skip
    # A broker outage shorter than the idle advance would not show whether a partition mistakes the
    # outage for silence (closing its bars early), so it lasts at least twice that, with the
    # uninterrupted run compared, in the short version too.
    broker_s = max(profile.outage_s, 2 * Settings().idle_advance_s)
    outage, base = profile.outage_s, profile.baseline_for_outages
    return [
        *out,
        Scenario("broker_outage", "broker", description=f"{broker_s:.0f} s broker outage (TCP proxy in front of a private Tansu)",
                 outage_s=broker_s),
        Scenario("postgres_outage", "postgres", outage_s=outage, baseline=base,
                 description=f"{outage:.0f} s PostgreSQL outage (TCP proxy: connections cut, new ones refused)"),
        Scenario("redis_outage", "redis", outage_s=outage, baseline=base,
                 description=f"{outage:.0f} s Redis outage (TCP proxy: connections cut, new ones refused)"),
        Scenario("poison", "poison", description="poison records of every class in the live feed (trades and bars topics)"),
    ]  # fmt: skip


@dataclass
class Environment:
    """Where a scenario runs: the servers, its two databases (live run, uninterrupted run), a work directory."""

    bootstrap: str
    redis_url: str
    database_url: str  # the live run's
    baseline_database_url: str
    workdir: Path
    seed: int = 1
    log: Callable[[str], None] = print

    def prepare(self) -> None:
        from infra.databases import ensure_database
        from infra.migrate import up

        for url in (self.database_url, self.baseline_database_url):
            ensure_database(url)
            up(url, log=lambda *_: None)
        self.workdir.mkdir(parents=True, exist_ok=True)


def truncate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE ohlcv_1min, symbols, events, indicator_values, alerts")


@dataclass
class Window:
    """A fault, in seconds after the feed started; `recover_s`: from its end until the outputs caught up."""

    what: str
    start_s: float
    end_s: float
    recover_s: float | None = None


# ---- the feed and the poison -----------------------------------------------------------------


def feed_records(settings: Any, profile: Profile, seed: int, wall_s: float, speed: float) -> tuple[list[Record], int]:
    """The synthetic feed for one scenario, each record due at its event time / `speed`; returns (records, start_ms)."""
    from connectors.feeds.synthetic import generate

    ends_by = wall_ms() + 3_000 + int(wall_s * 1000)  # the feed starts within a few seconds of now
    end_ms = ends_by - ends_by % MINUTE_MS
    event_s = wall_s * speed
    start_ms = end_ms - int(event_s * 1000)
    records = []
    for e in generate(seed=seed, symbols=profile.symbols, rate=profile.event_rate, seconds=event_s, start_ms=start_ms,
                      duplicate_ratio=0.01, out_of_order_ratio=0.02, late_ratio=0.01, too_late_ratio=0.003,
                      malformed_ratio=0.005):  # fmt: skip
        if e.label == "too_late" and e.clock_ms < start_ms + 30_000:
            continue  # before a partition has a watermark a too-late trade is not late yet
        expect = {"malformed": ("malformed",), "too_late": ("too_late",)}.get(e.label)
        records.append(Record(settings.topic_trades, e.key, e.value, e.label, e.clock_ms, expect=expect,
                              due_s=(e.clock_ms - start_ms) / 1000 / speed))  # fmt: skip
    return records, start_ms


def poison_records(
    settings: Any, feed: list[Record], start_ms: int, wall_s: float, speed: float, rng: random.Random
) -> list[Record]:
    """One record of every hostile class, due at random points of the feed's middle, on feed symbols' partitions."""
    import orjson

    trades = [orjson.loads(r.value) for r in feed if r.label == "trade"]  # type: ignore[arg-type]
    symbols = sorted({t["sym"] for t in trades})
    price = {t["sym"]: t["p"] for t in trades}
    out: list[Record] = []

    def add(topic: str, cls: str, value: bytes | None, expect: tuple[str, ...] | None, symbol: str | None = None,
            any_outcome: bool = False) -> None:  # fmt: skip
        due = rng.uniform(0.3, 0.7) * wall_s
        key = (symbol or rng.choice(symbols)).encode()
        out.append(Record(topic, key, value, f"poison:{cls}", start_ms + int(due * speed * 1000), expect=expect,
                          any_outcome=any_outcome, due_s=due))  # fmt: skip

    def trade(n: int, **fields: Any) -> bytes:
        symbol = rng.choice(symbols)
        base = {"ev": "T", "sym": symbol, "x": 4, "i": f"poison{n}", "z": 1, "p": price[symbol], "s": 100,
                "t": start_ms + int(0.5 * wall_s * speed * 1000)}  # fmt: skip
        return dumps(base | fields)

    t = settings.topic_trades
    now_clock = start_ms + int(0.5 * wall_s * speed * 1000)
    add(t, "tombstone", None, ("malformed",))
    add(t, "arbitrary_bytes", bytes(rng.getrandbits(8) for _ in range(64)), ("malformed",))
    add(t, "empty_value", b"", ("malformed",))
    add(t, "trade_1h_ahead", trade(1, t=wall_ms() + 3_600_000 + int(wall_s * 1000)), ("future",))
    add(t, "trade_in_2099", trade(2, t=YEAR_2099_MS), ("future",))
    add(t, "trade_in_year_10000", trade(3, t=YEAR_10000_MS), ("future", "malformed"))
    add(t, "size_over_2^63", trade(4, s=2**63 + 7), ("malformed", "rejected"))
    add(t, "size_over_2^64", trade(5, s=2**64 + 7), ("malformed",))
    add(t, "record_of_1MB", trade(6, pad="x" * 998_000), ("too_large", "malformed"))
    add(t, "price_NaN", trade(7, p=Raw(b"NaN")), ("malformed",))
    add(t, "price_Infinity", trade(8, p=Raw(b"Infinity")), ("malformed",))
    add(t, "price_1e999", trade(9, p=Raw(b"1e999")), ("malformed",))
    add(t, "unicode_symbol", trade(10, sym="ÄPPL"), ("malformed",))
    add(t, "emoji_symbol", trade(11, sym="🚀"), ("malformed",))
    add(t, "zero_width_symbol", trade(12, sym="A\u200bB"), ("malformed",))
    add(t, "unknown_condition", trade(13, c=[999]), ("unknown_condition",))
    add(t, "invalid_utf8_symbol", trade(14, sym="AA\x00PL").replace(b"\\u0000", b"\xff"), ("malformed",))
    add(t, "deep_nesting", trade(15, zz=deep(100_000)), ("too_large", "malformed"))
    add(t, "lone_surrogate", trade(16, sym="\ud800AAPL"), ("malformed",))
    b = settings.topic_bars
    victim = rng.choice(symbols)
    bar = {"version": 1, "symbol": victim, "timeframe": "1m", "timestamp": YEAR_2099_MS, "open": 10.0, "high": 10.5,
           "low": 9.5, "close": 10.2, "volume": 1000, "vwap": 10.1, "trades": 10, "revision": 0, "status": "final"}  # fmt: skip
    add(b, "bar_in_2099", dumps(bar), ("future",), symbol=victim)
    add(b, "bar_garbage", b"\x00\xffgarbage" + bytes(rng.getrandbits(8) for _ in range(32)), ("malformed",))
    add(b, "bar_tombstone", None, ("malformed",))
    add(b, "bar_deep_nesting", dumps(bar | {"zz": deep(100_000)}), ("too_large", "malformed"), symbol=victim)
    add(b, "bar_invalid_utf8", dumps(bar | {"timestamp": now_clock - now_clock % MINUTE_MS}).replace(b'"1m"', b'"1m\xff"'),
        ("malformed",), symbol=victim)  # fmt: skip
    extreme = bar | {"symbol": "ZZPOISON", "timestamp": now_clock - now_clock % MINUTE_MS, "open": 1e308, "high": 1e308,
                     "low": -1e308, "close": 5e-324, "volume": 2**63 - 1, "vwap": 1e308, "trades": 2**31}  # fmt: skip
    add(b, "bar_extreme_values", dumps(extreme), None, symbol="ZZPOISON", any_outcome=True)
    return out


# ---- history in the database ------------------------------------------------------------------

HISTORY_GAP_MS = 32 * MINUTE_MS  # history ends this long before the feed: beyond the lateness and warm-start reach


def seed_history(url: str, feed: list[Record], start_ms: int, bars: int) -> tuple[int, int, float]:
    """`bars` final 1-minute bars per feed symbol ending `HISTORY_GAP_MS` before the feed, written as SQL.

    The detection flow warm-starts each symbol from them, so indicators, alerts, trends and surges
    are live from the feed's first bar (a feed of a few minutes alone would never warm them up).
    Returns (rows, total volume, total close) to check afterwards that no flow touched them.
    """
    import zlib
    from datetime import UTC, datetime

    import orjson

    if bars <= 0:
        return 0, 0, 0.0
    first: dict[str, float] = {}
    for r in feed:
        if r.label == "trade":
            trade = orjson.loads(r.value)  # type: ignore[arg-type]
            first.setdefault(trade["sym"], trade["p"])
    end = start_ms - start_ms % MINUTE_MS - HISTORY_GAP_MS
    rows = []
    for symbol, price in sorted(first.items()):
        rng = random.Random(zlib.crc32(symbol.encode()))
        close = price * (1 + rng.gauss(0, 0.02))
        for i in range(bars):
            o = close
            close = max(0.01, round(o * (1 + rng.gauss(0, 0.003)), 4))
            h, low = (
                round(max(o, close) * (1 + abs(rng.gauss(0, 0.001))), 4),
                round(min(o, close) * (1 - abs(rng.gauss(0, 0.001))), 4),
            )
            volume = rng.randint(100, 3000) * (6 if rng.random() < 0.03 else 1)
            at = datetime.fromtimestamp((end - (bars - i) * MINUTE_MS) / 1000, UTC)
            rows.append((symbol, at, round(o, 4), h, low, close, volume, round((o + close) / 2, 4), volume // 100 + 1, 0))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO symbols (symbol) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (sorted(first),))
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades, revision) FROM STDIN"
            ) as copy,
        ):
            for row in rows:
                copy.write_row(row)
    return len(rows), sum(r[6] for r in rows), round(sum(r[5] for r in rows), 4)


def history_now(url: str, since_ms: int) -> tuple[int, int, float]:
    with psycopg.connect(url, autocommit=True) as conn:
        n, volume, close = conn.execute(
            "SELECT count(*), coalesce(sum(volume), 0), coalesce(sum(close), 0)::float8 FROM ohlcv_1min "
            "WHERE timestamp < to_timestamp(%s)", (since_ms / 1000,)).fetchone()  # type: ignore[misc]  # fmt: skip
    return int(n), int(volume), round(float(close), 4)


# ---- one scenario ----------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: str
    description: str
    input_records: int = 0
    poison_records: int = 0
    bars_expected: int = 0
    bars_written: int = 0
    bars_lost: int = 0
    bars_duplicated: int = 0
    bars_unexpected: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    dead_letters_expected: dict[str, int] = field(default_factory=dict)
    crashes: int = 0
    time_to_recover_s: float | None = None
    caught_up_after_feed_s: float | None = None
    settled_deliveries: int = 0  # records the broker stored though their delivery report failed or never came
    redis: dict[str, Any] = field(default_factory=dict)
    detection: dict[str, Any] | None = None
    revisions_differ_from_uninterrupted: int | None = None
    history_bars: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    crash_details: list[dict[str, Any]] = field(default_factory=list)
    dead_letter_details: dict[str, Any] = field(default_factory=dict)
    bar_examples: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    ok: bool = False
    seconds: float = 0.0
    logs: str = ""


class RecoveryMonitor(threading.Thread):
    """For each fault that ended, how long until the outputs held what the input before its end should give."""

    def __init__(self, database_url: str, feeder: Feeder, close_delay_ms: int, detection: bool, timeout_s: float,
                 since_ms: int) -> None:  # fmt: skip
        super().__init__(name="recovery-monitor", daemon=True)
        self.since_ms = since_ms
        self.database_url = database_url
        self.feeder = feeder
        self.close_delay_ms = close_delay_ms
        self.detection = detection
        self.timeout_s = timeout_s
        self.pending: list[Window] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()

    def ended(self, window: Window) -> None:
        with self.lock:
            self.pending.append(window)

    def run(self) -> None:
        active: list[tuple[Window, float, compare.Bars, list[tuple[str, int]]]] = []
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self.stop_event.is_set():
                with self.lock:
                    new, self.pending = self.pending, []
                for window in new:
                    active.append(self._goal(window))
                if active:
                    written = compare.table_bars(conn, self.since_ms)
                    indicators = _indicator_keys(conn) if self.detection else set()
                    now = time.monotonic()
                    for entry in list(active):
                        window, end, target, priced = entry
                        if compare.caught_up(target, written) and all(k in indicators for k in priced or ()):
                            window.recover_s = round(max(0.0, now - end), 1)
                            active.remove(entry)
                        elif now > end + self.timeout_s:
                            active.remove(entry)
                self.stop_event.wait(0.5)

    def _goal(self, window: Window) -> tuple[Window, float, compare.Bars, list[tuple[str, int]]]:
        """What the outputs hold once they have caught up with the input published before the fault's end."""
        end = self.feeder.started_at + window.end_s  # windows count from the feed's start
        produced = [r for r in self.feeder.records[: self.feeder.produced_before(end)] if not r.label.startswith("poison:")]
        clock = max((r.clock_ms for r in produced), default=0)
        target = {k: v for k, v in compare.oracle_bars(produced, delivered_only=False).items()
                  if k[1] + MINUTE_MS + self.close_delay_ms <= clock}  # fmt: skip
        priced = [k for k, v in target.items() if v["close"] is not None] if self.detection else []
        return window, end, target, priced


def _indicator_keys(conn: psycopg.Connection) -> set[tuple[str, int]]:
    return {(s, t) for s, t in conn.execute(
        "SELECT symbol, (extract(epoch from timestamp) * 1000)::bigint FROM indicator_values").fetchall()}  # fmt: skip


def _indicators_for(conn: psycopg.Connection, keys: list[tuple[str, int]]) -> bool:
    have = _indicator_keys(conn)
    return all(k in have for k in keys)


def run_scenario(spec: Scenario, profile: Profile, env: Environment) -> dict[str, Any]:
    """Run one scenario end to end; returns its `Outcome` as a dict (what `bench/chaos.json` lists)."""
    from connectors.kafka.admin import ensure_topics
    from flows.settings import Settings
    from tests.support.proxy import KafkaProxy

    began = time.monotonic()
    log = env.log
    run = uuid.uuid4().hex[:6]
    ns = f"chaos{run}"
    work = env.workdir / f"{spec.name}-{run}"
    work.mkdir(parents=True)
    rng = random.Random(f"{env.seed}:{spec.name}")
    out = Outcome(spec.name, spec.description, logs=str(work))
    stack = contextlib.ExitStack()
    flows: list[FlowProcess] = []
    proxy: KafkaProxy | None = None
    try:
        bootstrap, database_url, redis_url = env.bootstrap, env.database_url, env.redis_url
        if spec.fault == "broker":
            broker_port, proxy_port = free_port(), free_port()
            proxy = stack.enter_context(KafkaProxy(proxy_port, broker_port))
            tansu = start_tansu(broker_port, advertised_port=proxy_port)
            stack.callback(lambda: (tansu.kill(), tansu.wait(10)))
            bootstrap = f"127.0.0.1:{proxy_port}"
        elif spec.fault == "postgres":
            proxy = stack.enter_context(KafkaProxy(free_port(), port_of(env.database_url, 5432)))
            database_url = with_port(env.database_url, proxy.port)
        elif spec.fault == "redis":
            proxy = stack.enter_context(KafkaProxy(free_port(), port_of(env.redis_url, 6379)))
            redis_url = with_port(env.redis_url, proxy.port)
        overrides: dict[str, Any] = {"sink_max_backoff_s": profile.sink_max_backoff_s} if profile.sink_max_backoff_s else {}
        overrides |= {"bar_flow_ops_port": 0, "detection_flow_ops_port": 0}  # runs beside others: no fixed ports
        settings = Settings(
            kafka_bootstrap_servers=bootstrap, topic_trades=f"{ns}.trades", topic_quotes=f"{ns}.quotes",
            topic_second_aggs=f"{ns}.aggs.second", topic_minute_aggs=f"{ns}.aggs.minute",
            topic_dead_letter=f"{ns}.deadletter", topic_bars=f"{ns}.bars", redis_namespace=ns,
            database_url=database_url, redis_url=redis_url, kafka_tail=True, kafka_start="earliest", **overrides,
        )  # fmt: skip
        ensure_topics(settings)
        stack.callback(_delete_topics, settings if spec.fault != "broker" else None, settings.topics(), log)
        stack.callback(_delete_history, env.redis_url, ns, log)
        truncate(env.database_url)

        kill = spec.fault == "kill9"
        wall_s, speed = (profile.kill_wall_s, profile.kill_speed) if kill else (profile.wall_s, profile.speed)
        records, start_ms = feed_records(settings, profile, env.seed, wall_s, speed)
        poison = poison_records(settings, records, start_ms, wall_s, speed, rng) if spec.fault == "poison" else []
        records = sorted(records + poison, key=lambda r: r.due_s)
        out.input_records, out.poison_records = len(records), len(poison)
        since = start_ms - start_ms % MINUTE_MS - HISTORY_GAP_MS // 2  # feed bars from here on, history before
        history = seed_history(env.database_url, records, start_ms, profile.history_bars)
        out.history_bars = history[0]
        feed_symbols = {r.key.decode() for r in records if r.key is not None and not r.label.startswith("poison:")}

        recorder = FinalBarRecorder(redis_url, f"{ns}.market.ohlcv")
        recorder.start()
        stack.callback(recorder.stop)
        if not recorder.subscribed.wait(10):
            out.problems.append("the Redis recorder could not subscribe")
        environment = flow_env(settings)
        bar = FlowProcess("bar_flow", BAR_FLOW, environment, work, profile.snapshot_s)
        detection = FlowProcess("detection_flow", DETECTION_FLOW, environment, work, profile.snapshot_s)
        flows = [bar, detection]
        for flow in flows:
            flow.init_recovery()
            flow.start()
        started = time.monotonic()
        supervisor = Supervisor(flows, started)
        supervisor.start()
        feeder = Feeder(settings, records)
        monitor = RecoveryMonitor(env.database_url, feeder, int(settings.bar_close_delay_s * 1000), True,
                                  profile.drain_timeout_s, since)  # fmt: skip
        monitor.start()
        feeder.start()
        log(f"  {spec.name}: {len(records):,} records over {wall_s:.0f} s ({wall_s * speed / 60:.0f} min of event time), "
            f"flows {bar.proc.pid if bar.proc else '-'} / {detection.proc.pid if detection.proc else '-'}, logs {work}")  # fmt: skip

        windows = _apply_fault(spec, profile, rng, flows, proxy, feeder, recorder, wall_s, speed, start_ms, poison,
                               monitor.ended)  # fmt: skip
        feeder.finished.wait()
        feed_end = time.monotonic()
        if feeder.failure or feeder.unflushed:
            out.problems.append(f"feeder: {feeder.failure or ''} {feeder.unflushed} records unflushed".strip())
        out.settled_deliveries = compare.settle_deliveries(settings, records)
        expected = compare.oracle_bars(records)
        out.caught_up_after_feed_s = _drain(env.database_url, expected, recorder, profile, feed_end, since)
        monitor.stop_event.set()
        monitor.join(5)
        for flow in flows:
            flow.stop()
        supervisor.stop()
        recorder.stop()

        with psycopg.connect(env.database_url, autocommit=True) as conn:
            written = compare.table_bars(conn, since)
            until = compare.closed_until(conn)
            detected = compare.detection_rows(conn, until)
        if history_now(env.database_url, since) != history:
            out.problems.append(f"the history bars before the feed changed: {history} -> {history_now(env.database_url, since)}")
        report = compare.compare_bars(expected, written)
        for name in ("bars_expected", "bars_written", "bars_lost", "bars_duplicated", "bars_unexpected"):
            setattr(out, name, report[name])
        out.bar_examples = report["bar_examples"]
        out.redis = compare.compare_redis(dict(recorder.newest().items()), written) | {"recorder": asdict(recorder.stats)}
        letters = compare.read_dead_letters(settings, settings.topic_dead_letter, settings.topic_partitions)
        dlq = compare.check_dead_letters(records, letters)
        out.dead_letters, out.dead_letters_expected = dlq.pop("dead_letters"), dlq.pop("dead_letters_expected")
        out.dead_letter_details = dlq
        out.crashes = len(supervisor.crashes)
        out.crash_details = [asdict(c) for c in supervisor.crashes]
        out.faults = [asdict(w) for w in windows]
        recovered = [w.recover_s for w in windows]
        out.time_to_recover_s = None if not windows or None in recovered else max(recovered)  # type: ignore[type-var]

        if spec.baseline:
            base = _uninterrupted(env, settings, ns, [r for r in records if not r.label.startswith("poison:")], start_ms,
                                  profile.history_bars, since, log, until)  # fmt: skip
            if isinstance(base, str):
                out.problems.append(base)
            else:
                base_bars, base_rows = base
                out.detection = compare.compare_detection(base_rows, detected, feed_symbols)
                out.revisions_differ_from_uninterrupted = sum(
                    1 for k, v in written.items() if k in base_bars and v["revision"] != base_bars[k]["revision"]
                )
                sanity = compare.compare_bars(expected, base_bars)
                if sanity["bars_lost"] or sanity["bars_duplicated"] or sanity["bars_unexpected"]:
                    out.problems.append(f"the uninterrupted run itself differs from the oracle: {sanity['bar_examples']}")
        out.problems += _problems(out, windows)
        out.ok = not out.problems
    except Exception as exc:  # noqa: BLE001 - a scenario that could not run is reported, the others still run
        import traceback

        out.problems.append(f"the scenario could not run: {type(exc).__name__}: {exc}")
        log(traceback.format_exc())
    finally:
        for flow in flows:
            flow.stop()
        stack.close()
        shutil.rmtree(work / "bar_flow-recovery", ignore_errors=True)
        shutil.rmtree(work / "detection_flow-recovery", ignore_errors=True)
    out.seconds = round(time.monotonic() - began, 1)
    return asdict(out)


def _apply_fault(spec: Scenario, profile: Profile, rng: random.Random, flows: list[FlowProcess], proxy: Any, feeder: Feeder,
                 recorder: FinalBarRecorder, wall_s: float, speed: float, start_ms: int, poison: list[Record],
                 ended: Callable[[Window], None]) -> list[Window]:  # fmt: skip
    """Carry out the scenario's fault during the feed (this thread); `ended` hears of each fault as it ends."""
    while not feeder.started_at:
        time.sleep(0.01)
    t0 = feeder.started_at

    def at(seconds: float) -> None:
        ahead = t0 + seconds - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)

    windows: list[Window] = []
    if spec.fault == "kill9":
        by_name = {"bar": flows[0], "detection": flows[1]}
        plan = sorted(
            (t, who) for who in spec.kill for t in _kill_points(rng, profile.kills, wall_s, len(spec.kill), spec.kill.index(who))
        )
        for when, who in plan:
            at(when)
            flow = by_name[who]
            flow.kill9()
            killed = time.monotonic() - t0
            time.sleep(rng.uniform(0.0, 2.0))
            flow.start()
            windows.append(Window(f"kill -9 {flow.name}", round(killed, 1), round(time.monotonic() - t0, 1)))
            ended(windows[-1])
    elif spec.fault in ("broker", "postgres", "redis"):
        begin = _before_a_minute_ends(start_ms, speed, wall_s * 0.3)
        at(begin)
        proxy.cut()
        if spec.fault == "redis":  # the subscriber comes back an outage later than Redis: it must catch up
            recorder.stay_away_until(t0 + begin + 2 * spec.outage_s)
        at(begin + spec.outage_s)
        proxy.restore()
        windows.append(Window(f"{spec.fault} outage", round(begin, 1), round(time.monotonic() - t0, 1)))
        ended(windows[-1])
    elif spec.fault == "poison" and poison:
        first, last = min(r.due_s for r in poison), max(r.due_s for r in poison)
        at(last)
        windows.append(Window("poison records", round(first, 1), round(last, 1)))
        ended(windows[-1])
    return windows


def _before_a_minute_ends(start_ms: int, speed: float, after_s: float, lead_ms: int = 2_000) -> float:
    """The first wall second after `after_s` at which the feed's event clock is `lead_ms` before a minute ends.

    An outage that starts there tells at once whether the flows close the open minute while its
    last trades are held up by the outage (they would, if they took the outage for silence).
    """
    clock = start_ms + int(after_s * speed * 1000)
    target = clock - clock % MINUTE_MS + MINUTE_MS - lead_ms
    if target < clock:
        target += MINUTE_MS
    return (target - start_ms) / speed / 1000


def _kill_points(rng: random.Random, n: int, wall_s: float, flows: int, which: int) -> list[float]:
    """`n` random kill times (s) in the feed, at least 8 s apart (a restarted flow gets going first)."""
    if n == 1:  # one per flow: spread the flows over the feed
        return [wall_s * (which + 1) / (flows + 1) + rng.uniform(-1.0, 1.0)]
    low, high = 8.0, wall_s - 8.0
    for _ in range(1000):
        points = sorted(rng.uniform(low, high) for _ in range(n))
        if all(b - a >= 8.0 for a, b in itertools.pairwise(points)):
            return points
    step = (high - low) / n
    return [low + step * i for i in range(n)]


def _drain(database_url: str, expected: compare.Bars, recorder: FinalBarRecorder, profile: Profile, feed_end: float,
           since: int) -> float | None:  # fmt: skip
    """Wait until the table equals the oracle, every priced bar has indicators and Redis has the table's bars.

    Returns the seconds it took after the feed ended, or None when it did not happen: the time ran
    out, or nothing changed for `profile.stall_s` (a flow gave up, or the outputs are wrong for good).
    """
    priced = [k for k, v in expected.items() if v["close"] is not None]
    last, changed = None, time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < feed_end + profile.drain_timeout_s:
            written = compare.table_bars(conn, since)
            report = compare.compare_bars(expected, written)
            good = not (report["bars_lost"] or report["bars_duplicated"] or report["bars_unexpected"])
            if good and _indicators_for(conn, priced):
                redis_report = compare.compare_redis(recorder.newest(), written)
                if not (redis_report["redis_missing"] or redis_report["redis_stale"]):
                    return round(time.monotonic() - feed_end, 1)
            state = (len(written), sum(v["trades"] or 0 for v in written.values()), len(recorder.messages),
                     conn.execute("SELECT count(*) FROM indicator_values").fetchone()[0])  # type: ignore[index]  # fmt: skip
            if state != last:
                last, changed = state, time.monotonic()
            elif time.monotonic() - changed > profile.stall_s and time.monotonic() - feed_end > 15:
                return None
            time.sleep(1.0)
    return None


def _uninterrupted(env: Environment, settings: Any, ns: str, records: list[Record], start_ms: int, history_bars: int,
                   since: int, log: Callable[[str], None], closed_until: Any = None) -> tuple[compare.Bars, dict] | str:  # fmt: skip
    """Both flows, start to end and never interrupted, over the same feed (no poison) on the shared broker."""
    import subprocess

    from connectors.kafka.admin import ensure_topics
    from connectors.kafka.producer import make_producer

    base = settings.model_copy(update={
        "kafka_bootstrap_servers": env.bootstrap, "database_url": env.baseline_database_url, "redis_url": env.redis_url,
        "redis_namespace": ns + "b", "kafka_tail": False,
        **{name: getattr(settings, name) + ".base" for name in ("topic_trades", "topic_quotes", "topic_second_aggs",
                                                                 "topic_minute_aggs", "topic_dead_letter", "topic_bars")},
    })  # fmt: skip
    ensure_topics(base)
    try:
        truncate(env.baseline_database_url)
        seed_history(env.baseline_database_url, records, start_ms, history_bars)
        producer, delivery = make_producer(base, idempotent=True)
        for r in records:
            if r.offset is None:
                continue  # never reached the live run's broker either
            producer.produce(base.topic_trades, r.value, r.key)
            producer.poll(0)
        if producer.flush(60) or delivery.failed:
            return f"uninterrupted run: publishing failed ({delivery.first_error})"
        environment = flow_env(base)
        for flow in (BAR_FLOW, DETECTION_FLOW):
            done = subprocess.run([sys.executable, "-m", "bytewax.run", flow], env=environment,
                                  cwd=str(Path(__file__).resolve().parents[2]), capture_output=True, timeout=600)  # fmt: skip
            if done.returncode != 0:
                return f"uninterrupted run: {flow} exited {done.returncode}: {done.stderr.decode(errors='replace')[-600:]}"
        with psycopg.connect(env.baseline_database_url, autocommit=True) as conn:
            return compare.table_bars(conn, since), compare.detection_rows(conn, closed_until)
    finally:
        _delete_topics(base, base.topics(), log)
        _delete_history(env.redis_url, ns + "b", log)


def _problems(out: Outcome, windows: list[Window]) -> list[str]:
    problems = []
    if out.bars_lost or out.bars_duplicated or out.bars_unexpected:
        problems.append(f"bars: {out.bars_lost} lost, {out.bars_duplicated} duplicated, {out.bars_unexpected} unexpected")
    if out.crashes:
        problems.append(
            f"{out.crashes} flow crash(es): " + "; ".join(sorted({f"{c['flow']}: {c['reason']}" for c in out.crash_details}))
        )
    r = out.redis
    if r.get("redis_missing") or r.get("redis_stale") or r.get("redis_extra"):
        problems.append(
            f"redis: {r['redis_missing']} bars missing, {r['redis_stale']} stale, {r['redis_extra']} not in the table"
        )
    if out.detection is not None and not compare.detection_ok(out.detection):
        problems.append("detection differs from the uninterrupted run: " + ", ".join(
            f"{t} {d['missing']} missing/{d['extra']} extra/{d['different']} different" for t, d in out.detection.items()
            if d["missing"] or d["extra"] or d["different"]))  # fmt: skip
    if out.revisions_differ_from_uninterrupted:
        problems.append(
            f"{out.revisions_differ_from_uninterrupted} bars were made final before all their trades were in "
            "and then revised (their revision differs from the uninterrupted run's)"
        )
    problems += out.dead_letter_details.get("dead_letter_problems", [])
    if out.caught_up_after_feed_s is None:
        problems.append("the outputs never caught up with the input after the feed ended")
    for w in windows:
        if w.recover_s is None:
            problems.append(f"{w.what} at {w.start_s} s: the outputs did not catch up after it")
    return problems


def _delete_topics(kafka: KafkaSettings | None, topics: list[str], log: Callable[[str], None]) -> None:
    if kafka is None:
        return  # a private broker: gone with its process
    from confluent_kafka import KafkaException

    from connectors.kafka.admin import admin_client

    admin = admin_client(kafka)  # kept alive until every future resolved
    for topic, future in admin.delete_topics(topics, operation_timeout=10).items():
        try:
            future.result(15)
        except KafkaException as exc:
            log(f"  (could not delete topic {topic}: {exc})")


def _delete_history(url: str, ns: str, log: Callable[[str], None]) -> None:
    client = redis.Redis.from_url(url)
    try:
        for pattern in (f"history:{ns}*", f"history-meta:{ns}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
    except redis.RedisError as exc:
        log(f"  (could not delete the Redis history of {ns}: {exc})")
    finally:
        client.close()
