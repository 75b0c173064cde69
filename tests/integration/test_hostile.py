"""Hostile input and failing dependencies, on the real broker, PostgreSQL and Redis.

Every class of bad input the flows may meet is fed in beside good data: the flow runs on,
the bad record reaches the dead-letter topic with a precise kind and reason (bounded in size),
and the good data gives exactly the bars an independent reference computes.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta

import orjson
import psycopg
import pytest
import redis
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main
from prometheus_client import REGISTRY

from connectors.feeds.synthetic import DEFAULT_START_MS
from connectors.kafka import clients
from connectors.kafka.dead_letter import MAX_VALUE_BYTES
from connectors.kafka.source import KafkaBatchSource
from connectors.redis.history import History, HistoryLimits
from connectors.redis.publish import Publisher
from flows import detection as detection_flow
from flows.detect.settings import DetectionSettings
from flows.ohlcv import build_flow
from flows.partition import PartitionLogic
from schemas.bars import Bar, encode_bar
from schemas.status import decode_status
from tests.support.bars import ROOT, assert_same_bars, expected_bars, feed
from tests.support.services import base_settings, create_topics, free_port, private_redis, publish, read_topic, table_bars

pytestmark = pytest.mark.integration

DAY = 86_400_000
NO_DETECTION = DetectionSettings(enabled=False)


def trade(sym: str, t: int, p: float = 10.0, s: int = 100, **extra: object) -> dict:
    return {"ev": "T", "sym": sym, "x": 4, "i": f"h{t}{p}{s}", "z": 3, "p": p, "s": s, "t": t, "q": 1} | extra


def produce(settings, records: list[tuple[bytes, bytes | None]], topic: str | None = None) -> None:
    producer = clients.producer(settings, {"message.max.bytes": 4_000_000})
    for key, value in records:
        producer.produce(topic or settings.topic_trades, value, key)
    assert producer.flush(30) == 0


def letters_by_kind(settings, source_topic: str | None = None) -> dict[str, list]:
    out: dict[str, list] = {}
    for m in read_topic(settings, settings.topic_dead_letter):
        h = {k: v.decode() for k, v in m.headers()}
        if source_topic is None or h["dlq.topic"] == source_topic:
            out.setdefault(h["dlq.kind"], []).append((h, m.value()))
    return out


POISON: list[tuple[str, bytes | None, str]] = [
    # (what, value, the dead-letter kind it must get)
    ("tombstone", None, "malformed"),
    ("empty", b"", "malformed"),
    ("json null", b"null", "malformed"),
    ("arbitrary bytes", bytes(range(256)) * 3, "malformed"),
    ("invalid utf-8", b'{"ev":"T","sym":"\xff\xfe","x":4,"i":"1","p":1.0,"s":1,"t":1793629800000}', "malformed"),
    ("year 2099", orjson.dumps(trade("AAA", 4_070_908_800_000)), "future"),
    ("year 10000", orjson.dumps(trade("AAA", 253_402_300_800_000)), "malformed"),
    ("size above 2**63", orjson.dumps(trade("AAA", DEFAULT_START_MS + 1, s=2**63 + 1)), "malformed"),
    ("size above 2**64", b'{"ev":"T","sym":"AAA","x":4,"i":"9","p":1.0,"s":18446744073709551621,"t":1793629800001}', "malformed"),
    ("price inf", b'{"ev":"T","sym":"AAA","x":4,"i":"9","p":1e999,"s":1,"t":1793629800001}', "malformed"),
    ("price NaN", b'{"ev":"T","sym":"AAA","x":4,"i":"9","p":NaN,"s":1,"t":1793629800001}', "malformed"),
    ("a 1 MB record", b'{"ev":"T","sym":"' + b"A" * 1_000_000 + b'"}', "too_large"),
    ("a valid trade padded to 1 MB", orjson.dumps(trade("AAA", DEFAULT_START_MS + 1, pad="x" * 1_000_000)), "too_large"),
    ("unicode symbol", orjson.dumps(trade("ÄPFEL", DEFAULT_START_MS + 1)), "malformed"),
    ("lone surrogate", b'{"ev":"T","sym":"\\ud800","x":4,"i":"9","p":1.0,"s":1,"t":1793629800001}', "malformed"),
    ("slash symbol", orjson.dumps(trade("TEST/WS", DEFAULT_START_MS + 1)), "malformed"),
    ("huge trade id", orjson.dumps(trade("AAA", DEFAULT_START_MS + 1, i="7" * 10_000)), "malformed"),
    ("unknown condition", orjson.dumps(trade("AAA", DEFAULT_START_MS + 1, c=[999])), "unknown_condition"),
    (
        "condition beyond int64",
        b'{"ev":"T","sym":"AAA","x":4,"i":"9","p":1.0,"s":1,"t":1793629800001,"c":[99999999999999999999]}',
        "malformed",
    ),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "too_large"),
    ("deep nesting in a field", b'{"ev":"T","x":' + b"[" * 5_000 + b"]" * 5_000 + b"}", "malformed"),
    ("a quote", orjson.dumps({"ev": "Q", "sym": "AAA", "bp": 1.0, "ap": 2.0, "t": DEFAULT_START_MS}), "malformed"),
]


def test_poison_of_every_class_is_dead_lettered_and_good_trades_give_exact_bars(settings, db, tmp_path, recorder):
    events = feed(seed=31, symbols=25, rate=30.0, seconds=8 * 60, malformed_ratio=0, too_late_ratio=0)
    good = [(e.key, e.value) for e in events if e.topic_kind == "trades"]
    rng = random.Random(3)
    mixed = list(good)
    for _, value, _ in POISON:
        mixed.insert(rng.randrange(len(mixed)), (b"AAA", value))
    produce(settings, mixed)
    errors = recorder(settings.redis_url, f"{settings.redis_namespace}:errors")

    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    # snapshots are taken with the poison in the state (held events, counters): they must encode
    run_main(build_flow(settings, NO_DETECTION), epoch_interval=timedelta(milliseconds=1),
             recovery_config=RecoveryConfig(str(recovery)))  # fmt: skip

    assert_same_bars(table_bars(db), expected_bars(events))
    letters = letters_by_kind(settings, settings.topic_trades)
    expected_kinds: dict[str, int] = {}
    for _, _, kind in POISON:
        expected_kinds[kind] = expected_kinds.get(kind, 0) + 1
    assert {k: len(v) for k, v in letters.items()} == expected_kinds
    for items in letters.values():
        for headers, value in items:
            assert headers["dlq.reason"] and len(headers["dlq.reason"]) <= 1000
            assert value is None or len(value) <= MAX_VALUE_BYTES
    (big,) = [(h, v) for h, v in letters["too_large"] if h["dlq.size"] == str(len(POISON[11][1]))]
    assert big[0]["dlq.truncated"] == "true" and len(big[0]["dlq.sha256"]) == 64 and big[1] == POISON[11][1][:MAX_VALUE_BYTES]
    (future,) = letters["future"]
    assert "ahead of the wall clock" in future[0]["dlq.reason"]
    assert any(v is None and h["dlq.size"] == "null" for h, v in letters["malformed"]), "the tombstone stays a tombstone"

    time.sleep(0.3)
    announced = [decode_status(data) for _, data in errors.stop()]
    assert sorted(e.error for e in announced) == sorted(k for _, _, k in POISON)

    # Restarting from the recovery store (the crash loop of old): it resumes, nothing changes.
    before = table_bars(db)
    run_main(build_flow(settings, NO_DETECTION), recovery_config=RecoveryConfig(str(recovery)))
    assert table_bars(db).equals(before)


def test_a_lone_trade_far_ahead_in_a_replay_moves_no_watermark(settings, db):
    events = feed(seed=32, symbols=20, rate=30.0, seconds=6 * 60, too_late_ratio=0, malformed_ratio=0)
    good = [(e.key, e.value) for e in events if e.topic_kind == "trades"]
    # three hours ahead of the feed, yet long past: the wall clock cannot tell, the watermark rule must
    outlier = orjson.dumps(trade(orjson.loads(good[10][1])["sym"], DEFAULT_START_MS + 3 * 3_600_000))
    produce(settings, [*good[:50], (b"X", outlier), *good[50:]])
    run_main(build_flow(settings, NO_DETECTION))
    assert_same_bars(table_bars(db), expected_bars(events))
    letters = letters_by_kind(settings)
    assert list(letters) == ["future"] and len(letters["future"]) == 1
    assert "an outlier" in letters["future"][0][0]["dlq.reason"]
    assert "too_late" not in letters


def test_a_replay_of_two_days_jumps_the_watermark_once_later_trades_confirm_it(settings, db):
    day1 = feed(seed=33, symbols=20, rate=30.0, seconds=5 * 60, too_late_ratio=0, malformed_ratio=0)
    day2 = feed(seed=34, symbols=20, rate=30.0, seconds=5 * 60, too_late_ratio=0, malformed_ratio=0,
                start_ms=DEFAULT_START_MS + DAY)  # fmt: skip
    publish(settings, day1 + day2)
    run_main(build_flow(settings, NO_DETECTION))
    assert_same_bars(table_bars(db), expected_bars(day1 + day2))
    assert letters_by_kind(settings) == {}


def test_a_feed_clock_ten_minutes_fast_is_refused_as_future_not_published_as_revisions(settings, db):
    now = int(time.time() * 1000)
    minute = now - 180_000 - now % 60_000
    fast = [(b"FAST", orjson.dumps(trade("FAST", now + 600_000 + i, i=str(i)))) for i in range(30)]
    on_time = [(b"SLOW", orjson.dumps(trade("SLOW", minute + i, i=str(i)))) for i in range(30)]
    produce(settings, on_time[:15] + fast + on_time[15:])
    run_main(build_flow(settings, NO_DETECTION))
    letters = letters_by_kind(settings)
    assert list(letters) == ["future"] and len(letters["future"]) == 30
    bars = table_bars(db)
    assert bars["symbol"].to_list() == ["SLOW"] and bars["trades"].to_list() == [30] and bars["revision"].to_list() == [0]


def test_capacity_bounds_the_symbols_a_partition_holds(services, db):
    s = base_settings(max_symbols_per_partition=5, topic_partitions=1)
    create_topics(s)
    t = DEFAULT_START_MS
    produce(s, [(b"k", orjson.dumps(trade(f"S{i}", t + i, i=str(i)))) for i in range(8)])
    run_main(build_flow(s, NO_DETECTION))
    assert sorted(table_bars(db)["symbol"].to_list()) == [f"S{i}" for i in range(5)]
    letters = letters_by_kind(s)
    assert list(letters) == ["capacity"] and len(letters["capacity"]) == 3
    assert "MAX_SYMBOLS_PER_PARTITION=5" in letters["capacity"][0][0]["dlq.reason"]


def test_poison_on_the_bars_topic_changes_no_detection(settings, db):
    events = feed(seed=35, symbols=15, rate=40.0, seconds=30 * 60, malformed_ratio=0, too_late_ratio=0)
    publish(settings, events)
    run_main(build_flow(settings))
    run_main(detection_flow.build_flow(settings))
    clean = {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall() for t in ("events", "indicator_values", "alerts")}
    symbol = clean["indicator_values"][0][0]
    db.execute("TRUNCATE indicator_values, alerts")
    db.execute("DELETE FROM events WHERE kind <> 'highlow'")

    # the same bars again, with poison between them, on a bars topic of its own
    again = settings.model_copy(update={"topic_bars": settings.topic_bars + ".poisoned"})
    create_topics(again)
    bars = [
        (m.key(), m.value()) for m in sorted(read_topic(settings, settings.topic_bars), key=lambda m: (m.partition(), m.offset()))
    ]
    future = Bar(symbol=symbol, timestamp=4_070_908_800_000, open=1.0, high=1.0, low=1.0, close=1.0, volume=1,
                 vwap=1.0, trades=1, revision=0, status="final")  # fmt: skip
    poison = [(symbol.encode(), None), (symbol.encode(), b"\x00garbage"), (symbol.encode(), encode_bar(future)),
              (symbol.encode(), encode_bar(future).replace(b'"volume":1,', b'"volume":18446744073709551616,'))]  # fmt: skip
    produce(again, bars[:40] + poison + bars[40:], topic=again.topic_bars)
    run_main(detection_flow.build_flow(again))
    after = {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall() for t in clean}
    for table, rows in clean.items():
        assert after[table] == rows, table
    kinds = {k: len(v) for k, v in letters_by_kind(again, again.topic_bars).items()}
    assert kinds == {"malformed": 3, "future": 1}


def test_bars_the_database_refuses_are_dead_lettered_and_the_rest_written(database_url, services, recorder):
    from infra.migrate import up

    up(database_url, log=lambda *_: None)
    s = base_settings(database_url=database_url)
    create_topics(s)
    events = feed(seed=36, symbols=10, rate=20.0, seconds=5 * 60, malformed_ratio=0, too_late_ratio=0)
    publish(s, events)
    expected = expected_bars(events)
    refused = expected.row(7, named=True)
    with psycopg.connect(database_url, autocommit=True) as conn:  # a rule of the database's own, for the test
        conn.execute(f"ALTER TABLE ohlcv_1min ADD CONSTRAINT no_such_volume CHECK (volume <> {refused['volume']})")
    errors = recorder(s.redis_url, f"{s.redis_namespace}:errors")
    run_main(build_flow(s, NO_DETECTION))
    with psycopg.connect(database_url) as conn:
        stored = table_bars(conn)
    kept = expected.filter(expected["volume"] != refused["volume"])
    assert_same_bars(stored, kept)
    letters = letters_by_kind(s)
    assert list(letters) == ["rejected"]
    headers, value = letters["rejected"][0]
    assert "23514" in headers["dlq.reason"] and headers["dlq.topic"] == "ohlcv_1min"
    assert orjson.loads(value)["volume"] == refused["volume"]
    time.sleep(0.3)
    assert [decode_status(d).error for _, d in errors.stop()].count("rejected") == len(letters["rejected"])


@pytest.mark.parametrize("fault", ["oom", "readonly", "down"])
def test_redis_refusals_are_waited_out_and_every_message_published_once(fault, tmp_path):
    port = free_port()
    server = private_redis(port, str(tmp_path))
    master = None
    client = redis.Redis(port=port)
    try:
        publisher = Publisher(f"redis://127.0.0.1:{port}/0", history=HistoryLimits(10_000, 0), max_backoff_s=0.2)
        publisher.publish([("c", b'{"n":0}')])
        if fault == "oom":
            client.config_set("maxmemory", "1")
            client.config_set("maxmemory-policy", "noeviction")
        elif fault == "readonly":  # a replica refuses writes (it also drops its data to follow the master)
            master_port = free_port()
            master = private_redis(master_port)
            client.execute_command("REPLICAOF", "127.0.0.1", str(master_port))
        else:
            server.kill()
            server.wait()
        done = threading.Event()
        worker = threading.Thread(target=lambda: (publisher.publish([("c", b'{"n":%d}' % i) for i in range(1, 6)]), done.set()))
        worker.start()
        time.sleep(1.0)
        assert not done.is_set(), "the publisher must wait while Redis refuses"
        if fault == "oom":
            client.config_set("maxmemory", "0")
        elif fault == "readonly":
            client.execute_command("REPLICAOF", "NO", "ONE")
        else:
            server = private_redis(port, str(tmp_path))
        worker.join(30)
        assert done.is_set()
        history = History(redis.Redis(port=port))
        epoch, _offset = history.position("c")
        got = history.since("c", epoch, 0)
        numbers = [orjson.loads(m)["n"] for m in got.messages]
        assert numbers[-5:] == [1, 2, 3, 4, 5] and len(numbers) == len(set(numbers)), numbers
    finally:
        server.kill()
        if master is not None:
            master.kill()


def test_an_offset_no_longer_on_the_broker_resumes_where_kafka_start_says_and_is_counted(settings):
    produce(settings, [(b"k", b"x%d" % i) for i in range(10)])
    partition = next(m.partition() for m in read_topic(settings, settings.topic_trades))
    source = KafkaBatchSource(settings, [settings.topic_trades], start="earliest", tail=True)
    part = source.build_part("ticks", f"{settings.topic_trades}#{partition}", 500)  # as if resumed from a store
    labels = {"topic": settings.topic_trades, "partition": str(partition), "start": "earliest"}
    got: list[bytes | None] = []
    deadline = time.monotonic() + 20
    while len(got) < 10 and time.monotonic() < deadline:
        for batch in part.next_batch():
            got.extend(batch.values)
        time.sleep(0.01)
    part.close()
    assert got == [b"x%d" % i for i in range(10)]
    assert REGISTRY.get_sample_value("tickstock_kafka_offset_resets_total", labels) == 1


def test_an_idle_partition_follows_the_wall_clock_only_while_its_source_is_caught_up(services):
    from connectors.kafka.source import RawBatch

    s = base_settings(idle_advance_s=0.01, live_update_interval_s=60, bar_close_delay_s=0)
    logic = PartitionLogic(s, NO_DETECTION, None)
    now = int(time.time() * 1000)
    t = now - 300_000 - now % 60_000 + 59_990  # 10 ms before its minute ends
    logic.on_batch([RawBatch("t", 0, range(1), [orjson.dumps(trade("IDLE", t))])])
    time.sleep(0.05)
    out, _ = logic.on_notify()
    assert not [o for o in out if isinstance(o, Bar) and o.status == "final"], "no evidence the broker is there: wait"
    logic.on_batch([RawBatch("t", 0, (), [], caught_up=True)])
    time.sleep(0.05)
    out, _ = logic.on_notify()
    # The minute's bar (the coarse buckets it is the last minute of close with it: which, depends on the clock)
    assert [(o.symbol, o.status) for o in out if isinstance(o, Bar) and o.status == "final" and o.timeframe == "1m"] == [
        ("IDLE", "final")
    ]


def test_after_an_outage_idleness_counts_only_once_producers_upstream_had_time_to_reconnect(services, monkeypatch):
    """The broker was away (no evidence for a while, no data): the first caught-up marker after it
    must not close bars at once, or the trades producers buffered meanwhile would come too late."""
    from connectors.kafka.source import RawBatch
    from flows import partition

    clock = [1000.0]
    monkeypatch.setattr(partition.time, "monotonic", lambda: clock[0])
    s = base_settings(idle_advance_s=1, live_update_interval_s=60, bar_close_delay_s=0)
    logic = PartitionLogic(s, NO_DETECTION, None)
    now = int(time.time() * 1000)
    t = now - 300_000 - now % 60_000 + 59_990
    logic.on_batch([RawBatch("t", 0, range(1), [orjson.dumps(trade("GAP", t))])])
    logic.on_batch([RawBatch("t", 0, (), [], caught_up=True)])
    clock[0] += 30  # the outage: no markers, no data
    logic.on_batch([RawBatch("t", 0, (), [], caught_up=True)])  # the broker is back
    clock[0] += 2

    def finals() -> list:
        out, _ = logic.on_notify()
        # minutes only: the coarse buckets its minute ends (which, depends on the clock) close with it
        return [o.symbol for o in out if isinstance(o, Bar) and o.status == "final" and o.timeframe == "1m"]

    assert finals() == [], "idle for 32 s, but caught up for 2: the producers upstream may still be reconnecting"
    for _ in range(int(partition.RECONNECT_GRACE_S) + 1):
        clock[0] += 1
        logic.on_batch([RawBatch("t", 0, (), [], caught_up=True)])
    assert finals() == ["GAP"]


def test_bad_settings_stop_a_flow_with_the_variable_named_and_exit_code_2(settings):
    import os
    import subprocess
    import sys

    env = os.environ | settings.as_env() | {"EVENT_MAX_AHEAD_S": "nan", "TOPIC_BARS": "no spaces allowed"}
    result = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.ohlcv:build_flow()"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "EVENT_MAX_AHEAD_S" in result.stderr and "TOPIC_BARS" in result.stderr
    assert "Traceback" not in result.stderr
