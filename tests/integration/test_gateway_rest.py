"""REST on the gateway against the real test database: shapes, ordering, and input validation."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from connectors.gateway.auth import Policy
from flows.settings import Settings
from tests.support.gateway import SECRET, WAIT_S, running_gateway
from tests.support.services import TEST_DATABASE_URL

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 2, 14, 30, tzinfo=UTC)


@pytest.fixture
def rest(db):
    db.execute("TRUNCATE events, alerts")
    db.execute("INSERT INTO symbols (symbol) VALUES ('AAPL'), ('MSFT')")
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades, revision)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 0)",
            [("AAPL", T0 + timedelta(minutes=i), 100 + i, 101 + i, 99 + i, 100.5 + i, 1000 + i, 100.2 + i, 10) for i in range(10)]
            + [("MSFT", T0, 300, 301, 299, 300.5, 5, 300, 1)],
        )
    db.execute(
        "INSERT INTO events (symbol, timestamp, id, kind, type, timeframe, direction, confidence, price, revision,"
        " params, detail) VALUES"
        " ('AAPL', %s, 'e1', 'pattern', 'doji', '1m', 'neutral', 0.9, 103.5, 0, '{}', '{\"signal\": 100}'),"
        " ('AAPL', %s, 'e2', 'highlow', 'session_high', NULL, 'up', 1.0, 106.2, 0, '{\"min_move\": 0.1}',"
        '  \'{"previous": 106.0, "session": "2026-11-02"}\')',
        (T0 + timedelta(minutes=3), T0 + timedelta(minutes=6)),
    )
    db.execute(
        "INSERT INTO alerts (symbol, timestamp, id, rule, severity, timeframe, direction, confidence, indicator,"
        " value, threshold, message, revision, params) VALUES"
        " ('AAPL', %s, 'a1', 'rsi_overbought', 'warning', '1m', 'down', 0.9, 'rsi', 72.0, 70.0, 'RSI 72 above 70', 0,"
        "  '{\"period\": 14}')",
        (T0 + timedelta(minutes=8),),
    )
    with running_gateway(TEST_DATABASE_URL, Settings().redis_url) as gw, httpx.Client(base_url=gw.http, timeout=WAIT_S) as client:
        yield client


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_recent_ticks_old_shape_newest_first(rest):
    body = rest.get("/api/ticks/recent", params={"symbol": "aapl", "limit": 3}).json()
    assert body["symbol"] == "AAPL" and body["count"] == 3
    assert [t["timestamp"] for t in body["ticks"]] == [iso(T0 + timedelta(minutes=m)) for m in (9, 8, 7)]
    assert body["ticks"][0] == {
        "symbol": "AAPL",
        "timestamp": iso(T0 + timedelta(minutes=9)),
        "open": 109.0,
        "high": 110.0,
        "low": 108.0,
        "close": 109.5,
        "volume": 1009,
    }
    since = rest.get("/api/ticks/recent", params={"symbol": "AAPL", "since": iso(T0 + timedelta(minutes=8))}).json()
    assert since["count"] == 2
    assert rest.get("/api/ticks/recent", params={"symbol": "AAPL"}).json()["count"] == 10  # default limit 100


def test_bars_range_and_timeframes(rest):
    body = rest.get("/api/bars", params={"symbol": "AAPL", "start": iso(T0), "end": iso(T0 + timedelta(minutes=5))}).json()
    assert body["count"] == 5 and body["timeframe"] == "1m"
    assert body["bars"][0]["open"] == 100.0 and body["bars"][0]["vwap"] == 100.2 and body["bars"][0]["trades"] == 10
    five = rest.get(
        "/api/bars", params={"symbol": "AAPL", "start": iso(T0), "end": iso(T0 + timedelta(hours=1)), "timeframe": "5m"}
    ).json()
    assert [(b["open"], b["close"], b["volume"]) for b in five["bars"]] == [(100.0, 104.5, 5010), (105.0, 109.5, 5035)]


def test_daily_bars_by_trading_session(rest):
    """`session` gives 1d bars by US/Eastern trading day (14:30 UTC is 09:30 New York on 2026-11-02, after DST)."""
    day = {"symbol": "AAPL", "start": "2026-11-02T00:00:00Z", "end": "2026-11-03T00:00:00Z", "timeframe": "1d"}
    body = rest.get("/api/bars", params=day | {"session": "regular"}).json()
    assert body["session"] == "regular" and body["count"] == 1
    assert [(b["timestamp"], b["open"], b["close"], b["volume"]) for b in body["bars"]] == [
        (iso(T0), 100.0, 109.5, sum(1000 + i for i in range(10)))
    ]
    assert rest.get("/api/bars", params=day).json()["session"] is None  # the UTC day, as before
    wrong = rest.get("/api/bars", params=day | {"timeframe": "5m", "session": "extended"})
    assert wrong.status_code == 400 and "use timeframe 1d" in wrong.json()["detail"]
    unknown = rest.get("/api/bars", params=day | {"session": "overnight"})
    assert unknown.status_code == 422 and "session" in unknown.text


def test_events_and_alerts_newest_first_in_record_shape(rest):
    since = iso(T0 - timedelta(hours=1))
    body = rest.get("/api/events", params={"symbol": "AAPL", "since": since}).json()
    assert [(e["kind"], e["id"]) for e in body["events"]] == [("alert", "a1"), ("highlow", "e2"), ("pattern", "e1")]
    highlow = body["events"][1]
    assert highlow["type"] == "session_high" and highlow["previous"] == 106.0 and highlow["price"] == 106.2
    assert highlow["timestamp"] == int((T0 + timedelta(minutes=6)).timestamp() * 1000)
    assert body["events"][0]["message"] == "RSI 72 above 70" and body["events"][0]["type"] == "rsi_overbought"
    only = rest.get("/api/events", params=[("symbol", "AAPL"), ("since", since), ("kind", "pattern"), ("kind", "alert")])
    assert [e["id"] for e in only.json()["events"]] == ["a1", "e1"]


def test_events_serve_indicator_rows_on_request_and_filter_by_timeframe(rest, db):
    db.execute(
        "INSERT INTO indicator_values (symbol, timeframe, timestamp, sma, bb_upper, revision) VALUES"
        " ('AAPL', '5m', %s, 101.5, 103.0, 1), ('AAPL', '1m', %s, 100.5, NULL, 0)",
        (T0 + timedelta(minutes=5), T0 + timedelta(minutes=9)),
    )
    since = iso(T0 - timedelta(hours=1))
    default = rest.get("/api/events", params={"symbol": "AAPL", "since": since}).json()
    assert {e["kind"] for e in default["events"]} == {"alert", "highlow", "pattern"}  # indicators only when asked
    assert {e["status"] for e in default["events"]} == {"detected"}
    rows = rest.get("/api/events", params={"symbol": "AAPL", "since": since, "kind": "indicator", "timeframe": "5m"}).json()
    assert rows["events"] == [
        {"kind": "indicator", "type": "values", "symbol": "AAPL", "timestamp": int((T0 + timedelta(minutes=5)).timestamp() * 1000),
         "timeframe": "5m", "sma": 101.5, "ema": None, "rsi": None, "macd": None, "macd_signal": None, "macd_hist": None,
         "bb_upper": 103.0, "bb_middle": None, "bb_lower": None, "atr": None, "vwap": None, "revision": 1}
    ]  # fmt: skip
    five = rest.get("/api/events", params={"symbol": "AAPL", "since": since, "timeframe": "5m"}).json()
    assert [e["id"] for e in five["events"]] == ["e2"]  # the highlow event has no timeframe; the 1m ones go
    assert rest.get("/api/events", params={"symbol": "AAPL", "timeframe": "2m"}).status_code == 422


def test_symbols_trading_now_busiest_minute_first(rest):
    assert rest.get("/api/symbols").json() == {"count": 2, "symbols": ["AAPL", "MSFT"]}  # AAPL's bar is newer
    assert rest.get("/api/symbols", params={"limit": 1}).json()["symbols"] == ["AAPL"]
    assert rest.get("/api/symbols", params={"limit": 0}).status_code == 422


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("/api/ticks/recent", {"symbol": "AA PL"}, 400, "invalid symbol 'AA PL'"),
        ("/api/ticks/recent", {"symbol": "$"}, 400, "invalid symbol"),
        ("/api/ticks/recent", {"symbol": "ZZZZ"}, 404, "unknown symbol ZZZZ"),
        ("/api/ticks/recent", {}, 422, "symbol"),
        ("/api/ticks/recent", {"symbol": "AAPL", "limit": 0}, 422, "greater than or equal to 1"),
        ("/api/ticks/recent", {"symbol": "AAPL", "limit": 1001}, 422, "less than or equal to 1000"),
        ("/api/ticks/recent", {"symbol": "AAPL", "since": "yesterday"}, 422, "since"),
        ("/api/bars", {"symbol": "AAPL", "start": "2026-13-01T00:00:00Z", "end": "2026-11-03T00:00:00Z"}, 422, "start"),
        (
            "/api/bars",
            {"symbol": "AAPL", "start": "2026-11-03T00:00:00Z", "end": "2026-11-02T00:00:00Z"},
            400,
            "must be before end",
        ),
        (
            "/api/bars",
            {"symbol": "AAPL", "start": "2020-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            400,
            "range too large: 3156480 1m bars > 10000",
        ),
        (
            "/api/bars",
            {"symbol": "AAPL", "start": "2000-01-01T00:00:00Z", "end": "2030-01-01T00:00:00Z", "timeframe": "1d"},
            400,
            "range too large",
        ),
        (
            "/api/bars",
            {"symbol": "AAPL", "start": "2026-11-02T00:00:00Z", "end": "2026-11-03T00:00:00Z", "timeframe": "2m"},
            422,
            "timeframe",
        ),
        ("/api/bars", {"symbol": "AAPL", "end": "2026-11-03T00:00:00Z"}, 422, "start"),
        ("/api/events", {"symbol": "AAPL", "kind": "candles"}, 422, "kind"),
        ("/api/events", {"symbol": "AAPL", "since": "2999-01-01T00:00:00Z"}, 400, "in the future"),
    ],
)
def test_bad_input_gets_a_clear_4xx(rest, path, params, status, says):
    response = rest.get(path, params=params)
    assert response.status_code == status, response.text
    assert says in json.dumps(response.json()["detail"])


def test_rest_requires_a_token_granting_the_symbol_when_auth_is_on(db):
    db.execute("INSERT INTO symbols (symbol) VALUES ('AAPL'), ('MSFT')")
    db.execute("INSERT INTO ohlcv_1min (symbol, timestamp, volume, trades) VALUES ('AAPL', %s, 5, 1), ('MSFT', %s, 9, 1)",
               (T0, T0))  # fmt: skip
    with running_gateway(TEST_DATABASE_URL, Settings().redis_url, dev_mode=False, jwt_secret=SECRET) as gw:
        token = Policy(SECRET, (), False).issue("alice", ["AAPL"], ["*"], ttl_s=60, now=time.time())
        with httpx.Client(base_url=gw.http, timeout=WAIT_S) as client:
            missing = client.get("/api/ticks/recent", params={"symbol": "AAPL"})
            assert missing.status_code == 401 and missing.json()["detail"].startswith("missing token")
            ok = client.get("/api/ticks/recent", params={"symbol": "AAPL"}, headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200 and [t["volume"] for t in ok.json()["ticks"]] == [5]
            assert client.get("/api/symbols", params={"token": token}).json()["symbols"] == ["AAPL"], "only granted symbols"
            other = client.get("/api/ticks/recent", params={"symbol": "MSFT", "token": token})
            assert other.status_code == 403 and other.json()["detail"] == "symbol MSFT is not allowed by your token"
            assert client.get("/healthz").status_code == 200  # probes need no token
