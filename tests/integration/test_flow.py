"""The whole OHLCV flow on real Kafka, PostgreSQL and Redis, checked against an independent oracle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import polars as pl
import pytest
import redis
from bytewax.testing import run_main
from polars.testing import assert_frame_equal

from connectors.redis.history import History
from flows.detect.settings import DetectionSettings
from flows.detection import build_flow as build_detection
from flows.ohlcv import build_flow
from flows.settings import Settings
from schemas.bars import decode_bar
from schemas.prices import decode_price
from schemas.sessions import session_of
from schemas.status import decode_status
from schemas.timeframes import TIMEFRAMES
from tests.support.bars import BAR_COLUMNS, ROOT, assert_same_bars, expected_bars, feed
from tests.support.databases import Storage
from tests.support.monitoring import exposed_metrics, used_metrics
from tests.support.rollups import assert_streamed_bars_match_views, assert_views_match
from tests.support.services import create_topics, publish, read_topic, table_bars

pytestmark = [pytest.mark.integration, pytest.mark.cost(60)]


def test_bars_equal_independent_reference_in_table_and_on_redis(settings, storage: Storage, recorder):
    """End to end into ohlcv_1min on plain PostgreSQL and on the embedded TimescaleDB; the revised
    minutes are in every coarser timeframe too once the flow is done. On TimescaleDB without the
    high/low detector: it reads each partition's bar history in a session of its own beside the
    sink's, and the embedded server serves one session at a time (so one final-bar writer there too)."""
    settings = settings.model_copy(update={"database_url": storage.url, "sink_bar_writers": 1 if storage.timescaledb else 2})
    events = feed()
    publish(settings, events)
    channel = recorder(settings.redis_url, f"{settings.redis_namespace}.market.ohlcv*")
    prices = recorder(settings.redis_url, f"{settings.redis_namespace}.market.prices*")

    storage.release()  # the flow's sink is the one session (TimescaleDB) while it runs
    run_main(build_flow(settings, DetectionSettings(enabled=False)) if storage.timescaledb else build_flow(settings))

    expected = expected_bars(events)
    table = table_bars(storage.conn)
    assert len(expected) > 500
    assert_same_bars(table, expected)
    assert table["revision"].max() >= 1, "late trades should have revised some final bars"
    assert_views_match(storage.conn)

    ns = settings.redis_namespace
    every_channel = f"{ns}.market.ohlcv"

    def minute_bars(got: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        return [(ch, data) for ch, data in got
                if ch == every_channel or (ch.startswith(every_channel + ".") and ch.split(".")[3] not in TIMEFRAMES)]  # fmt: skip

    # every 1-minute bar on both its channels (all symbols, and its symbol's) before reading on
    messages = channel.stop_when(lambda got: 2 * sum(ch == every_channel for ch, _ in got) == len(minute_bars(got)) > 0)
    everyone = [decode_bar(data) for ch, data in messages if ch == every_channel]
    own = [(ch, decode_bar(data)) for ch, data in minute_bars(messages) if ch != every_channel]
    assert len(own) == len(everyone)
    assert {b.timeframe for b in everyone} == {"1m"}
    # issue 15: the streamed 5m/15m/1h/1d bars (latest revision per bucket) equal the database's views, on
    # Redis and on the bars topic, revised by the late trades like the minutes
    streamed = {}
    for tf in settings.bar_timeframes:
        on_tf = [decode_bar(data) for ch, data in messages if ch == f"{ns}.market.ohlcv.{tf}"]
        own_tf = [(ch, decode_bar(data)) for ch, data in messages if ch.startswith(f"{ns}.market.ohlcv.{tf}.")]
        assert on_tf and len(own_tf) == len(on_tf) and {b.timeframe for b in on_tf} == {tf}
        assert all(ch.endswith("." + bar.symbol) for ch, bar in own_tf)
        streamed[tf] = on_tf
    counts = assert_streamed_bars_match_views(storage.conn, [b for bars in streamed.values() for b in bars])
    assert all(counts.values()), counts
    assert max(b.revision for b in streamed["5m"]) >= 1, "late trades should have revised some 5-minute bars"
    topic = [decode_bar(m.value()) for m in read_topic(settings, settings.topic_bars)]
    assert assert_streamed_bars_match_views(storage.conn, topic) == counts
    assert sorted(b.revision for b in topic if b.timeframe == "5m") == sorted(b.revision for b in streamed["5m"])
    history = History(redis.Redis.from_url(settings.redis_url), settings.history_limits())
    for channel, sent in ((f"{ns}.market.ohlcv.5m", streamed["5m"]), (f"{ns}.market.ohlcv.1h.{everyone[0].symbol}", None)):
        epoch, offset = history.position(channel)
        caught_up = history.since(channel, epoch, 0)  # a consumer resuming from the start: the gateway's recent/resume
        assert caught_up.complete and len(caught_up.messages) == offset > 0, channel
        if sent is not None:
            assert [decode_bar(m) for m in caught_up.messages] == sent
    last_prices = {}
    for ch, data in prices.stop():
        price = decode_price(data)
        if ch == f"{ns}.market.prices.{price.symbol}":
            assert price.timestamp >= last_prices.get(price.symbol, price).timestamp, "newer in event time only"
            last_prices[price.symbol] = price
    closes = table.filter(pl.col("close").is_not_null()).sort("timestamp").group_by("symbol").agg(pl.all().last())
    assert {p.symbol: p.price for p in last_prices.values()} == dict(zip(closes["symbol"], closes["close"], strict=True))
    for p in last_prices.values():
        assert p.session == session_of(p.timestamp).day and abs(p.change - (p.price - p.open)) < 1e-9
    assert all(ch.endswith("." + bar.symbol) for ch, bar in own)
    newest: dict[tuple[str, int], dict] = {}
    for bar in everyone:
        key = (bar.symbol, bar.timestamp)
        if key not in newest or newest[key]["revision"] <= bar.revision:
            newest[key] = {c: getattr(bar, c) for c in [*BAR_COLUMNS, "revision"]}
    on_redis = pl.DataFrame(list(newest.values())).sort("symbol", "timestamp")
    assert_frame_equal(on_redis, table.sort("symbol", "timestamp"), check_dtypes=False, rel_tol=1e-9)


def test_bad_records_go_to_dead_letters_with_reason_and_good_ones_still_count(settings, db, recorder):
    events = feed(seed=5, seconds=22 * 60, malformed_ratio=0.02, too_late_ratio=0.01)
    publish(settings, events)
    ns = settings.redis_namespace
    status = recorder(settings.redis_url, f"{ns}[:.][eh][re][ra][ol]*")  # tickstock:errors, tickstock.health.status
    run_main(build_flow(settings))

    letters = read_topic(settings, settings.topic_dead_letter)
    kinds: dict[str, int] = {}
    for m in letters:
        headers = dict(m.headers())
        kinds[headers["dlq.kind"].decode()] = kinds.get(headers["dlq.kind"].decode(), 0) + 1
        assert headers["dlq.reason"], "every dead letter says why"
        assert headers["dlq.topic"].decode() == settings.topic_trades
    labels = [e.label for e in events]
    assert kinds.get("malformed", 0) == labels.count("malformed")
    assert kinds.get("too_late", 0) == labels.count("too_late")
    originals = {e.value for e in events if e.label in ("malformed", "too_late")}
    assert {m.value() for m in letters} == originals
    assert_same_bars(table_bars(db), expected_bars(events))

    def settled(got: list[tuple[str, bytes]]) -> bool:  # every dead letter's error, and each partition's last health
        final = {h.partition: h for h in (decode_status(d) for ch, d in got if ch == f"{ns}.health.status")}
        return sum(ch == f"{ns}:errors" for ch, _ in got) >= len(letters) and sum(h.received for h in final.values()) >= len(
            events
        )

    published = [(channel, decode_status(data)) for channel, data in status.stop_when(settled)]
    errors = [r for channel, r in published if channel == f"{ns}:errors"]
    expected_errors = set()
    for m in letters:
        h = {k: v.decode() for k, v in m.headers()}
        expected_errors.add((h["dlq.kind"], h["dlq.reason"], h["dlq.topic"], int(h["dlq.partition"]), int(h["dlq.offset"])))
    assert {(e.error, e.reason, e.source_topic, e.source_partition, e.source_offset) for e in errors} == expected_errors
    health = [r for channel, r in published if channel == f"{ns}.health.status"]
    final = {h.partition: h for h in health}  # the last message per partition, sent at the end of input
    assert len(final) == settings.topic_partitions
    assert sum(h.received for h in final.values()) == len(events)
    assert sum(h.dropped for h in final.values()) == len(letters)


def test_a_partition_refusing_much_of_its_input_reports_degraded(settings, db, recorder):
    publish(settings, feed(seed=6, seconds=8 * 60, malformed_ratio=0.12))
    health = recorder(settings.redis_url, f"{settings.redis_namespace}.health.status")
    run_main(build_flow(settings))
    reports = [decode_status(data) for _, data in health.stop_when(lambda got: len(got) > 0)]
    assert reports and all(r.status == "degraded" and "refused" in r.reason for r in reports)


def test_feeding_the_same_ticks_again_changes_nothing(settings, db):
    events = feed(seed=3, seconds=12 * 60)
    publish(settings, events)
    run_main(build_flow(settings))
    first = table_bars(db)
    xmins = db.execute("SELECT string_agg(xmin::text, ',' ORDER BY symbol, timestamp) FROM ohlcv_1min").fetchone()
    run_main(build_flow(settings))
    assert_frame_equal(table_bars(db), first)
    assert db.execute("SELECT string_agg(xmin::text, ',' ORDER BY symbol, timestamp) FROM ohlcv_1min").fetchone() == xmins, (
        "no row was rewritten"
    )
    assert db.execute("SELECT count(*) FROM symbols").fetchone()[0] == first["symbol"].n_unique()


def detection_tables(db) -> dict[str, list]:
    return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall() for t in ("events", "indicator_values", "alerts")}


def kill_9_then_resume(flow: str, s: Settings, recovery: Path, progress: Callable[[], bool]) -> None:
    """Run `flow` with a recovery store, SIGKILL it once `progress()` says so, then run it again to the end."""
    env = os.environ | s.as_env()
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True, env=env, cwd=ROOT)
    command = [sys.executable, "-m", "bytewax.run", flow, "-r", str(recovery), "-s", "1", "-b", "0"]
    running = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and running.poll() is None and not progress():
        time.sleep(0.05)
    assert running.poll() is None, "the flow finished before it could be killed; make the input bigger"
    running.send_signal(signal.SIGKILL)
    running.wait()
    resumed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]


def count(db, table: str) -> int:
    return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_kill_9_and_restart_with_recovery_gives_the_same_tables(settings, db, tmp_path):
    """Bars and highs/lows as if the bar flow had never been interrupted, the same bars of every
    timeframe on the bars topic; the bars it published again after the restart change nothing
    downstream either (the detection flow's tables)."""
    # 70 minutes (~170,000 ticks): a machine that read a 25-minute feed in one epoch was killed after
    # its last snapshot, and the restart had nothing to publish again
    events = feed(seed=26, symbols=60, rate=40.0, seconds=70 * 60)
    publish(settings, events)
    run_main(build_flow(settings))
    run_main(build_detection(settings))
    uninterrupted = table_bars(db)
    published = read_topic(settings, settings.topic_bars)
    detected = detection_tables(db)
    assert all(len(rows) > 30 for rows in detected.values()), {t: len(r) for t, r in detected.items()}
    db.execute("TRUNCATE ohlcv_1min, symbols, events, indicator_values, alerts")

    # the same ticks, small batches, bars to a topic of their own, killed at ~40 % of the table
    again = settings.model_copy(update={"kafka_batch_size": 50, "topic_bars": settings.topic_bars + ".again"})
    create_topics(again)
    kill_9_then_resume("flows.ohlcv:build_flow()", again, tmp_path / "recovery",
                       lambda: count(db, "ohlcv_1min") >= len(uninterrupted) * 0.4)  # fmt: skip
    assert_frame_equal(table_bars(db), uninterrupted)
    republished = read_topic(again, again.topic_bars)
    assert len(republished) > len(published), "the restart published bars again"
    # and the very same bars of every timeframe, revisions included: nothing new, nothing missing
    assert {m.value() for m in republished} == {m.value() for m in published}
    assert {decode_bar(m.value()).timeframe for m in published} == {"1m", *settings.bar_timeframes}
    run_main(build_detection(again))
    after = detection_tables(db)
    for table, rows in detected.items():
        assert after[table] == rows, f"{table}: {len(after[table])} rows vs {len(rows)} uninterrupted"


def test_kill_9_of_the_detection_flow_gives_the_same_events_and_ids(settings, db, tmp_path):
    publish(settings, feed(seed=22, symbols=60, rate=40.0, seconds=25 * 60))
    run_main(build_flow(settings))
    run_main(build_detection(settings))
    detected = detection_tables(db)
    db.execute("TRUNCATE indicator_values, alerts")
    db.execute("DELETE FROM events WHERE kind <> 'highlow'")  # highs and lows are the bar flow's

    slow = settings.model_copy(update={"kafka_batch_size": 20})
    kill_9_then_resume("flows.detection:build_flow()", slow, tmp_path / "recovery",
                       lambda: count(db, "indicator_values") >= len(detected["indicator_values"]) * 0.4)  # fmt: skip
    after = detection_tables(db)
    for table, rows in detected.items():
        assert after[table] == rows, f"{table}: {len(after[table])} rows vs {len(rows)} uninterrupted"


def test_bars_from_per_second_aggregates_match_bars_from_trades(services, db):
    from tests.support.services import base_settings, create_topics

    s = base_settings(bar_source="second_aggs")
    create_topics(s)
    events = feed(seed=8, seconds=6 * 60, second_aggs=True, duplicate_ratio=0, out_of_order_ratio=0, late_ratio=0,
                  too_late_ratio=0, malformed_ratio=0, condition_mix="regular")  # fmt: skip
    publish(s, events)
    run_main(build_flow(s))
    assert_same_bars(table_bars(db), expected_bars(events))


# --- health, readiness, metrics (docs/monitoring.md) ---------------------------------------------


def _poll(url: str, status: int, timeout_s: float = 90) -> dict:
    """GET `url` until it answers `status`; its JSON body."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(url, timeout=5)
            if answer.status_code == status:
                return answer.json()
            last = f"{answer.status_code} {answer.text[:500]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered {status}; last: {last}")


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples in Prometheus text that match `name` and `labels`, or None when none does."""
    from prometheus_client.parser import text_string_to_metric_families

    values = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
              if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]  # fmt: skip
    return sum(values) if values else None


def test_both_flows_serve_health_readiness_and_metrics_and_are_not_ready_while_redis_is_down(settings, tmp_path):
    """Both flows tailing as `python -m bytewax.run` with JSON logs, on a Redis of the test's own:
    ready once caught up, not ready (but alive) while Redis is down, ready again after."""
    import shutil

    import httpx

    from tests.support.services import free_port, private_redis

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found (make services installs it)")
    redis_port, bar_port, detection_port = free_port(), free_port(), free_port()
    server = private_redis(redis_port, str(tmp_path))
    s = settings.model_copy(update={
        "redis_url": f"redis://127.0.0.1:{redis_port}/0", "kafka_tail": True, "bar_flow_ops_port": bar_port,
        "detection_flow_ops_port": detection_port, "ready_max_lag_messages": 0, "health_interval_s": 1.0,
        "sink_max_backoff_s": 0.5,
    })  # fmt: skip
    events = feed(seconds=2 * 60, malformed_ratio=0.01)
    publish(s, events)
    env = os.environ | s.as_env() | {"LOG_FORMAT": "json"}
    logs = {flow: (tmp_path / f"{flow}.log").open("w+") for flow in ("ohlcv", "detection")}
    flows = [subprocess.Popen([sys.executable, "-m", "bytewax.run", f"flows.{flow}:build_flow()", "-s", "1"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=logs[flow]) for flow in ("ohlcv", "detection")]  # fmt: skip
    bar, detection = f"http://127.0.0.1:{bar_port}", f"http://127.0.0.1:{detection_port}"
    try:
        ready = _poll(f"{bar}/readyz", 200)
        kafka = {name: c for name, c in ready["conditions"].items() if name.startswith("kafka ")}
        assert len(kafka) == s.topic_partitions and all(c["detail"] == "lag 0 messages" for c in kafka.values())
        assert _poll(f"{bar}/healthz", 200)["status"] == "alive"
        _poll(f"{detection}/readyz", 200)
        _poll(f"{detection}/healthz", 200)
        sinks = (("postgresql", "ohlcv_1min"), ("redis", "final_bars"), ("redis", "live_bars"), ("kafka", s.topic_bars))
        deadline = time.monotonic() + 60  # the bars topic's batch is timed at the epoch's end (1 s here)
        while True:  # until every sink timed a batch (seen: live_bars a moment after the bars topic at load 14)
            text = httpx.get(f"{bar}/metrics", timeout=10).text
            untimed = [
                t for t in sinks if not _sample(text, "tickstock_sink_batch_duration_seconds_count", sink=t[0], target=t[1])
            ]
            if not untimed:
                break
            assert time.monotonic() < deadline, f"no batch was timed for {untimed}"
            time.sleep(0.2)
        assert _sample(text, "tickstock_bar_events_total", outcome="received") == sum(
            1 for e in events if e.topic_kind == "trades"
        )
        assert _sample(text, "tickstock_bar_events_total", outcome="malformed")
        assert _sample(text, "tickstock_dead_letters_total", source=s.topic_trades, kind="malformed")
        assert _sample(text, "tickstock_kafka_consumer_lag_messages", topic=s.topic_trades, partition="0") == 0
        assert _sample(text, "tickstock_bar_watermark_lag_seconds", partition=f"{s.topic_trades}#0") is not None
        assert _sample(text, "tickstock_bar_output_total", partition=f"{s.topic_trades}#0", type="final")
        for sink, target in sinks:
            assert _sample(text, "tickstock_sink_batch_duration_seconds_count", sink=sink, target=target), (sink, target)
        assert _sample(text, "tickstock_ready") == 1.0
        exposed = exposed_metrics(text)
        text = httpx.get(f"{detection}/metrics", timeout=10).text
        exposed |= exposed_metrics(text)
        # what the example alert rules and the dashboard use of the flows' metrics, they expose
        flows_part = {n for n in used_metrics() if not n.startswith(("tickstock_bridge_", "tickstock_gateway_"))}
        assert flows_part - exposed == set()
        assert _sample(text, "tickstock_detection_bars_total", partition=f"{s.topic_bars}#0", outcome="final")
        assert _sample(text, "tickstock_kafka_consumer_lag_messages", topic=s.topic_bars, partition="0") == 0

        server.terminate()  # the health messages (every second) cannot be published now
        server.wait(10)
        down = _poll(f"{bar}/readyz", 503)
        assert "redis" in down["failing"], down
        assert _poll(f"{bar}/healthz", 200)["status"] == "alive"  # waiting it out: a restart would not help
        assert _sample(httpx.get(f"{bar}/metrics", timeout=10).text, "tickstock_ready") == 0.0
        server = private_redis(redis_port, str(tmp_path))
        _poll(f"{bar}/readyz", 200)
        text = httpx.get(f"{bar}/metrics", timeout=10).text
        assert _sample(text, "tickstock_dependency_retries_total", dependency="redis")
        assert _sample(text, "tickstock_reconnects_total", dependency="redis")
    finally:
        for flow in flows:
            flow.kill()
            flow.wait(30)
        server.terminate()
        server.wait(10)
    for flow, log in logs.items():
        log.seek(0)
        ours = [orjson.loads(line) for line in log.read().splitlines() if line.startswith("{")]
        assert ours and all({"time", "level", "logger", "message"} <= set(line) for line in ours), flow
        assert all(line["service"] == f"{flow}_flow" for line in ours)
    assert any(line["level"] in ("WARNING", "ERROR") and "Redis" in line["message"] for line in ours_of(tmp_path / "ohlcv.log"))


def ours_of(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
