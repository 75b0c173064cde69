"""What tests share besides fixtures: settings of their own, the test database, topics, Redis servers.

Fixtures stay in `tests/conftest.py`; everything a test imports by name is here, so no test
imports from `conftest`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable

import polars as pl
import psycopg
import redis
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from connectors.feeds.synthetic import FeedEvent
from connectors.kafka import clients
from connectors.kafka.producer import make_producer
from flows.settings import Settings

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tickstock_test")
# Under `pytest -n N` (pytest-xdist, what `make test` runs) each worker gets a database of its own,
# created and migrated by the `services` fixture: the storage tests empty their tables, so two
# workers on one database would see each other's rows. Everything else a test touches (topics,
# Redis namespaces, ports, the embedded TimescaleDB) is already its own. The environment is set
# so the flows, gateways and commands the tests start as subprocesses use the same database.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    _head, _, _name = TEST_DATABASE_URL.rpartition("/")
    TEST_DATABASE_URL = f"{_head}/{_name.split('?')[0]}_{_WORKER}" + ("?" + _name.split("?", 1)[1] if "?" in _name else "")
    os.environ["TEST_DATABASE_URL"] = os.environ["DATABASE_URL"] = TEST_DATABASE_URL


def base_settings(**overrides: object) -> Settings:
    """Settings for one test: its own topics and Redis namespace, the test database."""
    run = uuid.uuid4().hex[:8]
    values: dict[str, object] = {
        "topic_trades": f"t{run}.trades",
        "topic_quotes": f"t{run}.quotes",
        "topic_second_aggs": f"t{run}.aggs.second",
        "topic_minute_aggs": f"t{run}.aggs.minute",
        "topic_dead_letter": f"t{run}.deadletter",
        "topic_bars": f"t{run}.bars",
        "redis_namespace": f"test{run}",
        "database_url": TEST_DATABASE_URL,
        "kafka_tail": False,
        "sink_max_backoff_s": 1.0,
        # no ops server unless a test asks for one (flows run in-process, many per test process)
        "bar_flow_ops_port": 0,
        "detection_flow_ops_port": 0,
        "detection_boundary_hold_s": 0.0,  # a test's detection flow must not wait for the wall clock
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_redis(port: int, directory: str | None = None) -> subprocess.Popen:
    """A redis-server of the test's own on `port` (tests that kill Redis never touch the shared one)."""
    command = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no"] + (["--dir", directory] if directory else [])  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            redis.Redis(port=port).ping()
            return server
        except redis.ConnectionError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("private redis-server did not start")


def create_topics(s: Settings) -> None:
    from connectors.kafka.admin import ensure_topics

    ensure_topics(s)


def publish(s: Settings, events: Iterable[FeedEvent]) -> int:
    topics = {"trades": s.topic_trades, "quotes": s.topic_quotes, "second_aggs": s.topic_second_aggs}
    producer, delivery = make_producer(s, idempotent=True)
    n = 0
    for e in events:
        producer.produce(topics[e.topic_kind], e.value, e.key)
        n += 1
        if n % 5000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    assert delivery.failed == 0, delivery.first_error
    return n


def read_topic(s: Settings, topic: str, timeout_s: float = 5.0) -> list:
    """Every message of `topic`, by assignment (no consumer-group round trips)."""
    return read_topics(s, [topic], timeout_s)


def read_topics(s: Settings, topics: Iterable[str], timeout_s: float = 5.0) -> list:
    """Every message of `topics`, one consumer for all (a consumer costs ~1.5 s on a loaded machine), in
    no order across partitions."""
    wanted = [TopicPartition(topic, p, OFFSET_BEGINNING) for topic in topics for p in range(s.topic_partitions)]
    consumer = clients.consumer(s, {"group.id": "tests", "enable.partition.eof": True})
    consumer.assign(wanted)
    out, ended = [], set()
    deadline = time.monotonic() + timeout_s
    while len(ended) < len(wanted) and time.monotonic() < deadline:
        for m in consumer.consume(1000, 0.5):
            if m.error() is None:
                out.append(m)
            else:
                ended.add((m.topic(), m.partition()))
    consumer.close()
    return out


def table_bars(conn: psycopg.Connection) -> pl.DataFrame:
    rows = conn.execute(
        "SELECT symbol, (extract(epoch from timestamp) * 1000)::bigint AS timestamp, open::float8, high::float8, "
        "low::float8, close::float8, volume, vwap::float8, trades, revision FROM ohlcv_1min ORDER BY symbol, timestamp"
    ).fetchall()
    schema = ["symbol", "timestamp", "open", "high", "low", "close", "volume", "vwap", "trades", "revision"]
    return pl.DataFrame(rows, schema=schema, orient="row")


class ChannelRecorder:
    """Collects every message on a Redis pattern in a background thread."""

    def __init__(self, url: str, pattern: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._pubsub = redis.Redis.from_url(url).pubsub()
        self._pubsub.psubscribe(pattern)
        confirmed = self._pubsub.get_message(timeout=5.0)  # the server has the subscription now
        assert confirmed is not None and confirmed["type"] == "psubscribe", confirmed
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stopped.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "pmessage":
                self.messages.append((message["channel"].decode(), message["data"]))

    def stop_when(
        self, done: Callable[[list[tuple[str, bytes]]], bool], at_least_s: float = 0.5, timeout_s: float = 15.0
    ) -> list[tuple[str, bytes]]:
        """Stop once `done(messages)` holds and `at_least_s` passed (later messages still have that long to show
        up), or after `timeout_s`: the messages a flow published just before it ended may still be on their
        way (seen: one bar short after a fixed 0.5 s at load 14); the caller's assertions then judge."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if time.monotonic() - started >= at_least_s and done(list(self.messages)):
                break
            time.sleep(0.05)
        return self.stop()

    def stop(self) -> list[tuple[str, bytes]]:
        self._stopped.set()
        self._thread.join(5)
        self._pubsub.close()
        return self.messages
