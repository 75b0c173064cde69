"""Server-side watchlists against real gateways, PostgreSQL, Redis and WebSocket clients.

Two gateway processes' worth (two `Gateway`s, one namespace, one database, auth on): REST CRUD
under a user's token, isolation between users, grants on REST and WebSocket, hostile bodies and
names, and a change made through one gateway's REST followed live by connections on both.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import httpx
import psycopg
import pytest
import redis

from connectors.gateway.auth import Policy
from connectors.gateway.bodies import MAX_REQUEST_BODY
from flows.settings import Settings
from schemas.watchlists import MAX_WATCHLIST_SYMBOLS
from tests.support.gateway import SECRET, WAIT_S, Client, live_bar, running_gateway
from tests.support.services import TEST_DATABASE_URL, free_port, private_redis

pytestmark = pytest.mark.integration

REDIS_URL = Settings().redis_url
KNOWN = ("AAPL", "MSFT", "NVDA", "IBM")


def token(user: str, symbols: tuple[str, ...] = ("*",), kinds: tuple[str, ...] = ("*",)) -> str:
    return Policy(SECRET, ()).issue(user, symbols, kinds, ttl_s=600, now=time.time())


def auth(user: str, symbols: tuple[str, ...] = ("*",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, symbols)}"}


@pytest.fixture(scope="module")
def gateways(services):
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as db:
        db.execute("INSERT INTO symbols (symbol) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (list(KNOWN),))
    namespace = f"test{uuid.uuid4().hex[:8]}"
    options = {"dev_mode": False, "jwt_secret": SECRET, "redis_namespace": namespace}
    with (
        running_gateway(TEST_DATABASE_URL, REDIS_URL, **options) as one,
        running_gateway(TEST_DATABASE_URL, REDIS_URL, **options) as two,
    ):
        yield one, two


@pytest.fixture
def users(gateways):
    """Fresh user names per test (the tables are shared by the module's tests)."""
    tag = uuid.uuid4().hex[:8]
    return f"alice-{tag}", f"bob-{tag}"


@pytest.fixture
def rest(gateways):
    with httpx.Client(base_url=gateways[0].http, timeout=WAIT_S) as client:
        yield client


def test_crud_and_universe(rest, users):
    alice, _ = users
    h = auth(alice)
    assert rest.get("/api/watchlists", headers=h).json()["watchlists"] == []
    created = rest.put("/api/watchlists/tech", headers=h, json={"symbols": ["aapl", "MSFT", "AAPL"]})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["symbols"] == ["AAPL", "MSFT"] and body["created"] and body["announced"] and body["withheld"] == 0
    replaced = rest.put("/api/watchlists/tech", headers=h, json={"symbols": ["NVDA"]})
    assert replaced.status_code == 200 and replaced.json()["revision"] > body["revision"]
    rest.put("/api/watchlists/banks-1", headers=h, json={"symbols": []}).raise_for_status()
    listing = rest.get("/api/watchlists", headers=h).json()
    assert [(w["name"], w["symbols"]) for w in listing["watchlists"]] == [("banks-1", []), ("tech", ["NVDA"])]
    assert rest.get("/api/watchlists/tech", headers=h).json()["symbols"] == ["NVDA"]
    deleted = rest.delete("/api/watchlists/tech", headers=h)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert deleted.json()["revision"] > replaced.json()["revision"]
    assert rest.get("/api/watchlists/tech", headers=h).status_code == 404
    assert rest.delete("/api/watchlists/tech", headers=h).status_code == 404

    assert rest.get("/api/users/universe", headers=h).json() | {"max_symbols": 0} == {
        "user": alice, "symbols": [], "revision": 0, "withheld": 0, "max_symbols": 0,
    }  # fmt: skip
    put = rest.put("/api/users/universe", headers=h, json={"symbols": ["IBM", "AAPL"]})
    assert put.status_code == 200 and put.json()["symbols"] == ["IBM", "AAPL"]
    assert rest.get("/api/users/universe", headers=h).json()["symbols"] == ["IBM", "AAPL"]


def test_users_are_isolated_and_grants_hold_on_every_path(rest, users):
    alice, bob = users
    rest.put("/api/watchlists/mine", headers=auth(alice), json={"symbols": ["AAPL", "MSFT"]}).raise_for_status()
    rest.put("/api/users/universe", headers=auth(alice), json={"symbols": ["AAPL", "MSFT"]}).raise_for_status()
    # bob sees none of it and cannot change it (the same name is his own, separate list)
    assert rest.get("/api/watchlists", headers=auth(bob)).json()["watchlists"] == []
    assert rest.get("/api/watchlists/mine", headers=auth(bob)).status_code == 404
    assert rest.delete("/api/watchlists/mine", headers=auth(bob)).status_code == 404
    assert rest.get("/api/users/universe", headers=auth(bob)).json()["symbols"] == []
    rest.put("/api/watchlists/mine", headers=auth(bob), json={"symbols": ["IBM"]}).raise_for_status()
    assert rest.get("/api/watchlists/mine", headers=auth(alice)).json()["symbols"] == ["AAPL", "MSFT"]
    # a token granting only AAPL: cannot store MSFT, reads only the AAPL part of what is stored
    narrow = auth(alice, ("AAPL",))
    refused = rest.put("/api/watchlists/mine", headers=narrow, json={"symbols": ["AAPL", "MSFT"]})
    assert refused.status_code == 403 and "MSFT" in refused.json()["detail"]
    assert rest.put("/api/users/universe", headers=narrow, json={"symbols": ["MSFT"]}).status_code == 403
    assert rest.get("/api/watchlists/mine", headers=narrow).json() | {"revision": 0} == {
        "name": "mine", "symbols": ["AAPL"], "revision": 0, "withheld": 1,
    }  # fmt: skip
    assert rest.get("/api/users/universe", headers=narrow).json()["withheld"] == 1
    # no token, an invalid one
    assert rest.get("/api/watchlists").status_code == 401
    assert rest.put("/api/watchlists/x", json={"symbols": []}, headers={"Authorization": "Bearer nope"}).status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"symbols": None}, 422, "list"),
        ({"symbols": ["AAPL", None]}, 422, "string"),
        ({}, 422, "symbols"),
        ({"symbols": [], "owner": "bob"}, 422, "owner"),
        ({"symbols": ["A B"]}, 400, "invalid symbol"),
        ({"symbols": ["ZZZZ"]}, 400, "unknown symbol(s) ZZZZ"),
        ({"symbols": ["AAPL"] * (MAX_WATCHLIST_SYMBOLS + 1)}, 422, str(MAX_WATCHLIST_SYMBOLS)),
        ("[1, 2", 422, "JSON"),
    ],
    ids=["null-list", "null-symbol", "missing", "extra-field", "malformed", "unknown", "too-many", "not-json"],
)
def test_hostile_bodies(rest, users, body, status, says):
    h = auth(users[0])
    sent = (
        rest.put("/api/watchlists/x", headers={**h, "Content-Type": "application/json"}, content=body)
        if isinstance(body, str)
        else rest.put("/api/watchlists/x", headers=h, json=body)
    )
    assert sent.status_code == status, sent.text
    assert says in sent.text
    assert rest.get("/api/watchlists/x", headers=h).status_code == 404  # nothing stored


@pytest.mark.parametrize("name", ["a%20b", "-x", "x" * 65, "a:b", "%C3%A9t%C3%A9"])
def test_bad_names(rest, users, name):
    h = auth(users[0])
    sent = rest.put(f"/api/watchlists/{name}", headers=h, json={"symbols": []})
    assert sent.status_code in (400, 422), sent.text
    assert rest.get(f"/api/watchlists/{name}", headers=h).status_code in (400, 422)


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(request)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def test_body_limits_on_the_wire(gateways, users):
    gw = gateways[0]
    h = f"Authorization: Bearer {token(users[0])}\r\n"
    huge = raw_http(
        gw.port, f"PUT /api/watchlists/x HTTP/1.1\r\nHost: x\r\n{h}Content-Length: {MAX_REQUEST_BODY + 1}\r\n\r\n".encode()
    )
    assert huge.startswith(b"HTTP/1.1 413") and b"larger than" in huge  # answered before the body is sent
    chunked = raw_http(
        gw.port, f"PUT /api/watchlists/x HTTP/1.1\r\nHost: x\r\n{h}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode()
    )
    assert chunked.startswith(b"HTTP/1.1 411")
    body = b'{"symbols": ["IBM"]}'
    expect = raw_http(
        gw.port,
        f"PUT /api/watchlists/x HTTP/1.1\r\nHost: x\r\n{h}Content-Type: application/json\r\n"
        f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body,
    )
    assert expect.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201"), expect[:200]
    assert httpx.get(f"{gw.http}/healthz", timeout=WAIT_S).json()["counters"]["internal_errors"] == 0


def test_lists_per_user_are_bounded(rest, users, gateways):
    alice = users[0]
    h = auth(alice)
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as db:  # 49 lists, quicker than 49 requests
        db.execute(
            "INSERT INTO watchlists (user_id, name, symbols, revision)"
            " SELECT %s, 'l' || i, '{}', nextval('watchlist_revisions') FROM generate_series(1, 49) i",
            (alice,),
        )
    assert rest.put("/api/watchlists/fifty", headers=h, json={"symbols": []}).status_code == 201
    full = rest.put("/api/watchlists/fifty-one", headers=h, json={"symbols": []})
    assert full.status_code == 409 and "at most 50" in full.json()["detail"]
    assert rest.put("/api/watchlists/fifty", headers=h, json={"symbols": ["IBM"]}).status_code == 200  # replacing is fine


async def _open(gw, user: str, symbols: tuple[str, ...] = ("*",)) -> Client:
    return await Client.open(f"{gw.url}?token={token(user, symbols)}")


async def _change(rest_url: str, user: str, name: str, symbols: list[str] | None) -> None:
    async with httpx.AsyncClient(base_url=rest_url, timeout=WAIT_S) as client:
        if symbols is None:
            (await client.delete(f"/api/watchlists/{name}", headers=auth(user))).raise_for_status()
        else:
            (await client.put(f"/api/watchlists/{name}", headers=auth(user), json={"symbols": symbols})).raise_for_status()


def test_a_second_device_follows_a_change_live_on_every_gateway(gateways, users):
    one, two = gateways
    alice, bob = users

    async def scenario() -> None:
        await _change(one.http, alice, "tech", ["AAPL"])
        await _change(one.http, bob, "tech", ["IBM"])
        phone = await _open(one, alice)
        laptop = await _open(two, alice)  # another gateway process
        other = await _open(two, bob)
        for client, who in ((phone, "alice"), (laptop, "alice"), (other, "bob")):
            reply = await client.request({"type": "subscribe", "watchlist": "tech", "kinds": ["live"]})
            assert reply["type"] == "subscribed", reply
            assert reply["watchlist"]["symbols"] == (["AAPL"] if who == "alice" else ["IBM"])
        assert sorted(reply["symbols"]) == ["IBM"]

        await _change(two.http, alice, "tech", ["MSFT", "NVDA"])  # through the other gateway's REST
        for client in (phone, laptop):
            change = await client.control_reply()
            assert change["type"] == "watchlist" and change["name"] == "tech", change
            assert change["symbols"] == ["MSFT", "NVDA"] and change["subscribed"] == ["MSFT", "NVDA"]
            assert set(change["positions"]) == {f"{one.namespace}.market.bars.live.{s}" for s in ("MSFT", "NVDA")}
        one.bars().publish_live([live_bar("AAPL", 1.0), live_bar("MSFT", 2.0), live_bar("IBM", 3.0)])
        for client in (phone, laptop):
            got = await client.until(lambda d: any(m["symbol"] == "MSFT" for m in d))
            assert {m["symbol"] for m in got} == {"MSFT"}  # AAPL left the list; IBM is bob's
        got = await other.until(lambda d: any(m["symbol"] == "IBM" for m in d))
        assert {m["symbol"] for m in got} == {"IBM"} and other.control == []  # bob heard nothing of alice's change

        await _change(one.http, alice, "tech", None)
        for client in (phone, laptop):
            gone = await client.control_reply()
            assert gone["deleted"] is True and gone["subscribed"] == []
        for client in (phone, laptop, other):
            await client.close()

    asyncio.run(scenario())


def test_websocket_grants_and_bad_watchlists(gateways, users, rest):
    gw = gateways[0]
    alice, _ = users
    rest.put("/api/watchlists/mixed", headers=auth(alice), json={"symbols": ["AAPL", "MSFT"]}).raise_for_status()

    async def scenario() -> None:
        narrow = await _open(gw, alice, ("AAPL",))
        reply = await narrow.request({"type": "subscribe", "watchlist": "mixed"})
        assert reply["symbols"] == ["AAPL"] and reply["watchlist"]["withheld"] == 1, reply
        await _change(gw.http, alice, "mixed", ["MSFT", "IBM", "AAPL"])
        change = await narrow.control_reply()
        assert change["subscribed"] == ["AAPL"] and change["symbols"] == ["AAPL"] and change["withheld"] == 2
        missing = await narrow.request({"type": "subscribe", "watchlist": "nope"})
        assert missing["type"] == "error" and missing["code"] == "not_found", missing
        bad = await narrow.request({"type": "subscribe", "watchlist": "a/b"})
        assert bad["type"] == "error" and bad["code"] == "bad_message" and "watchlist" in bad["message"]
        dropped = await narrow.request({"type": "unsubscribe", "watchlist": "mixed"})
        assert dropped["symbols"] == [] and dropped["watchlists"] == []
        await narrow.close()

    asyncio.run(scenario())


def test_hostile_notices_on_redis_are_dropped(gateways, users, rest):
    gw = gateways[0]
    channel = f"{gw.namespace}.dashboard.watchlist"
    client = redis.Redis.from_url(REDIS_URL)
    before = gw.gateway.stats.ignored["bad watchlist notice"]
    for junk in (b"\xff\xfe", b"{}", b'{"user":"a","name":"a b","symbols":[],"revision":1}', b"[" * 100_000):
        client.publish(channel, junk)
    client.close()
    deadline = time.monotonic() + WAIT_S
    while gw.gateway.stats.ignored["bad watchlist notice"] < before + 4:
        assert time.monotonic() < deadline, dict(gw.gateway.stats.ignored)
        time.sleep(0.05)
    assert rest.get("/healthz").json()["counters"]["internal_errors"] == 0


def test_a_change_missed_while_redis_was_down_is_caught_up(services, tmp_path):
    """Stored while Redis is down (`announced: false`, no notice anywhere): once the gateway's
    subscription is back it re-reads the lists its connections follow, and they move."""
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as db:
        db.execute("INSERT INTO symbols (symbol) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (list(KNOWN),))
    port = free_port()
    server = private_redis(port, str(tmp_path))
    name = f"outage-{uuid.uuid4().hex[:8]}"  # development mode: every test is user `dev`
    try:
        with running_gateway(TEST_DATABASE_URL, f"redis://127.0.0.1:{port}/0", probe_interval_s=0.2) as gw:

            async def scenario() -> None:
                nonlocal server
                async with httpx.AsyncClient(base_url=gw.http, timeout=WAIT_S) as rest:
                    (await rest.put(f"/api/watchlists/{name}", json={"symbols": ["AAPL"]})).raise_for_status()
                    client = await Client.open(gw.url)
                    reply = await client.request({"type": "subscribe", "watchlist": name, "kinds": ["live"]})
                    assert reply["symbols"] == ["AAPL"], reply
                    server.terminate()
                    server.wait(10)
                    stored = await rest.put(f"/api/watchlists/{name}", json={"symbols": ["IBM", "MSFT"]})
                    assert stored.status_code == 200 and stored.json()["announced"] is False, stored.text
                    server = private_redis(port, str(tmp_path))
                    change = await client.control_reply()
                    assert change["type"] == "watchlist" and change["subscribed"] == ["IBM", "MSFT"], change
                    await client.close()

            asyncio.run(scenario())
            assert gw.gateway.stats.watchlist_unannounced == 1 and gw.gateway.stats.internal_errors == 0
    finally:
        server.terminate()
        server.wait(10)


def test_odd_but_harmless_requests(rest, users, gateways):
    h = auth(users[0])
    plain = rest.put("/api/watchlists/x", headers={**h, "Content-Type": "text/plain"}, content=b'{"symbols": []}')
    assert plain.status_code == 422, plain.text  # a body must be JSON
    assert rest.request("GET", "/api/watchlists", headers=h, content=b"ignored").status_code == 200  # a GET's body is unused
    assert rest.put("/api/watchlists/x", headers=h, params={"owner": "bob"}, json={"symbols": []}).status_code == 400
    assert rest.post("/api/watchlists/x", headers=h, json={"symbols": []}).headers["allow"] == "DELETE, GET, PUT"
    assert httpx.get(f"{gateways[0].http}/healthz", timeout=WAIT_S).json()["counters"]["internal_errors"] == 0
