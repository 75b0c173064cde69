"""Both flows as Bytewax clusters (2 processes, `-i`/`-a`, 1-2 workers each) against one process.

Same input, same output: `ohlcv_1min` (and so its rollups), the detection tables, every
channel's Redis history (the timed channels aside) and the bars topic; also after one process
of the cluster is killed with SIGKILL mid-run and the whole cluster restarts from its recovery
store. The topics have 4 partitions (TOPIC_PARTITIONS), so each process reads some and the
sinks write on every worker (connectors/sinks/parts.py).
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from bytewax.testing import run_main

from flows.detection import build_flow as build_detection
from flows.ohlcv import build_flow
from flows.settings import Settings
from tests.support.bars import feed
from tests.support.cluster import Cluster, as_multisets, first_occurrences, init_recovery, redis_history, topic_by_key
from tests.support.rollups import assert_views_match
from tests.support.services import TEST_DATABASE_URL, base_settings, create_topics, publish, table_bars

pytestmark = [pytest.mark.integration, pytest.mark.cost(60)]

BAR_FLOW = "flows.ohlcv:build_flow()"
DETECTION_FLOW = "flows.detection:build_flow()"
TABLES = ("events", "indicator_values", "alerts")
# Every channel keeps its whole history for the comparison.
HISTORY = {"redis_history_max_len": 1_000_000, "redis_history_max_age_s": 86_400.0}


def detection_tables(db) -> dict[str, list]:
    return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall() for t in TABLES}


def count(db, table: str) -> int:
    return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def fresh_outputs(s: Settings) -> Settings:
    """The same input topics, a bars topic and a Redis namespace of their own."""
    run = uuid.uuid4().hex[:8]
    again = s.model_copy(update={"topic_bars": f"{s.topic_bars}.{run}", "redis_namespace": f"{s.redis_namespace}{run}"})
    create_topics(again)
    return again


@pytest.fixture(scope="module")
def reference(services):
    """One process (in this one, one worker) over the feed: tables, bars topic, Redis history; once for the module."""
    s = base_settings(**HISTORY)
    create_topics(s)
    publish(s, feed(seed=31, symbols=40, rate=20.0, seconds=20 * 60))
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as db:
        db.execute("TRUNCATE ohlcv_1min, symbols, events, indicator_values, alerts")
        run_main(build_flow(s))
        run_main(build_detection(s))
        out = {
            "bars": table_bars(db),
            "detected": detection_tables(db),
            "topic": topic_by_key(s, s.topic_bars),
            "history": redis_history(s.redis_url, s.redis_namespace),
        }
    assert len(out["bars"]) > 500 and out["bars"]["revision"].max() >= 1
    assert all(len(rows) > 5 for rows in out["detected"].values()), {t: len(r) for t, r in out["detected"].items()}
    assert any(".market.ohlcv." in c for c in out["history"]) and any("indicator" in c for c in out["history"])
    return s, out


def test_two_processes_give_what_one_process_gives(reference, db):
    s, ref = reference
    two = fresh_outputs(s)
    Cluster(BAR_FLOW, two, processes=2, workers=2).wait()
    Cluster(DETECTION_FLOW, two, processes=2, workers=1).wait()

    assert table_bars(db).equals(ref["bars"])
    assert_views_match(db)
    assert detection_tables(db) == ref["detected"]
    # Per key (symbol) the bars topic holds the same records in the same order.
    assert topic_by_key(two, two.topic_bars) == ref["topic"]
    # A per-symbol channel is written by one sink partition: same records, same order; a channel
    # of every symbol interleaves the writers' batches, so the same records in some order.
    history = redis_history(two.redis_url, two.redis_namespace)
    renamed = {c.replace(two.redis_namespace, s.redis_namespace, 1): m for c, m in history.items()}
    assert renamed.keys() == ref["history"].keys()
    for channel, messages in ref["history"].items():
        if channel.partition("@")[0].rsplit(".", 1)[-1].isupper():  # ...market.ohlcv.AAPL@1m
            assert renamed[channel] == messages, channel
    assert as_multisets(renamed) == as_multisets(ref["history"])


def test_kill_9_of_one_process_then_a_restart_of_the_cluster_gives_the_same(reference, db, tmp_path):
    """One of two processes killed at ~40 % of the bars: its peer stops too (a cluster needs all
    its processes); both restart from the shared recovery store and finish as if never stopped.
    What the restart sends again (the epochs after the last snapshot) only repeats records."""
    s, ref = reference
    slow = fresh_outputs(s).model_copy(update={"kafka_batch_size": 50})
    recovery = tmp_path / "bars"
    init_recovery(recovery, 2, slow)
    cluster = Cluster(BAR_FLOW, slow, processes=2, recovery=recovery)
    try:
        failed = cluster.kill_one_when(1, lambda: count(db, "ohlcv_1min") >= len(ref["bars"]) * 0.4)
    finally:
        cluster.kill()
    assert failed == 1, "the peer of the killed process should stop with an error"
    assert count(db, "ohlcv_1min") < len(ref["bars"]), "killed too late to show anything"
    Cluster(BAR_FLOW, slow, processes=2, recovery=recovery).wait()

    assert table_bars(db).equals(ref["bars"])
    topic = topic_by_key(slow, slow.topic_bars)
    assert {k: first_occurrences(v) for k, v in topic.items()} == ref["topic"]
    assert sum(map(len, topic.values())) > sum(map(len, ref["topic"].values())), "the restart sent bars again"
    # The detection flow over the bars topic with its repeats: the same tables.
    Cluster(DETECTION_FLOW, slow, processes=2).wait()
    assert detection_tables(db) == ref["detected"]
    # Redis: every record once at least, a symbol's in the same order as one process sent them.
    history = redis_history(slow.redis_url, slow.redis_namespace)
    renamed = {c.replace(slow.redis_namespace, s.redis_namespace, 1): m for c, m in history.items()}
    assert renamed.keys() == ref["history"].keys()
    for channel, messages in ref["history"].items():
        if channel.partition("@")[0].rsplit(".", 1)[-1].isupper():
            assert first_occurrences(renamed[channel]) == messages, channel
        assert set(renamed[channel]) == set(messages), channel
