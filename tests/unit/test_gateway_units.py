"""The gateway's pure parts, without sockets or Redis: protocol, fan-out, batching, tokens, health,
and the generated channel catalog."""

from __future__ import annotations

import json

import jsonschema
import pytest

from connectors.gateway.auth import DEV_GRANT, Policy, Refused
from connectors.gateway.fanout import ChannelMap, Router, Subscriber, frame
from connectors.gateway.metrics import Stats, health
from connectors.gateway.protocol import BadMessage, Ping, Subscribe, Unsubscribe, decode_client
from schemas import catalog
from schemas.bars import encode_bar
from schemas.channels import CATALOG, Channels
from schemas.events import PatternEvent, encode_event, stable_id
from tests.support.gateway import BarStatus, live_bar

SECRET = "unit-secret-" + "z" * 32
channels = ChannelMap(Channels("ns"))


def bar_message(symbol: str, close: float, offset: int, status: BarStatus = "live", minute: int = 0, revision: int = 0):
    raw = encode_bar(live_bar(symbol, close, minute=minute, status=status, revision=revision))
    name = channels.channels.live_for(symbol) if status == "live" else channels.channels.ohlcv_for(symbol)
    return channels.parse(name, b'{"offset":%d,"epoch":"e1",' % offset + raw[1:])


def event_message(symbol: str, confidence: float, offset: int, minute: int = 0, revision: int = 0):
    ts = 1_800_000_000_000 + minute * 60_000
    e = PatternEvent(
        id=stable_id("p", symbol, ts),
        type="doji",
        symbol=symbol,
        timestamp=ts,
        confidence=confidence,
        direction="neutral",
        params={},
        signal=100,
        revision=revision,
    )
    raw = encode_event(e)
    return channels.parse(channels.channels.events_for(symbol), b'{"offset":%d,"epoch":"e1",' % offset + raw[1:])


# ---------------------------------------------------------------- protocol
def test_protocol_accepts_the_documented_messages():
    assert decode_client(
        '{"type":"subscribe","symbols":["aapl","brk.b"],"kinds":["live","alert"],"min_confidence":0.8,'
        '"positions":{"ns.market.bars.live.AAPL":{"epoch":"e","offset":4}}}'
    ) == Subscribe(
        symbols=["AAPL", "BRK.B"],
        kinds=["live", "alert"],
        min_confidence=0.8,
        positions={"ns.market.bars.live.AAPL": __import__("connectors.gateway.protocol", fromlist=["Position"]).Position("e", 4)},
    )
    assert decode_client('{"type":"unsubscribe","kinds":["live"]}') == Unsubscribe(symbols=[], kinds=["live"])
    assert decode_client('{"type":"ping","id":3}') == Ping(id=3)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("{", "not JSON"),
        ('{"symbols":["AAPL"]}', "Object missing required field `type`"),
        ('{"type":"subscribe","symbols":["AAPL"],"kinds":["candles"]}', "unknown kind(s) candles"),
        ('{"type":"subscribe","symbols":["AAPL"],"min_confidence":2}', "Expected `float` <= 1.0"),
        ('{"type":"subscribe","symbols":["A A"]}', "invalid symbol 'A A'"),
        ('{"type":"subscribe","symbols":["AAPL"],"extra":1}', "unknown field `extra`"),
        ('{"type":"subscribe","positions":{"c":{"epoch":"e","offset":-1}}}', "Expected `int` >= 0"),
    ],
)
def test_protocol_rejects_bad_messages_with_the_reason(raw, says):
    with pytest.raises(BadMessage, match=None) as caught:
        decode_client(raw)
    assert says in str(caught.value)


# ---------------------------------------------------------------- fan-out and batching
def test_live_updates_replace_unsent_ones_per_symbol():
    router, sub = Router(), Subscriber()
    router.subscribe(sub, ["AAPL", "MSFT"])
    for offset, close in enumerate([1.0, 2.0, 3.0], 1):
        router.route(bar_message("AAPL", close, offset))
    router.route(bar_message("MSFT", 9.0, 1))
    taken = sub.take()
    assert [json.loads(m.part)["data"]["close"] for m in taken] == [3.0, 9.0]
    assert router.replaced == 2 and sub.take() == []


def test_final_bar_revisions_replace_the_unsent_original_but_other_minutes_stay():
    router, sub = Router(), Subscriber()
    router.subscribe(sub, ["AAPL"])
    router.route(bar_message("AAPL", 1.0, 1, status="final", minute=0))
    router.route(bar_message("AAPL", 2.0, 2, status="final", minute=1))
    router.route(bar_message("AAPL", 1.5, 3, status="final", minute=0, revision=1))
    data = [json.loads(m.part)["data"] for m in sub.take()]
    assert [(d["timestamp"], d["revision"]) for d in data] == [(1_800_000_000_000, 1), (1_800_000_060_000, 0)]


def test_distinct_events_are_all_kept_and_a_revised_event_replaces_its_original():
    router, sub = Router(), Subscriber()
    router.subscribe(sub, ["AAPL"])
    router.route(event_message("AAPL", 0.9, 1, minute=0))
    router.route(event_message("AAPL", 0.9, 2, minute=1))
    router.route(event_message("AAPL", 0.95, 3, minute=0, revision=1))
    assert [m.offset for m in sub.take()] == [3, 2]


def test_filters_kinds_confidence_and_watchlist():
    router = Router()
    patterns_only = Subscriber(kinds={"pattern"}, min_confidence=0.8)
    everything = Subscriber()
    router.subscribe(patterns_only, ["AAPL"])
    router.subscribe(everything, ["*"])
    for m in (
        event_message("AAPL", 0.5, 1),
        event_message("AAPL", 0.9, 2, minute=1),
        bar_message("AAPL", 1.0, 1),
        event_message("MSFT", 0.99, 1),
    ):
        router.route(m)
    assert [m.offset for m in patterns_only.take()] == [2]
    assert len(everything.take()) == 4
    router.unsubscribe(patterns_only, ["AAPL"])
    assert router.route(event_message("AAPL", 0.9, 3, minute=2)) == 1  # only the `*` subscriber


def test_catch_up_goes_first_and_live_copies_it_covered_are_dropped():
    sub = Subscriber()
    live_dup = event_message("AAPL", 0.9, 5, minute=5)
    live_new = event_message("AAPL", 0.9, 6, minute=6)
    sub.pending[live_dup.key] = live_dup  # arrived live while the history was read
    sub.catch_up(live_dup.channel, 5, [event_message("AAPL", 0.9, n, minute=n) for n in (4, 5)])
    sub.pending[live_new.key] = live_new
    assert [m.offset for m in sub.take()] == [4, 5, 6]


def test_frame_is_one_json_document_with_channel_and_data():
    m = bar_message("AAPL", 1.0, 7)
    doc = json.loads(frame([m, event_message("AAPL", 0.9, 1)]))
    assert doc["type"] == "batch" and doc["messages"][0]["channel"] == "ns.market.bars.live.AAPL"
    assert doc["messages"][0]["data"]["offset"] == 7 and doc["messages"][1]["data"]["kind"] == "pattern"


def test_channel_map_ignores_what_is_not_for_clients():
    assert channels.parse("ns.events.highlow", b'{"offset":1,"kind":"highlow"}') is None  # the kind channel
    assert channels.parse("ns.market.bars.live.AAPL", b"not json") is None
    assert channels.parse("ns.events.by_symbol.AAPL", b'{"offset":1,"kind":"unknown"}') is None
    indicator = channels.parse("ns:indicators:streaming", b'{"offset":3,"symbol":"AAPL","kind":"indicator","timestamp":5}')
    assert (indicator.symbol, indicator.kind, indicator.key) == ("AAPL", "indicator", ("AAPL", "indicator", 5))
    assert channels.symbol_channels("AAPL", ["live", "alert"]) == ["ns.market.bars.live.AAPL", "ns.events.by_symbol.AAPL"]


def test_timeframes_pick_the_bar_channels_and_filter_bars_only():
    c = channels.channels
    five = channels.parse(c.ohlcv_at_for("5m", "AAPL"), b'{"offset":1,"epoch":"e","timeframe":"5m","timestamp":9}')
    forming = channels.parse(c.live_at_for("1h", "BRK.B"), b'{"offset":2,"epoch":"e","timeframe":"1h","timestamp":9}')
    one = channels.parse(c.ohlcv_for("5M.X"), b'{"offset":3,"epoch":"e","timestamp":9}')  # upper-case: a symbol
    price = channels.parse(c.prices_for("AAPL"), b'{"offset":4,"epoch":"e","symbol":"AAPL","price":1.5,"timestamp":9}')
    assert (five.symbol, five.kind, five.timeframe, five.key) == ("AAPL", "bar", "5m", ("AAPL", "bar", "5m", 9))
    assert (forming.symbol, forming.kind, forming.timeframe) == ("BRK.B", "live", "1h")
    assert (one.symbol, one.timeframe) == ("5M.X", "1m")
    assert (price.symbol, price.kind, price.timeframe, price.key) == ("AAPL", "price", "", ("AAPL", "price"))
    assert (
        channels.channel_symbol("ns.market.ohlcv.15m.AAPL") == "AAPL"
        and channels.channel_timeframe("ns.market.ohlcv.15m.AAPL") == "15m"
    )
    assert channels.channel_kinds("ns.market.prices.AAPL") == {"price"}
    assert channels.symbol_channels("AAPL", ["live", "bar", "price", "alert"], ["1m", "5m"]) == [
        "ns.market.bars.live.AAPL",
        "ns.market.ohlcv.AAPL",
        "ns.market.bars.live.5m.AAPL",
        "ns.market.ohlcv.5m.AAPL",
        "ns.events.by_symbol.AAPL",
        "ns.market.prices.AAPL",
    ]
    assert "ns.market.prices.*" in channels.patterns()
    assert channels.parse("ns.market.ohlcv.5m", b'{"offset":1}') is None  # the all-symbol 5m channel: not relayed
    star = Router()
    star.subscribe(Subscriber(), ["*"])
    assert channels.channel_symbol("ns.market.bars.live.1d") == "" and not star.wants("") and star.wants("AAPL")

    router = Router()
    five_only = Subscriber(timeframes={"5m"})
    default = Subscriber()
    router.subscribe(five_only, ["AAPL"])
    router.subscribe(default, ["AAPL"])
    for m in (five, bar_message("AAPL", 1.0, 5, status="final"), event_message("AAPL", 0.9, 6), price):
        router.route(m)
    assert [(m.kind, m.timeframe) for m in five_only.take()] == [("bar", "5m"), ("pattern", ""), ("price", "")]
    assert [(m.kind, m.timeframe) for m in default.take()] == [("bar", "1m"), ("pattern", ""), ("price", "")]


def test_protocol_timeframes_are_known_names():
    assert decode_client('{"type":"subscribe","symbols":["A"],"timeframes":["5m","1d","5m"]}').timeframes == ["5m", "1d"]
    assert decode_client('{"type":"subscribe","symbols":["A"],"kinds":["price"]}').kinds == ["price"]
    for raw, says in (
        ('{"type":"subscribe","timeframes":["2m"]}', "unknown timeframe(s) 2m; expected some of 1m, 5m, 15m, 1h, 1d"),
        ('{"type":"subscribe","timeframes":[]}', "timeframes is empty"),
        ('{"type":"subscribe","timeframes":"5m"}', "Expected `array | null`, got `str`"),
        ('{"type":"subscribe","timeframes":[null]}', "Expected `str`, got `null`"),
        (json.dumps({"type": "subscribe", "timeframes": ["m" * 9]}), "Expected `str` of length <= 8"),
        (json.dumps({"type": "subscribe", "timeframes": ["1m"] * 11}), "Expected `array` of length <= 10"),
    ):
        with pytest.raises(BadMessage) as caught:
            decode_client(raw)
        assert says in str(caught.value), caught.value


# ---------------------------------------------------------------- tokens
def test_tokens_carry_user_symbols_kinds_and_expire():
    policy = Policy(SECRET, ["https://dash.example"])
    token = policy.issue("alice", ["aapl"], ["live", "alert"], ttl_s=60, now=1_000)
    grant = policy.admit(token, "https://dash.example/", now=1_059)
    assert (grant.user, grant.symbols, grant.kinds, grant.expires) == ("alice", {"AAPL"}, {"live", "alert"}, 1_060)
    assert grant.forbidden_symbols(["AAPL", "MSFT"]) == ["MSFT"]
    with pytest.raises(Refused, match="token expired"):
        policy.admit(token, None, now=1_060)
    with pytest.raises(Refused, match="invalid token: Signature verification failed"):
        Policy("other-" + SECRET).admit(token, None, now=1_000)
    with pytest.raises(Refused, match="missing token") as caught:
        policy.admit(None, None, now=1_000)
    assert caught.value.status == 401
    with pytest.raises(Refused, match=r"origin 'https://evil\.example' is not allowed") as caught:
        policy.admit(token, "https://evil.example", now=1_000)
    assert caught.value.status == 403


def test_a_weak_or_missing_secret_is_refused_unless_dev_mode():
    with pytest.raises(ValueError, match="GATEWAY_JWT_SECRET must be set to at least 32 bytes"):
        Policy("short")
    dev = Policy(None, dev_mode=True)
    assert dev.admit(None, "http://anywhere.example", now=0) == DEV_GRANT
    with pytest.raises(ValueError, match="unknown kind"):
        Policy(SECRET).issue("bob", ["AAPL"], ["candles"], ttl_s=1, now=0)


# ---------------------------------------------------------------- health
def test_health_verdicts():
    s = Stats(redis_connected=True, last_probe_at=100.0)
    assert health(s, database_ok=True, now=100.5)["status"] == "healthy"
    s.redis_lag_s = 2.5
    report = health(s, database_ok=True, now=100.5)
    assert (report["status"], report["reason"]) == ("degraded", "Redis messages arrive 2.50 s late")
    s.redis_lag_s = 0.0
    assert health(s, database_ok=False, now=100.5)["status"] == "degraded"
    assert health(s, database_ok=True, now=200.0)["reason"] == "no Redis probe received for 100.0 s"
    assert set(report["counters"]) >= {"received", "delivered", "dropped", "connections"}


# ---------------------------------------------------------------- channel catalog
def test_channel_catalog_document_is_current():
    assert catalog.main(["--check"]) == 0


@pytest.mark.parametrize("spec", CATALOG, ids=lambda s: s.attribute)
def test_catalog_examples_validate_against_the_published_schema(spec):
    schema = catalog.published_schema(spec.payload)
    message = catalog.example(spec.payload, 1)
    jsonschema.validate(message, schema)
    del message["offset"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(message, schema)
    assert f"### `{spec.name(Channels())}`" in catalog.document()
