"""The live bridge against a local server speaking Massive's protocol and the real Kafka broker."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Message

from connectors.feeds.bridge import health, program, publish, relay
from connectors.feeds.bridge.program import serve
from connectors.feeds.bridge.relay import Bridge, split_frame
from connectors.feeds.bridge.settings import BridgeSettings
from connectors.feeds.bridge.spool import Spool
from connectors.feeds.synthetic import generate
from connectors.kafka.dead_letter import KIND, REASON, SHA256, SIZE, SOURCE_TOPIC, TRUNCATED
from flows.settings import Settings
from tests.support.monitoring import exposed_metrics, used_metrics
from tests.support.polygon_server import PolygonServer
from tests.support.proxy import KafkaProxy, start_tansu
from tests.support.services import base_settings, create_topics, read_topic, read_topics

pytestmark = pytest.mark.cost(60)  # a rough serial time in seconds: run early (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-123"


def feed_events(count: int = 300) -> list[dict[str, Any]]:
    """Trades, quotes, second aggregates from the synthetic feed plus a few minute aggregates."""
    synthetic = generate(
        seed=3, count=count, symbols=20, quote_ratio=0.3, second_aggs=True, duplicate_ratio=0, out_of_order_ratio=0, late_ratio=0
    )
    events = [orjson.loads(e.value) for e in synthetic]
    start = events[0]["t"] // 60_000 * 60_000
    for n, sym in enumerate(sorted({e["sym"] for e in events})[:5]):
        events.append(
            {
                "ev": "AM",
                "sym": sym,
                "v": 100 + n,
                "av": 1000,
                "op": 10.0,
                "vw": 10.1,
                "o": 10.0,
                "c": 10.2,
                "h": 10.3,
                "l": 9.9,
                "a": 10.05,
                "z": 50,
                "s": start,
                "e": start + 60_000,
            }
        )
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
    return [(m.topic(), m.key(), m.value()) for m in read_topics(s, topics)]


_started: list[subprocess.Popen[str]] = []
_spool_dirs: list[str] = []


def spool_dir() -> str:
    """A spool directory of the test's own (removed after it): bridges must not share one."""
    _spool_dirs.append(tempfile.mkdtemp(prefix="bridge-spool-"))
    return _spool_dirs[-1]


@pytest.fixture(autouse=True)
def _no_bridge_left_behind() -> Iterator[None]:
    """A test that fails half-way must not leave its bridge running (and retrying) forever."""
    yield
    for proc in _started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    _started.clear()
    for directory in _spool_dirs:
        shutil.rmtree(directory, ignore_errors=True)
    _spool_dirs.clear()


def start_bridge(s: Settings, url: str, key: str = KEY, **env: str) -> subprocess.Popen[str]:
    environ = (
        os.environ
        | s.as_env()
        | {
            "MASSIVE_API_KEY": key,
            "MASSIVE_URL": url,
            "BRIDGE_HEALTH_INTERVAL_S": "1",
            "BRIDGE_BACKOFF_INITIAL_S": "0.1",
            "BRIDGE_SPOOL_DIR": spool_dir(),
            "BRIDGE_OPS_PORT": "0",  # bridges of parallel tests must not share a port; the monitoring test sets one
        }
        | env
    )
    environ.pop("POLYGON_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "connectors.feeds.bridge"], cwd=ROOT, env=environ,
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
        program.main()


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
def test_health_readiness_and_metrics_follow_the_feed(settings: Settings) -> None:
    """Not ready while the feed's first connection hangs (no greeting), ready once subscribed; the
    metrics count what came in and went out by type; JSON logs."""
    import httpx

    from tests.support.services import free_port

    events = feed_events()
    port = free_port()
    ops = f"http://127.0.0.1:{port}"
    with PolygonServer(KEY, frames_of(events), first_greeting=None) as server:
        proc = start_bridge(settings, server.url, BRIDGE_OPS_PORT=str(port), BRIDGE_HANDSHAKE_TIMEOUT_S="3", LOG_FORMAT="json")
        deadline = time.monotonic() + 30
        while True:
            try:
                alive = httpx.get(f"{ops}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "the ops server never answered"
                time.sleep(0.05)
        assert alive.status_code == 200 and alive.json()["status"] == "alive"
        waiting = httpx.get(f"{ops}/readyz", timeout=5)  # the first connection hears nothing for 3 s
        assert waiting.status_code == 503 and waiting.json()["conditions"]["polygon feed"]["ok"] is False, waiting.json()
        while (ready := httpx.get(f"{ops}/readyz", timeout=5)).status_code != 200:
            assert time.monotonic() < deadline + 30, ready.json()
            time.sleep(0.1)
        assert ready.json()["conditions"]["kafka"]["ok"] is True
        got = wait_for(settings, len(events))
        text = httpx.get(f"{ops}/metrics", timeout=5).text
        code, out = stop_bridge(proc)
    assert code == 0, out
    assert len(got) == len(events)
    trades = sum(1 for e in events if e["ev"] == "T")
    assert f'tickstock_bridge_events_received_total{{type="T"}} {float(trades)}' in text
    assert f'tickstock_bridge_events_forwarded_total{{type="T"}} {float(trades)}' in text
    assert 'tickstock_reconnects_total{dependency="polygon"} 1.0' in text  # after the hung first connection
    for line in ("tickstock_bridge_feed_connected 1.0", "tickstock_ready 1.0", "tickstock_bridge_in_flight_records"):
        assert line in text
    assert {n for n in used_metrics() if n.startswith("tickstock_bridge_")} - exposed_metrics(text) == set()
    logs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert logs and all(line["service"] == "bridge" and {"level", "logger", "message"} <= set(line) for line in logs)
    assert any(line["level"] == "WARNING" and line["message"].startswith("disconnected") for line in logs)


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


# --- hostile feeds ---------------------------------------------------------------------------

T0 = 1793629800000


def trade(sym: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"ev": "T", "sym": sym, "x": 4, "i": str(n), "z": 3, "p": 10.5, "s": 100, "t": T0 + n, "q": n, **extra}


def raw(event: dict[str, Any]) -> bytes:
    """The event's JSON as the feed might spell it (stdlib: integers of any size, raw UTF-8)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def dead_letters_by_value(s: Settings, n: int) -> dict[bytes, dict[str, bytes]]:
    return {m.value(): dict(m.headers()) for m in wait_for_dead_letters(s, n, timeout_s=60)}


@pytest.mark.integration
def test_hostile_frames_are_dead_lettered_with_the_reason_and_every_good_event_forwarded_once(settings: Settings) -> None:
    """Every kind of bad frame and bad event in one feed; the good events around them all arrive, once."""
    g = [raw(trade("AAPL", n)) for n in range(12)]
    beyond = trade("MSFT", 100, t=2**70, s=2**65, p=1e308, q=-(2**64), note="日本語 🚀 \u0000 \u202e")
    bulk = [trade(f"S{n % 700}", 1000 + n) for n in range(40_000)]
    huge = trade("BIG", 99, blob="x" * 2_000_000)  # beyond the producer's 1 MB message size
    bad = {
        b'{"ev":"T","sym":"AAPL","x":"\xff\xfe"}': "not valid UTF-8",
        b'{"ev":"T","sym":"AAPL","p":NaN}': "JSON is malformed",
        b'{"ev":"Q","sym":"AAPL","bp":Infinity}': "JSON is malformed",
        b"1": "Expected `object`, got `int`",
        b"null": "Expected `object`, got `null`",
        b'"x"': "Expected `object`, got `str`",
        b"[]": "Expected `object`, got `array`",
        b'{"ev":null}': "Expected `str`, got `null` - at `$.ev`",
        b'{"ev":"T","sym":5}': "Expected `str`, got `int` - at `$.sym`",
        b'{"ev":"T","sym":"A B"}': "is not a symbol",
        '{"ev":"T","sym":"日本"}'.encode(): "is not a symbol",
        b'{"sym":"AAPL"}': "without an event type (ev)",
        b'{"ev":"T","sym":"AAPL","x":' + b"[" * 5000 + b"]" * 5000 + b"}": "nested deeper than the decoder allows",
        b"this is not JSON": "frame is not a JSON array",
        b"\x00\x01\x02": "frame is not a JSON array",
        b"": "frame ends before its closing ']'",
    }
    b = list(bad)
    frames: list[Any] = [
        b"[" + g[0] + b"," + g[1] + b"]",  # a binary frame
        b"[" + g[2] + b"," + b[0] + b"," + g[3] + b"]",  # binary, one event not UTF-8
        ("[" + g[4].decode() + "," + b[1].decode() + "," + b[2].decode() + "," + g[5].decode() + "]"),
        ("[" + ",".join(x.decode() for x in b[3:12]) + "," + g[6].decode() + "]"),
        ("[" + b[12].decode() + "," + g[7].decode() + "]"),
        [orjson.loads(g[8])],
        ("[" + raw(beyond).decode() + "]"),  # beyond int64/uint64, any Unicode: forwarded untouched
        [{"ev": "status", "status": ["odd"], "message": {"a": None}}, {"ev": "status"},
         {"ev": "status", "status": "success", "message": None}, {"ev": "LULD", "T": "AAPL"}, orjson.loads(g[9])],
        (b"[" + b",".join(raw(e) for e in bulk[:20_000]) + b"," + raw(huge) + b","
         + b",".join(raw(e) for e in bulk[20_000:]) + b"]"),  # one ~8 MB frame holding a 2 MB event
        "this is not JSON",
        b"\x00\x01\x02",
        ("[" + g[10].decode() + "," + g[11].decode()),  # cut short: no closing bracket
    ]  # fmt: skip
    good = [orjson.loads(x) for x in g] + bulk
    with PolygonServer(KEY, frames) as server:
        proc = start_bridge(settings, server.url)
        got = wait_for(settings, len(good) + 1, timeout_s=120)
        dead = dead_letters_by_value(settings, len(bad) + 1)
        code, out = stop_bridge(proc)
    assert code == 0, out[-3000:]
    assert server.connections == 1  # nothing above costs the connection
    expected = [(settings.topic_trades, e["sym"].encode(), raw(e)) for e in [*good, beyond]]
    assert sorted(got) == sorted(expected)  # each exactly once, byte for byte
    for value, why in bad.items():
        assert value in dead, (value[:60], sorted(v[:40] for v in dead))
        assert dead[value][KIND] == b"malformed" and why.encode() in dead[value][REASON], (value[:60], dead[value])
    assert dead[b'{"ev":"T","sym":"A B"}'][SOURCE_TOPIC] == settings.topic_trades.encode()
    big = [h for v, h in dead.items() if h[KIND] == b"too_large"]
    assert len(big) == 1  # the 2 MB event: a bounded prefix, its size and its hash
    (h,) = big
    assert h[SIZE] == str(len(raw(huge))).encode() and h[TRUNCATED] == b"true"
    assert h[SHA256] == hashlib.sha256(raw(huge)).hexdigest().encode() and b"MSG_SIZE_TOO_LARGE" in h[REASON]
    prefix = next(v for v, hh in dead.items() if hh is h)
    assert raw(huge).startswith(prefix) and len(prefix) == 512 * 1024
    assert f"malformed={len(bad)} ignored=1 too_large=1" in out
    assert "feed status ['odd']: {'a': None}" in out  # an odd status is logged as what it is


@pytest.mark.integration
def test_a_frame_over_the_frame_limit_drops_only_that_frame_and_says_why(settings: Settings) -> None:
    events = feed_events(4)[:2]
    oversized = "[" + raw(trade("AAPL", 1, blob="y" * 1_500_000)).decode() + "]"
    with PolygonServer(KEY, [[events[0]], oversized, [events[1]]], hold_after=2) as server:
        proc = start_bridge(settings, server.url, BRIDGE_MAX_FRAME_MB="1")
        deadline = time.monotonic() + 30
        while server.connections < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # frames sent while the bridge closes the connection are lost: hold the next one
        server.release()
        got = wait_for(settings, 2)
        code, out = stop_bridge(proc)
    assert code == 0, out
    assert set(got) == expected_records(settings, events) and len(got) == 2
    assert "the feed sent a frame larger than BRIDGE_MAX_FRAME_MB=1" in out
    assert server.connections == 2


@pytest.mark.integration
@pytest.mark.parametrize(
    ("server_options", "says"),
    [
        ({"first_greeting": None}, "TimeoutError"),  # a server that accepts and never speaks
        ({"first_greeting": b"\xff\x00 not a status"}, "the feed's greeting is not a status"),
        ({"first_auth_reply": ['[{"ev":"status","status":{"odd":[1]},"message":null}]']}, "has no auth_success"),
        ({"first_auth_reply": [b"\x00\x01", "not JSON"]}, "has no auth_success"),
        ({"first_greeting": '[{"ev":"status","status":"connected","message":"' + "m" * 200_000 + '"}]'}, "connected"),
    ],
)
def test_odd_handshakes_are_survived_and_reported(settings: Settings, server_options: dict[str, Any], says: str) -> None:
    events = feed_events(30)
    with PolygonServer(KEY, frames_of(events), **server_options) as server:
        proc = start_bridge(settings, server.url, BRIDGE_HANDSHAKE_TIMEOUT_S="0.5")
        got = wait_for(settings, len(events))
        code, out = stop_bridge(proc)
    assert code == 0, out[-3000:]
    assert set(got) == expected_records(settings, events) and len(got) == len(events)
    assert says in out
    assert "Traceback" not in out
    assert max(len(line) for line in out.splitlines()) < 2000  # what the feed says is logged bounded


@pytest.mark.integration
def test_reconnects_forever_past_ten_thousand_failed_attempts(settings: Settings, tmp_path: Path) -> None:
    """The feed host refuses every connection (a TCP proxy in front of it is cut) after a long
    run of failures; the bridge keeps trying, capped, and delivers once the host is back."""
    events = feed_events(30)
    with PolygonServer(KEY, frames_of(events)) as server, KafkaProxy(free_port(), server.port) as proxy:
        proxy.cut()
        cfg = BridgeSettings(api_key=KEY, massive_url=f"ws://127.0.0.1:{proxy.port}/stocks",
                             bridge_backoff_initial_s=0.001, bridge_backoff_max_s=0.002, bridge_spool_dir=tmp_path)  # fmt: skip
        bridge = Bridge(cfg, settings)
        bridge.reconnect_attempt = 10_000  # a weekend of failed reconnects behind it (2**10000 overflows a float)

        async def scenario() -> int:
            feed = asyncio.ensure_future(bridge.run())
            while bridge.stats.reconnects < 100:
                assert not feed.done(), feed
                await asyncio.sleep(0.01)
            attempts = bridge.reconnect_attempt
            proxy.restore()
            deadline = time.monotonic() + 60
            while bridge.stats.events_total() < len(events) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
            await bridge.drain()
            return attempts

        attempts = asyncio.run(scenario())
    assert attempts >= 10_100
    got = records(settings)
    assert set(got) == expected_records(settings, events) and len(got) == len(events)


# --- Kafka failing ---------------------------------------------------------------------------


@pytest.mark.integration
def test_failed_deliveries_back_off_capped_and_jittered_and_the_record_is_never_dropped(
    settings: Settings, tmp_path: Path
) -> None:
    """The same record fails 25 times in a row (purged from the producer's queue while Kafka is
    cut off by a TCP proxy, so it cannot slip out first); then Kafka comes back."""
    with KafkaProxy(free_port(), int(settings.kafka_bootstrap_servers.rsplit(":", 1)[1])) as proxy:
        proxy.cut()
        via_proxy = settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{proxy.port}"})
        cfg = BridgeSettings(api_key="unused", bridge_retry_backoff_initial_s=0.002, bridge_retry_backoff_max_s=0.05,
                             bridge_spool_dir=tmp_path)  # fmt: skip
        bridge = Bridge(cfg, via_proxy)
        value = orjson.dumps(feed_events(1)[0])
        bridge.producer.produce(settings.topic_trades, value, b"AAPL")
        delays = []
        for _ in range(25):
            bridge.producer.purge(in_queue=True, in_flight=False)  # its delivery fails
            bridge.producer.poll(0)
            assert len(bridge.retry) == 1  # kept
            delays.append(bridge.retry_delay)
            deadline = time.monotonic() + 10
            while not bridge._resend_failed():  # not produced again before its backoff is over
                assert len(bridge.retry) == 1
                assert time.monotonic() < deadline
                time.sleep(0.001)
            assert not bridge.retry  # back in the producer
        proxy.restore()
        asyncio.run(bridge.drain())
    assert bridge.stats.delivery_errors == 25
    assert all(0 < d <= 0.05 for d in delays)
    assert delays[0] <= 0.002 and max(delays[10:]) > 0.025  # grew from the initial delay to near the cap
    assert len(set(delays[10:])) > 1  # jittered
    assert [(m.key(), m.value()) for m in read_topic(settings, settings.topic_trades)] == [(b"AAPL", value)]


@pytest.mark.integration
def test_a_record_kafka_refuses_for_good_is_dead_lettered_and_a_refused_dead_letter_keeps_its_headers(
    settings: Settings, tmp_path: Path
) -> None:
    """Tansu takes any record, so the broker's refusals are built here (KafkaError as librdkafka reports it)."""
    bridge = Bridge(BridgeSettings(api_key="unused", bridge_spool_dir=tmp_path), settings)
    value = orjson.dumps(feed_events(1)[0])
    bridge._failed(KafkaError(KafkaError.INVALID_RECORD, "Broker: Invalid record"),
                   Message(topic=settings.topic_trades, value=value, key=b"AAPL"))  # fmt: skip
    letter_headers = [(KIND, b"malformed"), (REASON, b"earlier reason"), (SIZE, b"1000")]
    bridge._failed(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), Message(topic=settings.topic_dead_letter, value=b"z" * 1000),
                   headers=letter_headers)  # fmt: skip
    asyncio.run(bridge.drain())
    assert read_topic(settings, settings.topic_trades) == []  # not retried forever, not forwarded
    dead = {m.value(): dict(m.headers()) for m in read_topic(settings, settings.topic_dead_letter)}
    assert dead[value][KIND] == b"malformed" and b"INVALID_RECORD" in dead[value][REASON]
    assert dead[value][SOURCE_TOPIC] == settings.topic_trades.encode()
    assert dead[b""][REASON] == b"earlier reason" and dead[b""][SIZE] == b"1000"  # the shrunk dead letter
    assert dead[b""][TRUNCATED] == b"true" and dead[b""][SHA256] == hashlib.sha256(b"z" * 1000).hexdigest().encode()


@pytest.mark.integration
def test_kafka_refusing_the_bridge_stops_it_with_code_4_and_spools_what_it_read(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A topic authorization failure (built: Tansu authorizes everything) for one record."""
    events = feed_events(20)
    refused = orjson.dumps(trade("AAPL", 5000))
    bridge = Bridge(BridgeSettings(api_key=KEY, bridge_spool_dir=tmp_path, bridge_stop_timeout_s=5), settings)
    with PolygonServer(KEY, frames_of(events)) as server:
        bridge.cfg.massive_url = server.url
        spool = Spool(tmp_path)
        spool.lock()

        async def scenario() -> int:
            serving = asyncio.ensure_future(serve(bridge, spool))
            deadline = time.monotonic() + 30
            while (bridge.stats.events_total() < len(events) or bridge.in_flight()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # all acknowledged
            bridge._failed(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Broker: Topic authorization failed"),
                           Message(topic=settings.topic_trades, value=refused, key=b"AAPL"))  # fmt: skip
            return await asyncio.wait_for(serving, 60)

        code = asyncio.run(scenario())
    assert code == program.EXIT_KAFKA_REFUSED
    assert "Kafka refuses the bridge's records (TOPIC_AUTHORIZATION_FAILED" in capsys.readouterr().err
    (path,) = spool.pending()
    assert list(spool.read(path)) == [(settings.topic_trades, b"AAPL", refused, None)]
    got = records(settings)
    assert set(got) == expected_records(settings, events) and len(got) == len(events)


def read_spool(directory: str) -> list[Any]:
    spool = Spool(Path(directory))
    return [record for path in spool.pending() for record in spool.read(path)]


@pytest.mark.integration
def test_sigterm_with_kafka_cut_stops_in_bounded_time_spools_what_was_read_and_the_next_start_sends_it(
    services: None,
) -> None:
    """Kafka cut by a TCP proxy; the feed goes on; SIGTERM. The bridge must not wait for Kafka
    forever: after BRIDGE_STOP_TIMEOUT_S it writes what it read to the spool and exits. The next
    start, with Kafka back, produces the spool first: every event exactly once."""
    broker_port, proxy_port = free_port(), free_port()
    spooled_in = spool_dir()
    with KafkaProxy(proxy_port, broker_port) as proxy:
        tansu = start_tansu(broker_port, advertised_port=proxy_port)
        try:
            s = base_settings(kafka_bootstrap_servers=f"127.0.0.1:{proxy_port}", topic_partitions=2)
            create_topics(s)
            events = feed_events(400)
            frames = frames_of(events)
            before = sum(len(f) for f in frames[:20])
            with PolygonServer(KEY, frames, hold_after=20) as server:
                proc = start_bridge(s, server.url, BRIDGE_STOP_TIMEOUT_S="1", BRIDGE_SPOOL_DIR=spooled_in)
                assert len(wait_for(s, before)) == before  # the first 20 frames are in Kafka
                proxy.cut()
                server.release()
                assert server.all_sent.wait(30)
                time.sleep(1.0)  # the bridge reads the rest into its window
                code, out = stop_bridge(proc)  # waits at most 60 s: a bridge waiting for Kafka fails here
            assert code == 0, out[-3000:]
            spooled = read_spool(spooled_in)
            assert len(spooled) == len(events) - before, out[-3000:]
            assert "Kafka did not acknowledge them within BRIDGE_STOP_TIMEOUT_S=1 s; wrote" in out
            proxy.restore()
            with PolygonServer(KEY, []) as quiet:
                proc = start_bridge(s, quiet.url, BRIDGE_SPOOL_DIR=spooled_in)
                got = wait_for(s, len(events), 90)
                deadline = time.monotonic() + 30
                while Spool(Path(spooled_in)).pending() and time.monotonic() < deadline:
                    time.sleep(0.1)
                code, out = stop_bridge(proc)
            assert code == 0, out[-3000:]
            assert "before reading the feed" in out
            assert Spool(Path(spooled_in)).pending() == []  # acknowledged, so removed
            assert len(got) == len(events) and set(got) == expected_records(s, events)
        finally:
            tansu.kill()
            tansu.wait(10)


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("BRIDGE_MAX_IN_FLIGHT", "0", "greater than or equal to 1"),
        ("BRIDGE_MAX_IN_FLIGHT", "-1", "greater than or equal to 1"),
        ("BRIDGE_MAX_IN_FLIGHT", "abc", "valid integer"),
        ("BRIDGE_MAX_IN_FLIGHT", "1e99", "valid integer"),
        ("BRIDGE_MAX_IN_FLIGHT", "99999999999999999999999", "less than or equal to 10000000"),
        ("BRIDGE_MAX_IN_FLIGHT_MB", "0", "greater than or equal to 1"),
        ("BRIDGE_MAX_FRAME_MB", "4096", "less than or equal to 1024"),
        ("BRIDGE_BACKOFF_INITIAL_S", "nan", "finite number"),
        ("BRIDGE_BACKOFF_INITIAL_S", "inf", "finite number"),
        ("BRIDGE_BACKOFF_INITIAL_S", "0", "greater than or equal to 0.001"),
        ("BRIDGE_BACKOFF_INITIAL_S", "-1", "greater than or equal to 0.001"),
        ("BRIDGE_BACKOFF_MAX_S", "1e9", "less than or equal to 3600"),
        ("BRIDGE_BACKOFF_INITIAL_S", "50", "BRIDGE_BACKOFF_INITIAL_S must not exceed BRIDGE_BACKOFF_MAX_S"),
        ("BRIDGE_RETRY_BACKOFF_MAX_S", "0", "greater than or equal to 0.001"),
        ("BRIDGE_HEALTH_INTERVAL_S", "0", "greater than or equal to 0.01"),
        ("BRIDGE_HANDSHAKE_TIMEOUT_S", "-inf", "finite number"),
        ("BRIDGE_STOP_TIMEOUT_S", "-1", "greater than or equal to 0"),
        ("BRIDGE_IDEMPOTENCE", "maybe", "valid boolean"),
        ("MASSIVE_URL", "http://example.invalid/stocks", "ws:// or wss:// URL"),
        ("MASSIVE_URL", "ws://", "ws:// or wss:// URL"),
        ("MASSIVE_URL", "ws://host:99999/stocks", "not a URL"),
        ("MASSIVE_URL", "not a url", "ws:// or wss:// URL"),
        ("MASSIVE_FEED", "a b", "host name"),
        ("MASSIVE_SUBSCRIPTIONS", ",,,", "names no channel"),
        ("MASSIVE_SUBSCRIPTIONS", "T", "'T' is not a channel"),
        ("MASSIVE_SUBSCRIPTIONS", "T.*,Q.a b", "'Q.a b' is not a channel"),
        ("MASSIVE_API_KEY", "", "MASSIVE_API_KEY: String should have at least 1 character"),
        ("TOPIC_TRADES", "bad topic!", "TOPIC_TRADES='bad topic!': not a Kafka topic name"),
        ("TOPIC_PARTITIONS", "0", "TOPIC_PARTITIONS='0'"),
    ],
)
def test_a_bad_setting_is_a_precise_error_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv("MASSIVE_API_KEY", KEY)
    monkeypatch.setenv("BRIDGE_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as raised:
        program.main()
    assert raised.value.code == 2
    assert says in str(raised.value)
    if name != "MASSIVE_API_KEY" and "must not exceed" not in says:
        assert name in str(raised.value)


def test_an_unusable_spool_directory_is_a_bad_setting_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = os.environ | {"MASSIVE_API_KEY": KEY, "BRIDGE_SPOOL_DIR": str(blocker / "spool")}
    proc = subprocess.run([sys.executable, "-m", "connectors.feeds.bridge"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "cannot use BRIDGE_SPOOL_DIR" in proc.stderr and "Traceback" not in proc.stderr
    env = os.environ | {"MASSIVE_API_KEY": KEY, "BRIDGE_MAX_IN_FLIGHT": "lots"}
    proc = subprocess.run([sys.executable, "-m", "connectors.feeds.bridge"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "BRIDGE_MAX_IN_FLIGHT='lots'" in proc.stderr and "Traceback" not in proc.stderr


# --- bounded memory ----------------------------------------------------------------------------


def test_a_million_distinct_event_types_do_not_grow_the_counters(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Types without a topic are only counted: no Kafka record, so no broker is needed here."""
    bridge = Bridge(BridgeSettings(api_key="unused", bridge_spool_dir=tmp_path), Settings(kafka_bootstrap_servers="127.0.0.1:1"))

    async def flood() -> None:
        for f in range(1000):
            await bridge.on_frame(orjson.dumps([{"ev": f"X{f}-{n}", "sym": "AAPL"} for n in range(1000)]))
        await bridge.on_frame(orjson.dumps([{"ev": "Y" * 100_000}]))  # and a long one

    with caplog.at_level("WARNING", logger="tickstock.bridge"):
        asyncio.run(flood())
    assert bridge.stats.ignored == 1_000_001
    assert len(bridge.stats.events_in) <= health.MAX_EVENT_TYPES + 6
    assert len(bridge.stats.not_forwarded) <= health.MAX_EVENT_TYPES + 6
    assert len(bridge.stats.types) <= health.MAX_EVENT_TYPES + 6
    assert sum(bridge.stats.events_in.values()) == 1_000_001  # every event still counted, as OTHER
    assert bridge.stats.events_in[health.OTHER] > 999_000
    assert len(caplog.records) < 100  # logged once per named type, then 1 in 2**n
    assert len(bridge.stats.line(0)) < 3000


@pytest.mark.integration
def test_a_flood_of_distinct_symbols_is_forwarded_with_a_bounded_memory_of_them(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "MAX_SYMBOLS_REMEMBERED", 500)
    bridge = Bridge(BridgeSettings(api_key="unused", bridge_spool_dir=tmp_path), settings)
    events = [trade(f"Z{n}", n) for n in range(3000)]

    async def flood() -> None:
        for i in range(0, len(events), 100):
            await bridge.on_frame(orjson.dumps(events[i : i + 100]))
        await bridge.drain()

    asyncio.run(flood())
    assert len(bridge.symbols) == 500
    got = {(m.key(), m.value()) for m in read_topic(settings, settings.topic_trades)}
    assert got == {(e["sym"].encode(), orjson.dumps(e)) for e in events}


@pytest.mark.integration
def test_a_stop_in_the_middle_of_a_frame_spools_the_rest_of_it(settings: Settings, tmp_path: Path) -> None:
    """Kafka cut, the window (10) full half-way through a 100-event frame, then a stop: the 10 in
    the producer and the 90 never handed over all go to the spool, in order."""
    with KafkaProxy(free_port(), int(settings.kafka_bootstrap_servers.rsplit(":", 1)[1])) as proxy:
        proxy.cut()
        via_proxy = settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{proxy.port}"})
        bridge = Bridge(BridgeSettings(api_key="unused", bridge_max_in_flight=10, bridge_stop_timeout_s=0.2,
                                       bridge_spool_dir=tmp_path), via_proxy)  # fmt: skip
        events = [trade(f"S{n}", n) for n in range(100)]
        spool = Spool(tmp_path)
        spool.lock()

        async def scenario() -> int:
            reading = asyncio.ensure_future(bridge.on_frame(orjson.dumps(events)))
            while bridge.stats.handed < 10:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            assert not reading.done()  # waiting for room
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            return await bridge.stop(spool)

        assert asyncio.run(scenario()) == 0
    assert len(bridge.unsent) == 0
    spooled = read_spool(str(tmp_path))
    assert sorted(spooled) == sorted((settings.topic_trades, e["sym"].encode(), orjson.dumps(e), None) for e in events)
    assert [r for r in spooled if r[1] != b"S0"][-1][1] == b"S99"  # the unsent ones last, in frame order


@pytest.mark.integration
def test_records_neither_kafka_nor_the_spool_takes_are_a_loud_exit_5(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with KafkaProxy(free_port(), int(settings.kafka_bootstrap_servers.rsplit(":", 1)[1])) as proxy:
        proxy.cut()
        via_proxy = settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{proxy.port}"})
        bridge = Bridge(BridgeSettings(api_key="unused", bridge_stop_timeout_s=0, bridge_spool_dir=tmp_path), via_proxy)
        bridge.producer.produce(settings.topic_trades, b'{"ev":"T"}', b"AAPL")
        gone = tmp_path / "spool"
        spool = Spool(gone)
        spool.lock()
        (gone / ".lock").unlink()
        gone.rmdir()  # the disk under the spool went away
        assert asyncio.run(bridge.stop(spool)) == publish.EXIT_NOT_SPOOLED
    assert "1 records read from the feed are lost" in caplog.text
