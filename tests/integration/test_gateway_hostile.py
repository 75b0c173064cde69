"""Hostile input on every gateway path, against a real gateway, Redis, PostgreSQL and WebSocket clients.

Redis messages and channel names (any bytes), client frames (binary, huge, nested, wrong types,
unknown fields, huge lists), REST parameters (property-based, every method) and the limits that
keep the work per client bounded (rate limit, resume budget, symbols, connections, the recovery
map). Each one: refused with a precise reason, the gateway carries on, nothing good is lost.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from connectors.gateway import protocol
from flows.settings import Settings
from tests.support.gateway import WAIT_S, Client, live_bar, pattern, running_gateway
from tests.support.services import TEST_DATABASE_URL

pytestmark = pytest.mark.integration

REDIS_URL = Settings().redis_url


def event(n: int, symbol: str = "AAPL", **extra: object) -> bytes:
    body = {
        "offset": n,
        "epoch": "e",
        "kind": "pattern",
        "id": f"good-{n}",
        "symbol": symbol,
        "type": "doji",
        "confidence": 0.9,
        "timestamp": 1_800_000_000_000 + n,
        **extra,
    }
    return json.dumps(body, ensure_ascii=False).encode()


def test_any_redis_message_or_channel_name_is_relayed_only_when_valid(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, max_relay_bytes=64 * 1024) as gw:
        ch = gw.channels
        events, live = ch.events_for("AAPL").encode(), ch.live_for("").encode()
        poison: list[tuple[bytes, bytes]] = [
            (events, b"not json"),
            (events, b"[1,2]"),
            (events, b"null"),
            (events, b""),
            (events, b"\xff\xfe\x00"),
            (events, b'{"offset":1e400,"kind":"pattern"}'),
            (events, b'{"offset":9223372036854775808,"kind":"pattern","id":"big"}'),
            (events, b'{"offset":-1,"kind":"pattern","id":"neg"}'),
            (events, b'{"kind":"pattern","id":"ts","timestamp":99999999999999999999}'),
            (events, b'{"kind":"pattern","id":"utf","note":"\xff\xfe"}'),
            (events, b'{"kind":"pattern","id":"sur","epoch":"\xed\xa0\xbd"}'),
            (events, b'{"kind":"pattern","id":"inf","confidence":1e400}'),
            (events, b'{"kind":"pattern","id":"nan","confidence":NaN}'),
            (events, b'{"kind":"pattern","id":"conf","confidence":7}'),
            (events, b'{"kind":"candles","id":"k"}'),
            (events, b'{"kind":"pattern","id":"deep","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
            (events, b'{"kind":"pattern","id":"huge","x":"' + b"a" * 100_000 + b'"}'),
            (events, b'{"kind":"pattern","id":"trail"} {}'),
            (live + b"\xff\xfe", b'{"offset":1,"symbol":"X"}'),  # channel name not UTF-8
            (live + b'A"B', b'{"offset":1,"symbol":"X"}'),  # would break the frame's JSON
            (live + b"a b", b'{"offset":1}'),
            (live, b'{"offset":1}'),
            (live + b"AAPL\n", b'{"offset":1}'),
            (ch.indicators.encode(), b'{"offset":1,"kind":"indicator","symbol":"A B"}'),
            (gw.gateway.probe_channel.encode(), b"not a time"),
        ]

        async def scenario() -> None:
            everything = await Client.open(gw.url)
            await everything.request({"type": "subscribe", "symbols": ["*"], "kinds": ["pattern"]})
            aapl = await Client.open(gw.url)
            await aapl.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["pattern"]})
            r = redis.Redis.from_url(REDIS_URL)
            r.publish(events, event(1))
            for channel, data in poison:
                r.publish(channel, data)
                r.publish(events, event(len(aapl.data()) + 100))  # keeps the good ones flowing between the bad
            goods = [event(2, note='é 😀 \u2028 \\ " </script>'), event(3)]
            for data in goods:
                r.publish(events, data)
            expected = {"good-1", "good-2", "good-3"} | {f"good-{100 + i}" for i in range(len(poison))}
            for client in (everything, aapl):
                got = await client.until(lambda d: {m["id"] for m in d} >= {"good-1", "good-2", "good-3"})
                assert {m["id"] for m in got} <= expected | {f"good-{100 + i}" for i in range(len(poison))}
                assert all(m["id"].startswith("good-") for m in got), "a bad message was relayed"
                assert next(m for m in got if m["id"] == "good-2")["note"] == 'é 😀 \u2028 \\ " </script>'
            await everything.close()
            await aapl.close()
            r.close()

        asyncio.run(scenario())
        stats = gw.gateway.stats
        assert stats.tasks["redis-reader"].restarts == 0 and stats.tasks["redis-reader"].running
        reasons = set(stats.ignored)
        assert {
            "not a JSON object",
            "bad routing fields",
            "invalid UTF-8",
            "too large (GATEWAY_MAX_RELAY_BYTES)",
            "channel name not UTF-8",
            "invalid symbol in channel",
            "unknown event kind",
            "unreadable probe",
        } <= reasons
        health = httpx.get(f"{gw.http}/healthz", timeout=WAIT_S).json()
        assert health["status"] == "healthy" and health["counters"]["ignored"] >= len(poison) - 1


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    (b'{"type":"ping"}', "binary frame"),
    ("not json", "not JSON"),
    ("\x00", "not JSON"),
    ("[]", "Expected `object`, got `array`"),
    ("null", "Expected `object`, got `null`"),
    ('{"type":"subscribe","symbols":' + "[" * 3000 + "]" * 3000 + "}", "Expected `str`"),
    ('{"type":"subscribe","symbols":"AAPL"}', "Expected `array`, got `str`"),
    ('{"type":"subscribe","symbols":["AAPL"],"colour":"red"}', "unknown field `colour`"),
    ('{"type":"subscribe","symbols":[' + ",".join(['"A"'] * 1001) + "]}", "length <= 1000"),
    ('{"type":"subscribe","symbols":["é"]}', "invalid symbol 'é'"),
    ('{"type":"subscribe","symbols":["A\\u0000"]}', "invalid symbol 'A\\x00'"),
    ('{"type":"subscribe","symbols":["\\ud800"]}', "not JSON"),
    ('{"type":"ping","id":18446744073709551616}', "Expected `int` <= 9223372036854775807"),
    ('{"type":"ping","id":"' + "x" * 200 + '"}', "length <= 128"),
    ('{"type":"subscribe","min_confidence":"high"}', "Expected `float | null`, got `str`"),
    ('{"type":"subscribe","min_confidence":1e400}', "Number out of range"),
    ('{"type":"subscribe","positions":{"x":{"epoch":"e","offset":-5}}}', "Expected `int` >= 0"),
    (
        '{"type":"subscribe","symbols":["AAPL"],"positions":{"elsewhere.MSFT":{"epoch":"e","offset":1}}}',
        "not a channel of the symbols subscribed",
    ),
    ('{"type":"subscribe","symbols":["AAPL"],"kinds":["*"]}', "unknown kind(s) *"),
    ('{"type":"unsubscribe","kinds":"live"}', "Expected `array`, got `str`"),
    ('{"type":"launch"}', "launch"),
]


def test_bad_client_frames_get_precise_errors_and_the_connection_stays_up(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, max_errors=1000, rate_burst=1000, max_message_bytes=16384) as gw:

        async def scenario() -> None:
            client = await Client.open(gw.url)
            for raw, says in BAD_FRAMES:
                await client.ws.send(raw)
                reply = await client.control_reply()
                assert reply["type"] == "error" and reply["code"] == "bad_message", (raw[:60], reply)
                assert says in reply["message"], (raw[:60], reply["message"])
            assert (await client.request({"type": "ping", "id": "é😀"}))["id"] == "é😀"
            reply = await client.request({"type": "subscribe", "symbols": ["aapl", "BACpL"], "kinds": ["live"]})
            assert reply["type"] == "subscribed" and reply["symbols"] == ["AAPL", "BACpL"]  # mixed case kept
            gw.bars().publish_live([live_bar("BACpL", 1.0)])
            got = await client.until(lambda d: len(d) == 1)
            assert got[0]["symbol"] == "BACpL"
            await client.close()
            # a frame over GATEWAY_MAX_MESSAGE_BYTES closes the connection with 1009 (message too big)
            big = await Client.open(gw.url)
            await big.ws.send('{"type":"ping","id":"' + "x" * 20_000 + '"}')
            code, _ = await big.wait_closed()
            assert code == 1009

        asyncio.run(scenario())
        assert gw.gateway.stats.client_errors == len(BAD_FRAMES)
        assert gw.gateway.stats.internal_errors == 0


def test_rate_limit_refuses_a_flood_then_disconnects(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, rate_limit_per_s=1, rate_burst=5, max_errors=3) as gw:

        async def scenario() -> None:
            client = await Client.open(gw.url)
            for i in range(20):
                await client.send({"type": "ping", "id": i})
            code, reason = await client.wait_closed()
            pongs = [c for c in client.control if c["type"] == "pong"]
            limited = [c for c in client.control if c.get("code") == "rate_limited"]
            assert [p["id"] for p in pongs] == [0, 1, 2, 3, 4]  # the burst
            assert len(limited) == 3 and "GATEWAY_RATE_LIMIT_PER_S" in limited[0]["message"]
            assert code == protocol.CLOSE_MISBEHAVING and reason.startswith("3 invalid messages")

        asyncio.run(scenario())
        assert gw.gateway.stats.rate_limited == 3


def test_a_resume_that_would_exceed_the_queue_gets_a_reset(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, max_queue=10) as gw:

        async def scenario() -> None:
            channel = gw.channels.events_for("AAPL")
            client = await Client.open(gw.url)
            await client.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["pattern"]})
            gw.publish_events([pattern("AAPL", 0.9, 0)])
            first = (await client.until(lambda d: len(d) == 1))[0]
            await client.close()
            gw.publish_events([pattern("AAPL", 0.9, i) for i in range(1, 31)])  # 30 missed > GATEWAY_MAX_QUEUE
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
                "offset": first["offset"] + 30,
                "reason": "too many missed messages for your queue (GATEWAY_MAX_QUEUE=10)",
            }
            gw.publish_events([pattern("AAPL", 0.9, 99)])
            got = await client.until(lambda d: len(d) >= 1)
            assert [m["offset"] for m in got] == [first["offset"] + 31]  # nothing old replayed
            await client.close()

        asyncio.run(scenario())
        assert gw.gateway.stats.resets == 1 and gw.gateway.stats.resumes == 0


def test_symbols_per_message_and_per_connection_are_bounded(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, max_symbols=1500) as gw:

        async def scenario() -> None:
            client = await Client.open(gw.url)
            first = [f"S{i}" for i in range(1000)]  # 4 channels each: live, bar, events, price
            reply = await client.request({"type": "subscribe", "symbols": first})
            assert reply["type"] == "subscribed" and len(reply["symbols"]) == 1000 and len(reply["positions"]) == 4000
            reply = await client.request({"type": "subscribe", "symbols": [f"T{i}" for i in range(1000)]})
            assert reply["code"] == "bad_message" and "at most 1500 symbols per connection" in reply["message"]
            reply = await client.request({"type": "unsubscribe", "symbols": []})
            assert len(reply["symbols"]) == 1000  # the refused subscribe changed nothing
            await client.close()

        asyncio.run(scenario())


def test_connections_are_bounded(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, max_connections=2) as gw:

        async def scenario() -> None:
            a, b = await Client.open(gw.url), await Client.open(gw.url)
            with pytest.raises(InvalidStatus) as caught:
                await connect(gw.url, open_timeout=WAIT_S)
            assert caught.value.response.status_code == 503
            assert b"GATEWAY_MAX_CONNECTIONS" in caught.value.response.body
            await a.close()
            deadline = time.monotonic() + WAIT_S
            while gw.gateway.stats.connections > 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            c = await Client.open(gw.url)  # room again
            await b.close()
            await c.close()

        asyncio.run(scenario())


def test_internal_failures_reply_without_their_text(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL) as gw:

        async def broken(channels):
            raise RuntimeError("postgresql://admin:hunter2@db/secret exploded")

        gw.gateway.relay.positions = broken  # a fault injected into the gateway's own step

        async def scenario() -> None:
            client = await Client.open(gw.url)
            reply = await client.request({"type": "subscribe", "symbols": ["AAPL"]})
            assert reply["type"] == "error" and reply["code"] == "internal" and "ref " in reply["message"]
            assert "hunter2" not in reply["message"] and "exploded" not in reply["message"]
            assert (await client.request({"type": "ping"}))["type"] == "pong"
            await client.close()

        asyncio.run(scenario())
        assert gw.gateway.stats.internal_errors == 1


def test_channel_positions_for_recovery_are_bounded(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, max_tracked_channels=100) as gw:

        async def scenario() -> None:
            client = await Client.open(gw.url)
            await client.request({"type": "subscribe", "symbols": ["*"], "kinds": ["live"]})
            bars = gw.bars()
            for start in range(0, 300, 100):
                bars.publish_live([live_bar(f"Z{i}", 1.0) for i in range(start, start + 100)])
            await client.until(lambda d: len({m["symbol"] for m in d}) == 300)
            bars.close()
            await client.close()

        asyncio.run(scenario())
        assert len(gw.gateway.relay.last) == 100
        assert gw.gateway.stats.channels_forgotten == 200


# ---------------------------------------------------------------- REST parameters
@pytest.fixture(scope="module")
def rest_gateway(services):
    import psycopg

    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as conn:
        conn.execute("INSERT INTO symbols (symbol) VALUES ('AAPL') ON CONFLICT DO NOTHING")
    try:
        with running_gateway(TEST_DATABASE_URL, REDIS_URL) as gw:
            doc = httpx.get(f"{gw.http}/openapi.json", timeout=WAIT_S).json()
            with httpx.Client(base_url=gw.http, timeout=WAIT_S) as client:
                yield client, doc
    finally:
        with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as conn:  # only if no other test's bars use it
            conn.execute(
                "DELETE FROM symbols WHERE symbol = 'AAPL' AND NOT EXISTS (SELECT FROM ohlcv_1min WHERE symbol = 'AAPL')"
            )


NAMES = ["symbol", "since", "start", "end", "limit", "kind", "timeframe", "token", "x", "Symbol", "symbol[]", ""]
hostile_values = st.one_of(
    st.text(max_size=30),
    st.integers().map(str),
    st.sampled_from(
        [
            "AAPL",
            "aapl",
            "BACpL",
            "2026-11-02T14:30:00Z",
            "0000-01-01T00:00:00Z",
            "10000-01-01T00:00:00Z",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "1e400",
            "NaN",
            "-1",
            "0",
            "1001",
            str(2**64),
            "1m",
            "1d",
            "alert",
            "pattern",
            "é",
            "\x00",
            "%",
            "a" * 500,
        ]
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    st.sampled_from(["/api/symbols", "/api/ticks/recent", "/api/bars", "/api/events", "/healthz", "/metrics"]),
    st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]),
    st.lists(st.tuples(st.sampled_from(NAMES), hostile_values), max_size=6),
)
def test_any_rest_parameters_get_a_documented_answer(rest_gateway, path, method, params):
    client, doc = rest_gateway
    response = client.request(method, path, params=params)
    assert response.status_code < 500, response.text
    if method == "GET":
        documented = {int(code) for code in doc["paths"][path]["get"]["responses"]}
        assert response.status_code in documented, (params, response.status_code, response.text)
    else:
        assert response.status_code == 405 and "GET" in response.headers["allow"]
    if method not in ("HEAD", "OPTIONS") and 400 <= response.status_code < 500:
        assert response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "status", "says"),
    [
        ({"symbol": "AAPL", "since": "0000-01-01T00:00:00Z"}, 422, "year 0 is out of range"),
        ({"symbol": "AAPL", "since": "10000-01-01T00:00:00Z"}, 422, "RFC 3339"),
        ({"symbol": "AAPL", "since": "0001-01-01T00:00:00+23:59"}, 200, ""),
        ({"symbol": "AAPL", "since": "9999-12-31T23:59:59-23:59"}, 200, ""),
        ({"symbol": "AAPL", "limit": str(10**30)}, 422, "limit"),
        ({"symbol": "AAPL", "limit": "1e3"}, 422, "limit"),
        ({"symbol": "ÄAPL"}, 400, "invalid symbol"),
        ({"symbol": "AAPL\x00"}, 400, "invalid symbol"),
        ([("symbol", "AAPL"), ("symbol", "MSFT")], 400, "symbol given more than once"),
        ({"symbol": "AAPL", "limt": "5"}, 400, "unknown parameter(s) 'limt'"),
    ],
)
def test_extreme_rest_parameters(rest_gateway, params, status, says):
    client, _ = rest_gateway
    response = client.get("/api/ticks/recent", params=params)
    assert response.status_code == status, response.text
    assert says in json.dumps(response.json().get("detail", ""), ensure_ascii=False)


def test_undeclared_methods_get_405_with_allow(rest_gateway):
    client, _ = rest_gateway
    for method in ("HEAD", "POST", "PUT", "DELETE", "PATCH", "TRACE", "OPTIONS"):
        response = client.request(method, "/api/bars")
        assert response.status_code == 405 and response.headers["allow"] == "GET"
    head = client.head("/dashboard/")  # static files answer HEAD: headers only
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    # a request body is read (bodies.py: REST's PUT takes one), and a method the path does not serve is still a 405
    with_body = client.post("/api/bars", content=b"{}")
    assert with_body.status_code == 405 and with_body.headers["allow"] == "GET"
    assert client.get("/api/symbols").status_code == 200  # and serves the next request


def test_rest_does_not_leak_a_row_factory_between_requests(rest_gateway):
    """/api/bars set `dict_row` on a pooled connection, /api/symbols then failed with KeyError: 0."""
    client, _ = rest_gateway
    for _ in range(3):
        assert (
            client.get(
                "/api/bars", params={"symbol": "AAPL", "start": "2026-11-02T14:30:00Z", "end": "2026-11-02T15:30:00Z"}
            ).status_code
            == 200
        )
        assert client.get("/api/symbols").status_code == 200
        assert client.get("/api/ticks/recent", params={"symbol": "AAPL"}).status_code == 200


def test_websocket_path_survives_hostile_handshakes(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL) as gw:
        with httpx.Client(base_url=gw.http, timeout=WAIT_S) as client:
            assert client.get("/ws").status_code in (400, 426)  # not an upgrade
            two = client.get("/ws", headers=[("Origin", "http://a"), ("Origin", "http://b")])
            assert two.status_code == 400 and "more than one Origin" in two.text

        async def scenario() -> None:
            c = await Client.open(gw.url + "?token=")  # empty token in dev mode: the dev grant
            await c.close()

        asyncio.run(scenario())
        assert gw.gateway.stats.internal_errors == 0


def test_a_client_closing_mid_subscribe_does_not_disturb_others(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL) as gw:

        async def scenario() -> None:
            steady = await Client.open(gw.url)
            await steady.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": ["pattern"]})
            for _ in range(5):
                ws = await connect(gw.url, open_timeout=WAIT_S)
                await ws.recv()
                await ws.send(json.dumps({"type": "subscribe", "symbols": [f"S{i}" for i in range(1000)]}))
                ws.transport.abort()
            gw.publish_events([pattern("AAPL", 0.9, 1)])
            got = await steady.until(lambda d: len(d) == 1)
            assert got[0]["symbol"] == "AAPL"
            await steady.close()

        asyncio.run(scenario())
        deadline = time.monotonic() + WAIT_S
        while gw.gateway.stats.connections:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert gw.gateway.stats.internal_errors == 0 and not gw.gateway.router.by_symbol
