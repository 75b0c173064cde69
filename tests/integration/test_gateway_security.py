"""Gateway security against a real gateway, PostgreSQL, Redis and WebSocket clients.

The grant matrix: a token for every combination of symbols (one symbol, another, `*`) and kinds
(each kind alone, `*`, none) against every REST endpoint and every message kind, for subscribing
and for delivery. Then the token rules (explicit grants, aud/iss, leeway, lifetime), development
mode (explicit, loopback, visible, no 500 on a JWT) and secrets that must never be printed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from connectors.gateway.auth import Policy
from connectors.gateway.protocol import KINDS
from connectors.redis.publish import Publisher
from flows.settings import Settings
from tests.support.gateway import SECRET, WAIT_S, Client, live_bar, running_gateway
from tests.support.services import TEST_DATABASE_URL

pytestmark = pytest.mark.integration

REDIS_URL = Settings().redis_url
T0 = datetime(2026, 11, 2, 14, 30, tzinfo=UTC)  # fixed: /api/symbols is relative to the newest bar
EVENT_KINDS = ("highlow", "trend", "surge", "pattern", "alert")
SYMBOL_GRANTS = (("AAPL",), ("MSFT",), ("*",))
KIND_GRANTS = (*((k,) for k in KINDS), ("*",), ())


def granted_kinds(kinds: tuple[str, ...]) -> set[str]:
    return set(KINDS) if "*" in kinds else set(kinds)


def allows(symbols: tuple[str, ...], symbol: str) -> bool:
    return "*" in symbols or symbol in symbols


@pytest.fixture(scope="module")
def secured(services):
    import psycopg

    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as db:
        db.execute("TRUNCATE ohlcv_1min, symbols, events, indicator_values, alerts")
        db.execute("INSERT INTO symbols (symbol) VALUES ('AAPL'), ('MSFT')")
        db.execute(
            "INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades, revision)"
            " VALUES ('AAPL', %s, 1, 2, 0.5, 1.5, 10, 1.2, 3, 0), ('MSFT', %s, 1, 2, 0.5, 1.5, 5, 1.2, 3, 0)",
            (T0, T0 - timedelta(minutes=1)),
        )
        for i, kind in enumerate(k for k in EVENT_KINDS if k != "alert"):
            db.execute(
                "INSERT INTO events (symbol, timestamp, id, kind, type, timeframe, direction, confidence, price,"
                " revision, params, detail) VALUES ('AAPL', %s, %s, %s, 't', '1m', 'up', 0.9, 1.0, 0, '{}', '{}')",
                (T0 + timedelta(seconds=i), f"e-{kind}", kind),
            )
        db.execute(
            "INSERT INTO alerts (symbol, timestamp, id, rule, severity, timeframe, direction, confidence, indicator,"
            " value, threshold, message, revision, params) VALUES ('AAPL', %s, 'a1', 'rsi_overbought', 'warning',"
            " '1m', 'down', 0.9, 'rsi', 72, 70, 'RSI 72', 0, '{}')",
            (T0,),
        )
    try:
        with running_gateway(TEST_DATABASE_URL, REDIS_URL, dev_mode=False, jwt_secret=SECRET, batch_interval_ms=20) as gw:
            yield gw
    finally:  # leave no rows for tests that do not truncate (the browser test reads recent bars)
        with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as db:
            db.execute("TRUNCATE ohlcv_1min, symbols, events, indicator_values, alerts")


def token(symbols: tuple[str, ...], kinds: tuple[str, ...], user: str = "u") -> str:
    return Policy(SECRET, ()).issue(user, symbols, kinds, ttl_s=600, now=time.time())


GRANTS = list(itertools.product(SYMBOL_GRANTS, KIND_GRANTS))


@pytest.mark.parametrize(("symbols", "kinds"), GRANTS, ids=lambda g: ",".join(g) or "none")
def test_rest_grant_matrix(secured, symbols, kinds):
    gw = secured
    granted = granted_kinds(kinds)
    headers = {"Authorization": f"Bearer {token(symbols, kinds)}"}
    with httpx.Client(base_url=gw.http, timeout=WAIT_S, headers=headers) as client:
        listing = client.get("/api/symbols")
        if granted & {"bar", "live"}:
            assert listing.status_code == 200
            assert listing.json()["symbols"] == [s for s in ("AAPL", "MSFT") if allows(symbols, s)]
        else:
            assert listing.status_code == 403 and "kind bar or live" in listing.json()["detail"]

        for path, params in (
            ("/api/ticks/recent", {"symbol": "AAPL"}),
            (
                "/api/bars",
                {"symbol": "AAPL", "start": (T0 - timedelta(hours=1)).isoformat(), "end": (T0 + timedelta(hours=1)).isoformat()},
            ),
        ):
            response = client.get(path, params=params)
            if allows(symbols, "AAPL") and "bar" in granted:
                assert response.status_code == 200 and response.json()["count"] == 1
            else:
                assert response.status_code == 403, (path, response.text)
                detail = response.json()["detail"]
                assert ("symbol AAPL is not allowed" in detail) if not allows(symbols, "AAPL") else ("needs kind bar" in detail)

        since = (T0 - timedelta(hours=1)).isoformat()
        every = client.get("/api/events", params={"symbol": "AAPL", "since": since})
        wanted = granted & set(EVENT_KINDS)
        if allows(symbols, "AAPL") and wanted:
            assert every.status_code == 200
            assert {e["kind"] for e in every.json()["events"]} == wanted  # exactly the granted kinds
        else:
            assert every.status_code == 403
        for kind in EVENT_KINDS:
            one = client.get("/api/events", params={"symbol": "AAPL", "since": since, "kind": kind})
            if allows(symbols, "AAPL") and kind in granted:
                assert one.status_code == 200 and {e["kind"] for e in one.json()["events"]} == {kind}
            else:
                assert one.status_code == 403, (kind, one.text)


def publish_every_kind(gw, symbols: tuple[str, ...]) -> int:
    """One message of every kind for each symbol, as the flows publish them; how many."""
    bars = gw.bars()
    bars.publish_live([live_bar(s, 1.0) for s in symbols])
    bars.publish_final([live_bar(s, 2.0, status="final") for s in symbols])
    bars.close()
    publisher = Publisher(gw.redis_url)
    messages = []
    for s in symbols:
        messages.append((gw.channels.indicators, json.dumps({"kind": "indicator", "symbol": s, "timestamp": 1}).encode()))
        messages.append((gw.channels.prices_for(s), json.dumps({"symbol": s, "price": 1.0, "timestamp": 1}).encode()))
        for kind in EVENT_KINDS:
            messages.append(
                (
                    gw.channels.events_for(s),
                    json.dumps({"kind": kind, "id": f"{kind}-{s}", "symbol": s, "confidence": 1.0, "timestamp": 1}).encode(),
                )
            )
    publisher.publish(messages)
    publisher.close()
    return len(symbols) * len(KINDS)


def kind_of(message: dict) -> str:
    if "kind" in message:
        return message["kind"]
    if "price" in message:
        return "price"
    return "live" if message["status"] == "live" else "bar"


def test_websocket_grant_matrix(secured):
    gw = secured

    async def scenario() -> None:
        observer = await Client.open(f"{gw.url}?token={token(('*',), ('*',), 'observer')}")
        await observer.request({"type": "subscribe", "symbols": ["*"]})
        clients = {}
        for symbols, kinds in GRANTS:
            granted = granted_kinds(kinds)
            client = await Client.open(f"{gw.url}?token={token(symbols, kinds)}")
            welcome_kinds = granted
            # subscribing: every kind alone, then `*`, then everything granted
            for kind in KINDS:
                reply = await client.request({"type": "subscribe", "symbols": ["AAPL"], "kinds": [kind]})
                if allows(symbols, "AAPL") and kind in granted:
                    assert reply["type"] == "subscribed" and reply["kinds"] == [kind]
                else:
                    assert reply["type"] == "error" and reply["code"] == "forbidden", (symbols, kinds, kind, reply)
                await client.request({"type": "unsubscribe", "symbols": ["AAPL"]})
            star = await client.request({"type": "subscribe", "symbols": ["*"], "kinds": sorted(granted)})
            assert (star["type"] == "subscribed") == ("*" in symbols), star
            if "*" in symbols:
                await client.request({"type": "unsubscribe", "symbols": ["*"]})
            mine = [s for s in ("AAPL", "MSFT") if allows(symbols, s)]
            reply = await client.request({"type": "subscribe", "symbols": mine, "kinds": sorted(welcome_kinds)})
            assert reply["type"] == "subscribed" and reply["kinds"] == sorted(welcome_kinds)
            # a position for a channel of a symbol not granted is refused with the rest of the message
            other = "MSFT" if "AAPL" in mine and "MSFT" not in mine else "AAPL"
            if other not in mine:
                sneaky = await client.request(
                    {
                        "type": "subscribe",
                        "symbols": [other],
                        "positions": {gw.channels.live_for(other): {"epoch": "e", "offset": 0}},
                    }
                )
                assert sneaky["code"] == "forbidden"
            clients[(symbols, kinds)] = client
        total = publish_every_kind(gw, ("AAPL", "MSFT"))
        await observer.until(lambda d: len(d) == total)
        await asyncio.sleep(0.3)  # the restricted clients got their frames in the same flushes
        for (symbols, kinds), client in clients.items():
            while await client._receive_one(0.2):  # read whatever is there
                pass
            got = {(m["symbol"], kind_of(m)) for m in client.data()}
            expected = {(s, k) for s in ("AAPL", "MSFT") if allows(symbols, s) for k in granted_kinds(kinds)}
            assert got == expected, (symbols, kinds)
            await client.close()
        await observer.close()

    asyncio.run(scenario())


def signed(claims: dict, secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def test_token_rules(services):
    now = int(time.time())
    base = {
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "symbols": ["AAPL"],
        "kinds": ["live"],
        "aud": "tickstock",
        "iss": "ops",
    }
    cases = [
        ({k: v for k, v in base.items() if k != "symbols"}, "no `symbols` claim"),
        ({k: v for k, v in base.items() if k != "kinds"}, "no `kinds` claim"),
        ({**base, "symbols": "AAPL"}, "`symbols` must be a list of strings"),
        ({**base, "symbols": ["A B"]}, "invalid symbol 'A B'"),
        ({**base, "kinds": ["candles"]}, "unknown kind(s) candles"),
        ({k: v for k, v in base.items() if k != "iat"}, 'missing the "iat" claim'),
        ({k: v for k, v in base.items() if k != "aud"}, 'missing the "aud" claim'),
        ({**base, "aud": "other"}, "Audience doesn't match"),
        ({**base, "iss": "mallory"}, "Invalid issuer"),
        ({**base, "exp": now - 60}, "token expired"),  # beyond the 30 s leeway
        ({**base, "iat": now + 120, "exp": now + 300}, "issued in the future"),
        ({**base, "nbf": now + 120}, "not valid yet"),
        ({**base, "iat": now - 10, "exp": now + 4000}, "lifetime 4010 s exceeds GATEWAY_MAX_TOKEN_LIFETIME_S (3600 s)"),
        ({**base, "exp": 1e400}, "must be a number"),
        ({**base, "sub": "x" * 300}, "`sub` must be"),
    ]
    with running_gateway(
        TEST_DATABASE_URL,
        REDIS_URL,
        dev_mode=False,
        jwt_secret=SECRET,
        jwt_audience="tickstock",
        jwt_issuer="ops",
        jwt_leeway_s=30,
        max_token_lifetime_s=3600,
    ) as gw:

        async def handshake(tok: str) -> tuple[int, str]:
            try:
                ws = await connect(f"{gw.url}?token={tok}", open_timeout=WAIT_S)
            except InvalidStatus as exc:
                return exc.response.status_code, exc.response.body.decode()
            await ws.close()
            return 101, ""

        async def scenario() -> None:
            for claims, says in cases:
                try:
                    tok = signed(claims)
                except (OverflowError, ValueError):
                    tok = signed({**claims, "exp": "inf"})
                status, body = await handshake(tok)
                assert status == 401 and says in body, (claims, status, body)
                rest = httpx.get(f"{gw.http}/api/symbols", params={"token": tok}, timeout=WAIT_S)
                assert rest.status_code == 401 and says in rest.json()["detail"] and rest.headers["www-authenticate"] == "Bearer"
            # the leeway: just expired (10 s ago) still admitted; the issuer's command writes aud/iss
            assert (await handshake(signed({**base, "iat": now - 100, "exp": now - 10})))[0] == 101
            issued = gw.gateway.policy.issue("bob", ["AAPL"], ["live"], ttl_s=60, now=time.time())
            assert jwt.decode(issued, options={"verify_signature": False})["aud"] == "tickstock"
            assert (await handshake(issued))[0] == 101

        asyncio.run(scenario())
        assert gw.gateway.stats.internal_errors == 0


def gateway_command(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "connectors.gateway", *args], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def test_token_command_refuses_what_the_gateway_would(monkeypatch, capsys):
    from connectors.gateway.__main__ import main

    monkeypatch.setenv("GATEWAY_JWT_SECRET", SECRET)
    monkeypatch.setenv("GATEWAY_MAX_TOKEN_LIFETIME_S", "600")
    monkeypatch.setenv("GATEWAY_TOKEN_TTL_S", "300")
    for argv, says in (
        (["bob", "--ttl", "3600"], "exceeds GATEWAY_MAX_TOKEN_LIFETIME_S (600 s)"),
        (["bob", "--ttl", "nan"], "positive number"),
        (["bob", "--ttl", "-5"], "positive number"),
        (["bob", "--symbols", "A B"], "invalid symbol"),
        (["bob", "--kinds", "candles"], "unknown kind"),
        (["", "--ttl", "60"], "the user must be"),
        (["bob", "--symbols", ","], "at least one"),
        (["bob", "--ttl", "soon"], "invalid float value"),
    ):
        assert main(["token", *argv]) == 2, argv
        assert says in capsys.readouterr().err, argv
    assert main(["token", "bob", "--ttl", "600"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 600 and claims["symbols"] == ["*"] and claims["kinds"] == ["*"]


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"GATEWAY_DEV_MODE": "1"}, "GATEWAY_DEV_MODE must be `true` or `false`"),
        ({"GATEWAY_DEV_MODE": "yes"}, "GATEWAY_DEV_MODE must be `true` or `false`"),
        ({"GATEWAY_DEV_MODE": "true", "GATEWAY_HOST": "0.0.0.0"}, "needs a loopback GATEWAY_HOST"),
        ({"GATEWAY_DEV_MODE": "true", "GATEWAY_HOST": "::"}, "needs a loopback GATEWAY_HOST"),
        ({"GATEWAY_DEV_MODE": "true", "GATEWAY_DEV_MODE_ALLOW_REMOTE": "1"}, "GATEWAY_DEV_MODE_ALLOW_REMOTE must be `true`"),
        ({"GATEWAY_PORT": "70000", "GATEWAY_JWT_SECRET": SECRET}, "GATEWAY_PORT: Input should be less than or equal to 65535"),
        ({"GATEWAY_BATCH_INTERVAL_MS": "nan", "GATEWAY_JWT_SECRET": SECRET}, "GATEWAY_BATCH_INTERVAL_MS"),
        ({"GATEWAY_SLOW_TIMEOUT_S": "inf", "GATEWAY_JWT_SECRET": SECRET}, "GATEWAY_SLOW_TIMEOUT_S"),
        ({"GATEWAY_MAX_QUEUE": "99999999999999999999", "GATEWAY_JWT_SECRET": SECRET}, "GATEWAY_MAX_QUEUE"),
        ({"GATEWAY_ALLOWED_ORIGINS": "*", "GATEWAY_JWT_SECRET": SECRET}, "GATEWAY_ALLOWED_ORIGINS: not an origin"),
        ({"REDIS_NAMESPACE": "a*b", "GATEWAY_JWT_SECRET": SECRET}, "GATEWAY_REDIS_NAMESPACE"),
        ({"GATEWAY_JWT_SECRET": "short"}, "at least 32 bytes"),
        ({}, "GATEWAY_JWT_SECRET must be set"),
        ({"GATEWAY_TOKEN_TTL_S": "100000", "GATEWAY_JWT_SECRET": SECRET}, "must not exceed GATEWAY_MAX_TOKEN_LIFETIME_S"),
        (
            {"GATEWAY_DB_POOL_MIN": "9", "GATEWAY_DB_POOL_MAX": "2", "GATEWAY_JWT_SECRET": SECRET},
            "must not exceed GATEWAY_DB_POOL_MAX",
        ),
    ],
)
def test_bad_settings_exit_2_with_the_variable_never_a_traceback(env, says):
    result = gateway_command(**env)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert says in result.stderr and "Traceback" not in result.stderr


def test_dev_mode_remote_needs_the_second_setting():
    from connectors.gateway.settings import GatewaySettings

    s = GatewaySettings(dev_mode="true", host="0.0.0.0", dev_mode_allow_remote="true")
    assert s.dev_mode and s.dev_mode_allow_remote


def test_secrets_are_never_printed(services):
    redis_down = gateway_command(GATEWAY_DEV_MODE="true", REDIS_URL="redis://:hunter2-redis@127.0.0.1:1/0", GATEWAY_PORT="0")
    assert redis_down.returncode == 1 and "redis://:***@127.0.0.1:1/0" in redis_down.stderr
    db_down = gateway_command(
        GATEWAY_DEV_MODE="true",
        REDIS_URL=REDIS_URL,
        GATEWAY_PORT="0",
        DATABASE_URL="postgresql://postgres:hunter2-db@127.0.0.1:1/x",
    )
    assert db_down.returncode == 1 and "postgresql://postgres:***@127.0.0.1:1/x" in db_down.stderr
    bad = gateway_command(GATEWAY_JWT_SECRET=SECRET, REDIS_URL="http://:hunter2-redis@h/0")
    assert bad.returncode == 2 and "GATEWAY_REDIS_URL" in bad.stderr
    for result in (redis_down, db_down, bad):
        assert "hunter2" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_dev_mode_is_visible_and_a_jwt_in_it_is_a_401_not_a_500(services):
    with running_gateway(TEST_DATABASE_URL, REDIS_URL) as gw:  # dev mode, no secret
        health = httpx.get(f"{gw.http}/healthz", timeout=WAIT_S).json()
        assert health["dev_mode"] is True
        assert "tickstock_gateway_dev_mode 1.0" in httpx.get(f"{gw.http}/metrics", timeout=WAIT_S).text
        tok = token(("AAPL",), ("live",))
        rest = httpx.get(f"{gw.http}/api/symbols", headers={"Authorization": f"Bearer {tok}"}, timeout=WAIT_S)
        assert rest.status_code == 401 and "development mode without GATEWAY_JWT_SECRET" in rest.json()["detail"]

        async def scenario() -> None:
            ws = await connect(gw.url, open_timeout=WAIT_S)
            welcome = json.loads(await ws.recv())
            assert welcome["dev_mode"] is True and welcome["user"] == "dev"
            await ws.close()
            with pytest.raises(InvalidStatus) as caught:
                await connect(f"{gw.url}?token={tok}", open_timeout=WAIT_S)
            assert caught.value.response.status_code == 401

        asyncio.run(scenario())
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, jwt_secret=SECRET) as gw:  # dev mode with a secret: grants apply
        tok = token(("AAPL",), ("live",))
        assert (
            httpx.get(f"{gw.http}/api/ticks/recent", params={"symbol": "AAPL", "token": tok}, timeout=WAIT_S).status_code == 403
        )  # no `bar` kind
        assert httpx.get(f"{gw.http}/healthz", timeout=WAIT_S).json()["dev_mode"] is True
    with running_gateway(TEST_DATABASE_URL, REDIS_URL, dev_mode=False, jwt_secret=SECRET) as gw:
        assert httpx.get(f"{gw.http}/healthz", timeout=WAIT_S).json()["dev_mode"] is False


def test_duplicate_auth_headers_and_origins_are_refused(secured):
    gw = secured
    tok = token(("*",), ("*",))
    with httpx.Client(base_url=gw.http, timeout=WAIT_S) as client:
        two = client.get("/api/symbols", headers=[("Authorization", f"Bearer {tok}"), ("Authorization", "Bearer x")])
        assert two.status_code == 400 and "more than one Authorization" in two.json()["detail"]
        assert client.get("/api/symbols", params=[("token", tok), ("token", tok)]).status_code == 400
        evil = client.get("/api/symbols", params={"token": tok}, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and "origin" in evil.json()["detail"]
