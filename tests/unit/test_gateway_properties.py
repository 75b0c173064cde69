"""Property-based tests (hypothesis) of the gateway's decoders: whatever comes in, a precise refusal or
a valid result, never another exception.

- `protocol.decode_client`: any text, any JSON value, protocol-shaped messages with hostile fields;
- `ChannelMap.parse`: any channel name and any bytes from Redis, and hostile JSON objects;
- the REST time parameter (`rfc3339.parse_time`) and the token check (`Policy.admit`);
- the settings: any value of any GATEWAY_* variable is a valid setting or a precise error.

The REST parameter handling against a running gateway is in tests/integration/test_gateway_hostile.py.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import jwt
import msgspec
import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from connectors.gateway import protocol
from connectors.gateway.auth import Grant, Policy, Refused
from connectors.gateway.fanout import ChannelMap, Message, frame
from connectors.gateway.protocol import KINDS, BadMessage, Ping, Subscribe, Unsubscribe, decode_client
from connectors.gateway.rfc3339 import parse_time
from connectors.gateway.settings import GatewaySettings, describe_errors
from schemas.channels import Channels
from schemas.symbols import is_symbol

SECRET = "prop-secret-" + "q" * 32
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
hostile_ints = st.integers() | st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, -1, 0])
hostile_text = st.text() | st.sampled_from(["*", " aapl ", "BACpL", "A\x00", "\u202e", "é", "a" * 100, "", "\ud83d\ude00"])


def protocol_shaped() -> st.SearchStrategy[dict]:
    field = st.one_of(json_values, hostile_ints, hostile_text, st.lists(hostile_text, max_size=30))
    return st.fixed_dictionaries(
        {"type": st.sampled_from(["subscribe", "unsubscribe", "ping", "launch", "", "SUBSCRIBE"])},
        optional={
            "symbols": st.lists(hostile_text, max_size=20) | field,
            "kinds": st.lists(st.sampled_from([*KINDS, "candles", "*", ""]), max_size=10) | field,
            "min_confidence": st.floats() | field,
            "timeframes": st.lists(st.sampled_from([*protocol.TIMEFRAME_NAMES, "2m", "5M", "", "*"]), max_size=12) | field,
            "positions": st.dictionaries(
                hostile_text, st.fixed_dictionaries({"epoch": hostile_text, "offset": hostile_ints}) | field, max_size=5
            )
            | field,
            "id": field,
            "extra": field,
        },
    )


def _check_decoded(raw: str | bytes) -> None:
    try:
        message = decode_client(raw)
    except BadMessage as exc:
        text = str(exc)
        assert text and len(text) < 2000
        reply = json.loads(protocol.error("bad_message", text))  # the reply encodes, whatever the input was
        assert reply["message"] == text
        return
    assert isinstance(message, Subscribe | Unsubscribe | Ping)
    if isinstance(message, Ping):
        json.loads(protocol.encode({"type": "pong", "id": message.id}))
        return
    assert all(s == protocol.ALL or is_symbol(s) for s in message.symbols)
    assert len(message.symbols) <= protocol.MAX_SYMBOLS_PER_MESSAGE
    assert set(message.kinds or []) <= set(KINDS)
    if isinstance(message, Subscribe):
        assert message.min_confidence is None or 0.0 <= message.min_confidence <= 1.0
        assert all(0 <= p.offset <= protocol.INT64_MAX for p in message.positions.values())
        assert message.timeframes is None or 0 < len(message.timeframes) == len(set(message.timeframes)) <= 5
        assert set(message.timeframes or []) <= set(protocol.TIMEFRAME_NAMES)


@FAST
@given(st.text())
def test_decode_client_any_text(raw):
    _check_decoded(raw)


@FAST
@given(st.binary())
def test_decode_client_any_bytes(raw):
    _check_decoded(raw)


@FAST
@given(json_values)
def test_decode_client_any_json_value(value):
    _check_decoded(json.dumps(value))


@FAST
@given(protocol_shaped())
def test_decode_client_protocol_shaped_messages(message):
    _check_decoded(json.dumps(message))


def test_decode_client_extremes():
    for raw in [
        '{"type":"ping","id":' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"type":"subscribe","symbols":' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"type":"subscribe","symbols":[' + ",".join(['"A"'] * 1001) + "]}",
        '{"type":"subscribe","positions":{"c":{"epoch":"e","offset":18446744073709551616}}}',
        '{"type":"ping","id":1e400}',
        '{"type":"subscribe","min_confidence":NaN}',
        '{"type":"subscribe","symbols":["\\ud800"]}',
        "\x00",
        "",
    ]:
        with pytest.raises(BadMessage):
            decode_client(raw)
    assert decode_client('{"type":"subscribe","symbols":["aapl","AAPL","BACpL","*"]}').symbols == ["AAPL", "BACpL", "*"]


# ---------------------------------------------------------------- Redis messages
CM = ChannelMap(Channels("ns"), max_bytes=4096)
PREFIXES = ["ns.market.bars.live.", "ns.market.ohlcv.", "ns.market.ohlcv.5m.", "ns.market.bars.live.1d.", "ns.market.ohlcv.1h",
            "ns.market.prices.", "ns.events.by_symbol.", "ns:indicators:streaming", "ns.other.", ""]  # fmt: skip
channel_names = st.builds(lambda p, s: p + s, st.sampled_from(PREFIXES), hostile_text)


def _check_parsed(channel: str, data: bytes) -> None:
    m = CM.parse(channel, data)
    if m is None:
        return
    assert isinstance(m, Message)
    assert is_symbol(m.symbol) and len(data) <= CM.max_bytes
    doc = json.loads(frame([m]))  # the frame element is valid JSON, in valid UTF-8
    assert doc["messages"][0]["channel"] == channel and isinstance(doc["messages"][0]["data"], dict)
    frame([m]).decode("utf-8")
    assert 0 <= m.offset <= protocol.INT64_MAX and 0.0 <= m.confidence <= 1.0
    assert m.kind in KINDS
    assert m.timeframe in protocol.TIMEFRAME_NAMES if m.kind in protocol.BAR_KINDS else m.timeframe == ""


@FAST
@given(channel_names, st.binary(max_size=300))
def test_channel_map_any_bytes(channel, data):
    _check_parsed(channel, data)


envelope_fields = st.fixed_dictionaries(
    {},
    optional={
        "offset": hostile_ints | json_values,
        "epoch": hostile_text | json_values,
        "kind": st.sampled_from([*KINDS, "x"]) | json_values,
        "id": hostile_text | json_values,
        "timestamp": hostile_ints | json_values,
        "confidence": st.floats(allow_nan=False) | json_values,
        "symbol": hostile_text | json_values,
        "close": json_values,
    },
)


@FAST
@given(channel_names, envelope_fields)
def test_channel_map_hostile_objects(channel, obj):
    try:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except ValueError:  # floats out of JSON range
        return
    _check_parsed(channel, data)


def test_channel_map_extremes():
    live = "ns.market.bars.live.AAPL"
    good = b'{"offset":1,"epoch":"e","symbol":"AAPL","close":1.0}'
    assert CM.parse(live, good) is not None
    for data in [
        b"",
        b"null",
        b"[1]",
        b'"x"',
        b"{" * 100_000,
        b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"offset":1,"x":"\xff"}',
        b'{"offset":9223372036854775808}',
        b'{"timestamp":1e400}',
        b'{"confidence":1e400}',
        b'{"offset":1} trailing',
        b'{"offset":1,"x":NaN}',
        b"{" + b" " * 5000 + b"}",
    ]:
        assert CM.parse(live, data) is None, data[:40]
    assert CM.parse("ns.market.bars.live.A B", good) is None
    assert CM.parse("ns.market.bars.live.", good) is None
    assert CM.parse("ns.market.bars.live.AAPL\n", good) is None


# ---------------------------------------------------------------- REST time parameter
@FAST
@given(st.text(max_size=50))
def test_parse_time_any_text(text):
    try:
        moment = parse_time("since", text)
    except RequestValidationError as exc:
        (error,) = exc.errors()
        assert error["loc"] == ("query", "since") and error["msg"]
        return
    assert moment.tzinfo is UTC


@FAST
@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.integers(-(23 * 60 + 59), 23 * 60 + 59),
    st.sampled_from(["T", "t", " "]),
)
def test_parse_time_every_rfc3339_instant(naive, offset_min, sep):
    sign = "+" if offset_min >= 0 else "-"
    text = f"{naive.year:04d}-{naive:%m-%d}{sep}{naive:%H:%M:%S.%f}{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    moment = parse_time("t", text)
    try:
        expected = (naive - timedelta(minutes=offset_min)).replace(tzinfo=UTC)
    except OverflowError:  # before year 1 / after 9999 in UTC: clamped, before/after every stored row
        expected = datetime.min.replace(tzinfo=UTC) if offset_min > 0 else datetime.max.replace(tzinfo=UTC)
    assert moment == expected


def test_parse_time_extremes():
    for bad in [
        "0000-01-01T00:00:00Z",
        "10000-01-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-01-01T00:00:00+24:00",
        "2026-01-01T24:00:00Z",
        "2026-01-01",
        "1700000000",
        "2026-01-01T00:00:00",
        "٢٠٢٦-01-01T00:00:00Z",
    ]:
        with pytest.raises(RequestValidationError):
            parse_time("since", bad)
    assert parse_time("x", "2016-12-31T23:59:60Z") == datetime(2016, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert parse_time("x", "9999-12-31T23:59:59-05:00") == datetime.max.replace(tzinfo=UTC)


# ---------------------------------------------------------------- tokens
POLICY = Policy(SECRET, (), leeway_s=30, max_lifetime_s=3600)
claim_values = st.one_of(json_values, hostile_ints, st.floats(), st.lists(hostile_text, max_size=5))


@FAST
@given(st.text(max_size=300))
def test_admit_any_token_text(token):
    with pytest.raises(Refused) as caught:
        POLICY.admit(token or "x", None, now=1_000_000)
    assert caught.value.status == 401 and caught.value.reason


@FAST
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "sub": claim_values,
            "exp": claim_values,
            "iat": claim_values,
            "nbf": claim_values,
            "symbols": claim_values,
            "kinds": claim_values,
            "aud": claim_values,
        },
    )
)
def test_admit_any_signed_claims(claims):
    try:
        token = jwt.encode(claims, SECRET, algorithm="HS256")
    except (TypeError, ValueError, OverflowError):
        return
    try:
        grant = POLICY.admit(token, None, now=1_000_000)
    except Refused as exc:
        assert exc.status == 401 and exc.reason
        return
    assert isinstance(grant, Grant) and grant.kinds <= set(KINDS)
    assert all(s == "*" or is_symbol(s) for s in grant.symbols)
    assert math.isfinite(grant.expires) and grant.expires - claims["iat"] <= 3600


# ---------------------------------------------------------------- settings
NUMERIC = [
    "port",
    "db_pool_min",
    "db_pool_max",
    "db_timeout_s",
    "db_statement_timeout_s",
    "batch_interval_ms",
    "max_queue",
    "max_buffer_bytes",
    "slow_timeout_s",
    "max_symbols",
    "max_connections",
    "ping_interval_s",
    "ping_timeout_s",
    "max_message_bytes",
    "max_relay_bytes",
    "max_errors",
    "error_window_s",
    "rate_limit_per_s",
    "rate_burst",
    "max_tracked_channels",
    "jwt_leeway_s",
    "max_token_lifetime_s",
    "token_ttl_s",
    "max_bars",
    "probe_interval_s",
]
ALL_FIELDS = [
    *NUMERIC,
    "host",
    "redis_url",
    "redis_namespace",
    "database_url",
    "dev_mode",
    "dev_mode_allow_remote",
    "jwt_secret",
    "jwt_audience",
    "jwt_issuer",
    "allowed_origins",
]


def test_every_setting_is_covered():
    assert set(ALL_FIELDS) == set(GatewaySettings.model_fields)


@FAST
@given(
    st.sampled_from(ALL_FIELDS),
    st.text(max_size=40)
    | st.sampled_from(["nan", "inf", "-inf", "1e400", "1e-300", "-1", "99999999999999999999", "1", "yes", "true", "0x10"]),
)
def test_any_setting_value_is_valid_or_a_precise_error(field, value):
    env = {"jwt_secret": SECRET} if field != "jwt_secret" else {}
    try:
        s = GatewaySettings(**{**env, field: value})
    except ValidationError as exc:
        text = describe_errors(exc)
        assert text.strip() and "Traceback" not in text
        return
    if field in NUMERIC:
        number = getattr(s, field)
        assert math.isfinite(number) and number <= 10**9
    if field == "dev_mode":
        assert s.dev_mode == (value.strip().lower() == "true")


@pytest.mark.parametrize("value", ["1", "yes", "on", "y", "t", "True ", "TRUE"])
def test_dev_mode_needs_the_word_true(value):
    if value.strip().lower() == "true":
        assert GatewaySettings(dev_mode=value).dev_mode is True
    else:
        with pytest.raises(ValidationError, match="must be `true` or `false`"):
            GatewaySettings(dev_mode=value)


def test_settings_errors_never_show_secrets():
    with pytest.raises(ValidationError) as caught:
        GatewaySettings(
            redis_url="http://user:hunter2-pass@x/0",
            database_url="postgresql://u:hunter2-db@h:5432/db?sslmode=bogus'",
            jwt_secret="short-hunter2",
        )
    text = describe_errors(caught.value)
    assert "GATEWAY_REDIS_URL" in text and "hunter2" not in text
    s = GatewaySettings(redis_url="redis://user:hunter2@127.0.0.1:6379/0", database_url="postgresql://u:hunter2@h/db")
    assert "hunter2" not in json.dumps(s.public()) and "hunter2" not in repr(s)


def test_message_payload_encoder_refuses_nothing_decoded():
    """Every string msgspec decodes can be encoded again (no lone surrogates reach a reply)."""
    assert msgspec.json.encode(decode_client('{"type":"ping","id":"\\ud83d\\ude00"}').id) == '"😀"'.encode()
