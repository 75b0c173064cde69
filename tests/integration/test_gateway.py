"""The gateway against a real Redis and PostgreSQL, with real WebSocket clients.

Each test runs its own gateway (own Redis namespace, port picked by the OS) in a background
thread; clients run on the test's event loop. Waits are bounded by generous timeouts; nothing
asserts a duration.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from connectors.gateway import protocol
from connectors.gateway.auth import Policy
from connectors.redis.history import HistoryLimits
from flows.settings import Settings
from schemas import symbols
from schemas.bars import encode_bar
from tests.support.gateway import SECRET, WAIT_S, BarStatus, Client, alert, live_bar, pattern, running_gateway
from tests.support.monitoring import exposed_metrics, used_metrics
from tests.support.services import TEST_DATABASE_URL, free_port, private_redis

pytestmark = pytest.mark.integration

REDIS_URL = Settings().redis_url


@pytest.fixture
def gw(services: None):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL) as running:
        yield running


def test_subscribe_unsubscribe(gw):
    async def scenario() -> None:
        client = await Client.open(gw.url)
        reply = await client.request({"type": "subscribe", "symbols": ["aapl", "MSFT"], "kinds": ["live"]})
        assert reply["type"] == "subscribed" and reply["symbols"] == ["AAPL", "MSFT"] and reply["kinds"] == ["live"]
        assert set(reply["positions"]) == {gw.channels.live_for("AAPL"), gw.channels.live_for("MSFT")}
        bars = gw.bars()
        bars.publish_live([live_bar("AAPL", 1.0), live_bar("IBM", 5.0), live_bar("MSFT", 2.0)])
        got = await client.until(lambda d: {m["symbol"] for m in d} == {"AAPL", "MSFT"})
        assert all(m["symbol"] != "IBM" for m in got)
        assert {m["channel"] for m in client.messages} == {gw.channels.live_for("AAPL"), gw.channels.live_for("MSFT")}

        reply = await client.request({"type": "unsubscribe", "symbols": ["AAPL"]})
        assert reply["type"] == "unsubscribed" and reply["symbols"] == ["MSFT"]
        client.forget()
        bars.publish_live([live_bar("AAPL", 3.0)])
        bars.publish_live([live_bar("MSFT", 4.0)])  # sent after AAPL's: once it is here, AAPL's would be too
        got = await client.until(lambda d: any(m["close"] == 4.0 for m in d))
        assert [m["symbol"] for m in got] == ["MSFT"]
        bars.close()
        await client.close()

    asyncio.run(scenario())


def test_filters_kinds_and_minimum_confidence(gw):
    async def scenario() -> None:
        client = await Client.open(gw.url)
        reply = await client.request(
            {"type": "subscribe", "symbols": ["AAPL"], "kinds": ["pattern", "alert"], "min_confidence": 0.8}
        )
        assert reply["min_confidence"] == 0.8
        bars = gw.bars()
        bars.publish_live([live_bar("AAPL", 1.0)])  # kind not subscribed
        gw.publish_events([pattern("AAPL", 0.5, 1), pattern("AAPL", 0.9, 2), pattern("MSFT", 0.99, 3)])
        gw.publish_events([alert("AAPL", 4)])  # the last one published
        got = await client.until(lambda d: any(m["kind"] == "alert" for m in d))
        assert [(m["kind"], m["confidence"]) for m in got] == [("pattern", 0.9), ("alert", 0.95)]
        assert all("offset" in m and "epoch" in m for m in got)
        bars.close()
        await client.close()

    asyncio.run(scenario())


def test_batching_replaces_unsent_live_updates_and_keeps_distinct_events(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, batch_interval_ms=400) as gw:

        async def scenario() -> None:
            client = await Client.open(gw.url)
            await client.request({"type": "subscribe", "symbols": ["AAPL"]})
            bars = gw.bars()
            # one Redis script call: the updates reach the gateway within one batching interval
            # (or straddle one flush at most)
            bars.publish_live([live_bar("AAPL", float(close)) for close in range(1, 11)])
            gw.publish_events([pattern("AAPL", 0.9, 1), pattern("AAPL", 0.9, 2, "hammer")])
            got = await client.until(
                lambda d: sum(m.get("kind") == "pattern" for m in d) == 2 and any(m.get("close") == 10.0 for m in d)
            )
            live = [m for m in got if m.get("status") == "live"]
            assert live[-1]["close"] == 10.0
            assert len(live) <= 2 < 10  # older unsent updates were replaced, not queued
            assert client.frames <= 3
            assert gw.gateway.stats.replaced >= 8
            bars.close()
            await client.close()

        asyncio.run(scenario())


def test_auth_failures(services):
    with running_gateway(
        TEST_DATABASE_URL, REDIS_URL, dev_mode=False, jwt_secret=SECRET, allowed_origins="http://dash.example"
    ) as gw:
        policy = Policy(SECRET, (), False)
        now = time.time()
        good = policy.issue("alice", ["AAPL"], ["live", "bar"], ttl_s=300, now=now)
        expired = policy.issue("alice", ["AAPL"], ["live"], ttl_s=60, now=now - 120)
        forged = Policy("another-secret-" + "y" * 32, (), False).issue("mallory", ["*"], ["*"], ttl_s=300, now=now)

        async def refused(url: str, **options: Any) -> tuple[int, str]:
            with pytest.raises(InvalidStatus) as caught:
                await connect(url, open_timeout=WAIT_S, **options)
            response = caught.value.response
            return response.status_code, response.body.decode()

        async def scenario() -> None:
            assert await refused(gw.url) == (401, "missing token: pass ?token=... or an `Authorization: Bearer` header\n")
            assert await refused(f"{gw.url}?token={expired}") == (401, "token expired\n")
            status, body = await refused(f"{gw.url}?token={forged}")
            assert status == 401 and body.startswith("invalid token")
            status, body = await refused(f"{gw.url}?token={good}", origin="http://evil.example")
            assert status == 403 and "origin 'http://evil.example' is not allowed" in body

            client = await Client.open(f"{gw.url}?token={good}", origin="http://dash.example")
            reply = await client.request({"type": "subscribe", "symbols": ["MSFT"]})
            assert reply == {"type": "error", "code": "forbidden", "message": "symbol(s) MSFT not allowed by your token"}
            reply = await client.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["alert"]})
            assert reply["code"] == "forbidden" and "alert" in reply["message"]
            reply = await client.request({"type": "subscribe", "symbols": ["AAPL"]})
            assert reply["type"] == "subscribed" and reply["kinds"] == ["bar", "live"]
            await client.close()
            # the header works as well as the query parameter
            client = await Client.open(gw.url, additional_headers={"Authorization": f"Bearer {good}"})
            await client.close()

        asyncio.run(scenario())
        assert gw.gateway.stats.rejected[401] == 3 and gw.gateway.stats.rejected[403] == 1


def test_token_expiring_during_the_session_closes_with_4001(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, dev_mode=False, jwt_secret=SECRET) as gw:
        token = Policy(SECRET, (), False).issue("alice", ["AAPL"], ["live"], ttl_s=2, now=time.time())

        async def scenario() -> None:
            client = await Client.open(f"{gw.url}?token={token}")
            code, reason = await client.wait_closed()
            assert (code, reason) == (protocol.CLOSE_UNAUTHORIZED, "token expired")

        asyncio.run(scenario())


def test_slow_client_is_cut_while_a_fast_one_keeps_receiving(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, max_queue=1000, max_buffer_bytes=64 * 1024, slow_timeout_s=5) as gw:

        async def scenario() -> None:
            fast = await Client.open(gw.url)
            await fast.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["pattern"]})
            # the slow client: tiny receive buffer, reads nothing after subscribing
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window from the start
            sock.connect(("127.0.0.1", gw.port))
            slow = await Client.open(gw.url, sock=sock, max_queue=1)
            await slow.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["pattern"]})

            sent = {"done": False, "n": 0}
            # the fast client reads all along, on this event loop
            reader = asyncio.create_task(fast.until(lambda d: sent["done"] and len(d) >= sent["n"], timeout=120))
            stats = gw.gateway.stats
            deadline = time.monotonic() + 90
            while not stats.dropped["slow_consumer"] and time.monotonic() < deadline:
                batch = [pattern("AAPL", 0.9, sent["n"] + i) for i in range(100)]
                await asyncio.to_thread(gw.publish_events, batch)
                sent["n"] += len(batch)
                await asyncio.sleep(0.01)
            sent["done"] = True
            published = sent["n"]
            assert stats.dropped["slow_consumer"] == 1, "the slow client was never cut"
            # it reads now: what was buffered for it, then the close frame
            slow_closed = asyncio.create_task(slow.wait_closed())
            # the fast client got every message, in order, with contiguous offsets, and is still connected
            got = await reader
            offsets = [m["offset"] for m in got]
            assert offsets == list(range(offsets[0], offsets[0] + published))
            reply = await fast.request({"type": "ping", "id": 7})
            assert reply["type"] == "pong" and reply["id"] == 7
            code, reason = await slow_closed
            assert code == protocol.CLOSE_SLOW_CONSUMER and reason.startswith("slow consumer")
            await fast.close()

        asyncio.run(scenario())


def test_a_cut_client_that_never_reads_its_close_frame_is_aborted(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, max_queue=10, max_buffer_bytes=16 * 1024, slow_timeout_s=1) as gw:

        async def scenario() -> None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", gw.port))
            stuck = await Client.open(gw.url, sock=sock, max_queue=1)
            await stuck.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["pattern"]})
            stats = gw.gateway.stats
            deadline = time.monotonic() + 60
            n = 0
            while stats.connections and time.monotonic() < deadline:
                if not stats.dropped["slow_consumer"]:
                    await asyncio.to_thread(gw.publish_events, [pattern("AAPL", 0.9, n + i) for i in range(100)])
                    n += 100
                await asyncio.sleep(0.05)
            assert stats.dropped["slow_consumer"] == 1 and stats.connections == 0  # gone without its help
            sock.close()

        asyncio.run(scenario())


def test_resume_after_a_disconnect_gets_exactly_the_missed_messages(gw):
    async def scenario() -> None:
        channel = gw.channels.events_for("AAPL")
        client = await Client.open(gw.url)
        await client.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["pattern"]})
        gw.publish_events([pattern("AAPL", 0.9, i) for i in range(5)])
        got = await client.until(lambda d: len(d) == 5)
        last = got[-1]
        await client.close()

        gw.publish_events([pattern("AAPL", 0.9, i) for i in range(5, 12)])  # missed while away
        client = await Client.open(gw.url)
        reply = await client.request(
            {
                "type": "subscribe",
                "symbols": ["AAPL"],
                "kinds": ["pattern"],
                "positions": {channel: {"epoch": last["epoch"], "offset": last["offset"]}},
            }
        )
        assert reply["type"] == "subscribed"
        gw.publish_events([pattern("AAPL", 0.9, 12)])  # live again
        got = await client.until(lambda d: len(d) >= 8)
        await asyncio.sleep(0.3)  # a duplicate would arrive within a few flushes
        await client._receive_one(0.3)
        got = client.data()
        assert [m["timestamp"] for m in got] == [1_800_000_000_000 + i * 60_000 for i in range(5, 13)]
        assert [m["offset"] for m in got] == list(range(last["offset"] + 1, last["offset"] + 9))
        assert gw.gateway.stats.resumes == 1
        await client.close()

    asyncio.run(scenario())


def test_timeframes_and_prices_live_and_resumed(gw):
    """`timeframes` picks the bar channels (per the issue-15 contract); `price` follows the prices channel."""
    c = gw.channels

    def five(close: float, minute: int, status: BarStatus) -> bytes:
        bar = msgspec.structs.replace(live_bar("AAPL", close, minute=minute, status=status), timeframe="5m")
        return encode_bar(bar)

    def price(value: float) -> bytes:
        return json.dumps({"version": 1, "symbol": "AAPL", "price": value, "size": 100, "timestamp": 1_800_000_000_000,
                           "session": "2027-01-15", "open": 10.0, "change": value - 10.0, "change_pct": (value - 10.0) * 10})\
            .encode()  # fmt: skip

    async def scenario() -> None:
        client = await Client.open(gw.url)
        reply = await client.request(
            {"type": "subscribe", "symbols": ["AAPL"], "kinds": ["live", "bar", "price"], "timeframes": ["5m", "1h"]}
        )
        assert reply["timeframes"] == ["5m", "1h"]
        assert set(reply["positions"]) == {
            c.live_at_for("5m", "AAPL"), c.ohlcv_at_for("5m", "AAPL"), c.live_at_for("1h", "AAPL"),
            c.ohlcv_at_for("1h", "AAPL"), c.prices_for("AAPL"),
        }  # fmt: skip
        gw.publish([(c.ohlcv_for("AAPL"), encode_bar(live_bar("AAPL", 1.0, status="final")))])  # 1m: not followed
        gw.publish([(c.live_at_for("5m", "AAPL"), five(2.0, 0, "live")), (c.prices_for("AAPL"), price(10.5))])
        gw.publish([(c.ohlcv_at_for("5m", "AAPL"), five(3.0, 0, "final"))])
        got = await client.until(lambda d: any(m.get("status") == "final" for m in d))
        by_channel = {m["channel"]: m["data"] for m in client.messages}
        assert set(by_channel) == {c.live_at_for("5m", "AAPL"), c.prices_for("AAPL"), c.ohlcv_at_for("5m", "AAPL")}
        assert by_channel[c.prices_for("AAPL")]["change"] == 0.5 and all(m.get("close") != 1.0 for m in got)
        last = {m["channel"]: (m["data"]["epoch"], m["data"]["offset"]) for m in client.messages}
        await client.close()

        gw.publish([(c.ohlcv_at_for("5m", "AAPL"), five(3.5, 0, "final")), (c.prices_for("AAPL"), price(9.0))])  # missed
        client = await Client.open(gw.url)
        positions = {ch: {"epoch": e, "offset": o} for ch, (e, o) in last.items() if ch != c.live_at_for("5m", "AAPL")}
        await client.request(
            {"type": "subscribe", "symbols": ["AAPL"], "kinds": ["bar", "price"], "timeframes": ["5m"], "positions": positions}
        )
        got = await client.until(lambda d: len(d) >= 2)
        assert sorted((m["channel"], m["data"].get("close", m["data"].get("price"))) for m in client.messages) == [
            (c.ohlcv_at_for("5m", "AAPL"), 3.5),
            (c.prices_for("AAPL"), 9.0),
        ]
        reply = await client.request({"type": "subscribe", "symbols": ["AAPL"], "timeframes": ["2m"]})
        assert reply["type"] == "error" and "unknown timeframe(s) 2m" in reply["message"]
        await client.close()

    asyncio.run(scenario())


def test_resume_beyond_the_kept_history_gets_a_reset(services):
    limits = HistoryLimits(max_len=5, max_age_s=0)
    # a queue far above the 2,000 missed: live messages still being relayed when the client comes
    # back count against its queue, and at exactly 2,000 the reset would be "too many missed" instead
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, history=limits, max_queue=20_000) as gw:

        async def scenario() -> None:
            channel = gw.channels.events_for("AAPL")
            client = await Client.open(gw.url)
            await client.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["pattern"]})
            gw.publish_events([pattern("AAPL", 0.9, 0)])
            first = (await client.until(lambda d: len(d) == 1))[0]
            await client.close()
            for start in range(1, 2001, 200):  # far beyond what the capped history keeps
                gw.publish_events([pattern("AAPL", 0.9, i) for i in range(start, start + 200)])
            client = await Client.open(gw.url)
            await client.request(
                {
                    "type": "subscribe",
                    "symbols": ["AAPL"],
                    "kinds": ["pattern"],
                    "positions": {channel: {"epoch": first["epoch"], "offset": first["offset"]}},
                }
            )
            reset = await client.control_reply()
            assert reset == {
                "type": "reset",
                "channel": channel,
                "epoch": first["epoch"],
                "offset": first["offset"] + 2000,
                "reason": "history gone",
            }
            gw.publish_events([pattern("AAPL", 0.9, 5000)])
            got = await client.until(lambda d: len(d) >= 1)
            assert [m["offset"] for m in got] == [first["offset"] + 2001]  # nothing old replayed
            # an epoch that no longer exists (history lost): reset too
            await client.request({"type": "unsubscribe", "symbols": ["AAPL"]})
            await client.request(
                {
                    "type": "subscribe",
                    "symbols": ["AAPL"],
                    "kinds": ["pattern"],
                    "positions": {channel: {"epoch": "0", "offset": 3}},
                }
            )
            reset = await client.control_reply()
            assert reset["type"] == "reset" and reset["reason"] == "history lost (new epoch)"
            assert gw.gateway.stats.resets == 2
            await client.close()

        asyncio.run(scenario())


def test_malformed_messages_get_errors_then_a_disconnect(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, max_errors=3) as gw:

        async def scenario() -> None:
            client = await Client.open(gw.url)
            reply = await client.request("not json")
            assert reply["type"] == "error" and reply["code"] == "bad_message" and reply["message"].startswith("not JSON")
            reply = await client.request({"type": "subscribe", "symbols": ["$$$"]})
            assert reply["message"] == f"invalid symbol '$$$': {symbols.RULE}"  # the one rule of schemas/symbols.py
            reply = await client.request({"type": "ping"})  # still connected, still served
            assert reply["type"] == "pong"
            reply = await client.request({"type": "launch"})
            assert reply["code"] == "bad_message" and "launch" in reply["message"]
            code, reason = await client.wait_closed()
            assert code == protocol.CLOSE_MISBEHAVING and reason.startswith("3 invalid messages")

        asyncio.run(scenario())
        assert gw.gateway.stats.dropped["misbehaving"] == 1


def test_gateway_fails_fast_when_redis_is_unreachable(services):
    from connectors.gateway.errors import GatewayUnavailable
    from connectors.gateway.server import Gateway
    from connectors.gateway.settings import GatewaySettings

    settings = GatewaySettings(port=0, dev_mode=True, redis_url="redis://127.0.0.1:1/0", database_url=TEST_DATABASE_URL)
    with pytest.raises(GatewayUnavailable, match=r"Redis at redis://127.0.0.1:1/0 is unreachable .*make services"):
        asyncio.run(Gateway(settings).start())


def test_health_and_metrics(gw):
    import httpx

    async def scenario() -> None:
        client = await Client.open(gw.url)
        await client.request({"type": "subscribe", "symbols": ["AAPL"]})
        bars = gw.bars()
        bars.publish_live([live_bar("AAPL", 1.0)])
        await client.until(lambda d: len(d) == 1)
        bars.close()
        health = httpx.get(f"{gw.http}/healthz", timeout=WAIT_S).json()
        assert health["status"] == "healthy" and health["reason"] == "ok"
        assert health["counters"]["connections"] == 1 and health["counters"]["delivered"] == 1
        ready = httpx.get(f"{gw.http}/readyz", timeout=WAIT_S)
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert {"redis", "postgresql", "task flusher", "task redis-reader"} <= set(ready.json()["conditions"])
        text = httpx.get(f"{gw.http}/metrics", timeout=WAIT_S).text
        assert "tickstock_gateway_open_connections 1.0" in text and "tickstock_ready 1.0" in text
        # what the example alert rules and the dashboard use of the gateway's metrics, it exposes
        assert {n for n in used_metrics() if n.startswith("tickstock_gateway_")} - exposed_metrics(text) == set()
        assert "tickstock_gateway_delivered_messages_total 1.0" in text
        for name in (
            "tickstock_gateway_redis_lag_seconds",
            "tickstock_gateway_queue_messages",
            "tickstock_gateway_dropped_clients",
            "tickstock_gateway_redis_messages_total",
        ):
            assert name in text
        await client.close()

    asyncio.run(scenario())
    doc = __import__("httpx").get(f"{gw.http}/openapi.json", timeout=WAIT_S).json()
    assert {"/api/ticks/recent", "/api/bars", "/api/events", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])


def test_redis_down_makes_health_error_and_the_gateway_recovers(services, tmp_path):
    import shutil
    import subprocess

    import httpx

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found (make services installs it)")
    port = free_port()

    def start_redis() -> subprocess.Popen:
        return private_redis(port, str(tmp_path))

    server = start_redis()
    url = f"redis://127.0.0.1:{port}/0"

    def wait_status(gw, wanted: str) -> httpx.Response:
        deadline = time.monotonic() + WAIT_S
        while (report := httpx.get(f"{gw.http}/healthz", timeout=WAIT_S)).json()["status"] != wanted:
            assert time.monotonic() < deadline, f"health never became {wanted}: {report.json()}"
            time.sleep(0.1)
        return report

    try:
        with running_gateway(TEST_DATABASE_URL, url, probe_interval_s=0.2) as gw:

            async def scenario() -> None:
                nonlocal server
                channel = gw.channels.live_for("AAPL")
                client = await Client.open(gw.url)
                await client.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["live"]})
                gw.bars().publish_live([live_bar("AAPL", 1.0)])
                await client.until(lambda d: len(d) == 1)

                server.terminate()  # Redis goes away, with everything it held (no persistence)
                server.wait(10)
                report = await asyncio.to_thread(wait_status, gw, "error")
                assert report.status_code == 503 and "redis" in report.json()["reason"]
                ready = await asyncio.to_thread(httpx.get, f"{gw.http}/readyz", timeout=WAIT_S)
                assert ready.status_code == 503 and ready.json()["conditions"]["redis"]["ok"] is False
                server = start_redis()
                await asyncio.to_thread(wait_status, gw, "healthy")
                ready = await asyncio.to_thread(httpx.get, f"{gw.http}/readyz", timeout=WAIT_S)
                assert ready.status_code == 200 and ready.json()["ready"] is True
                # the gateway could not replay what its client might have missed: it says so
                reset = await client.control_reply()
                assert reset["type"] == "reset" and reset["channel"] == channel
                assert reset["reason"] == "gateway lost its Redis subscription"
                gw.bars().publish_live([live_bar("AAPL", 7.0)])
                got = await client.until(lambda d: len(d) == 2)
                assert got[-1]["close"] == 7.0 and got[-1]["offset"] == 1 and got[-1]["epoch"] != got[0]["epoch"]
                await client.close()

            asyncio.run(scenario())
            assert gw.gateway.stats.redis_reconnects >= 1
    finally:
        server.terminate()
        server.wait(10)


def test_token_command_issues_a_token_the_gateway_accepts(monkeypatch, capsys):
    from connectors.gateway.__main__ import main

    monkeypatch.setenv("GATEWAY_JWT_SECRET", SECRET)
    assert main(["token", "bob", "--symbols", "AAPL,msft", "--kinds", "live,alert", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    grant = Policy(SECRET, (), False).admit(token, None, now=time.time())
    assert grant.user == "bob" and grant.symbols == {"AAPL", "MSFT"} and grant.kinds == {"live", "alert"}
    monkeypatch.delenv("GATEWAY_JWT_SECRET")
    assert main(["token", "bob"]) == 2
    assert "GATEWAY_JWT_SECRET must be set" in capsys.readouterr().err


def test_messages_json_is_what_was_published(gw):
    """The gateway relays the publisher's bytes: same fields, offset and epoch included."""

    async def scenario() -> None:
        client = await Client.open(gw.url)
        await client.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["bar"]})
        bars = gw.bars()
        bars.publish_final([live_bar("AAPL", 3.0, status="final")])
        got = (await client.until(lambda d: len(d) == 1))[0]
        epoch, offset = bars._history.position(gw.channels.ohlcv_for("AAPL"))
        assert got["epoch"] == epoch and got["offset"] == offset
        assert {k: got[k] for k in ("symbol", "close", "status", "revision")} == {
            "symbol": "AAPL",
            "close": 3.0,
            "status": "final",
            "revision": 0,
        }
        bars.close()
        await client.close()

    asyncio.run(scenario())
    assert json.loads(protocol.encode({"a": 1})) == {"a": 1}
