"""The bridge's pure pieces: frame splitting (property-based), Kafka error verdicts, backoff, spool."""

from __future__ import annotations

import doctest
import importlib
import json
import math
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from confluent_kafka import KafkaError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connectors.backoff import backoff_s
from connectors.feeds.bridge.frames import split_frame
from connectors.feeds.bridge.spool import MAGIC, Spool, SpoolError
from connectors.kafka.errors import DEAD_LETTER, RENEW, RETRY, STOP, judge
from tests.support.examples import examples

pytestmark = pytest.mark.cost(20)  # a rough serial time in seconds: run early (tests/conftest.py)

# --- strategies --------------------------------------------------------------------------

# Any JSON value msgspec and orjson both read: ints of any size, finite floats, any text
# (no lone surrogates: JSON text cannot carry them), nesting a few levels deep.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
symbols = st.from_regex(r"[A-Z][A-Za-z0-9.\-]{0,5}", fullmatch=True)
events = st.fixed_dictionaries(
    {"ev": st.sampled_from(["T", "Q", "A", "AM", "LULD", "status", "", "日本"]) | st.text(max_size=5)},
    optional={"sym": symbols | st.text(max_size=6), "t": json_values, "e": json_values, "status": json_values,
              "message": json_values, "x": json_values, "p": json_values},
)  # fmt: skip
# elements that are not events; none holds a quote, bracket or comma, so they cannot change
# where their neighbours start and end (garbage that does is covered by the arbitrary-bytes test)
not_json = st.sampled_from([b"NaN", b"-Infinity", b"Infinity", b"tru", b"nul", b"01", b"1.", b"-", b"1e",
                            b"\x01", b"\xff\xfe", b"+1", b"0x10", b"undefined", b"'single'"])  # fmt: skip
not_objects = st.sampled_from([b"1", b"null", b'"x"', b"[]", b"[1,2]", b"true", b"18446744073709551616",
                               b'{"ev":5}', b'{"ev":null}', b'{"sym":7}', b'{"ev":"T","sym":["A"]}',
                               b'{"ev":"T","p":NaN}', b'{"ev":"T","x":"\xff"}', b'{"ev":"T","x":"\\ud800"}',
                               b'{"ev":"T","t":1e999}', b'{"ev":"T","x":"a\x01b"}', b'{"ev":"T","x":"\\q"}',
                               b'{"ev":"T",}', b'{"ev" "T"}', b"{" + b'"a":[' * 2000 + b"]" * 2000 + b"}"])  # fmt: skip
whitespace = st.sampled_from([b"", b" ", b"\n", b"\t ", b"\r\n  "])


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def strict_json(raw: bytes) -> Any:
    """A strict, independent JSON parser: any size of integer, no NaN/Infinity, UTF-8 only."""
    return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)


# --- properties --------------------------------------------------------------------------


@settings(max_examples=examples(150, deep=500), suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, max_size=20), whitespace, st.booleans())
def test_a_well_formed_frame_gives_every_event_as_its_exact_bytes_in_order(
    evs: list[dict[str, Any]], space: bytes, as_text: bool
) -> None:
    elements = [encode(e) for e in evs]
    frame = b"[" + space + (b"," + space).join(elements) + space + b"]"
    split = split_frame(frame.decode() if as_text else frame)
    ok = [
        el for el, e in zip(elements, evs, strict=True) if isinstance(e.get("ev", ""), str) and isinstance(e.get("sym", ""), str)
    ]
    assert [bytes(r) for r in split.raws] == ok == elements  # the strategy only makes string ev/sym
    assert split.refused == []
    assert [(h.ev, h.sym) for h in split.heads] == [(e.get("ev", ""), e.get("sym", "")) for e in evs]


@settings(max_examples=examples(250, deep=1000), suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), events, not_json | not_objects), max_size=15), whitespace, st.booleans())
def test_bad_elements_are_refused_one_by_one_and_every_good_event_still_comes_once(
    picks: list[tuple[bool, dict[str, Any], bytes]], space: bytes, as_binary: bool
) -> None:
    elements = [encode(good) if is_good else bad for is_good, good, bad in picks]
    frame = b"[" + space + (b"," + space).join(elements) + space + b"]"
    split = split_frame(frame if as_binary else frame.decode("utf-8", "surrogateescape").encode("utf-8", "surrogateescape"))
    good = [el for (is_good, _, _), el in zip(picks, elements, strict=True) if is_good]
    bad = [el for (is_good, _, _), el in zip(picks, elements, strict=True) if not is_good]
    assert [bytes(r) for r in split.raws] == good
    assert [bytes(r.raw) for r in split.refused] == bad
    assert all(r.reason for r in split.refused)


@settings(max_examples=examples(250, deep=1000), suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, min_size=1, max_size=8), st.data())
def test_a_frame_cut_anywhere_gives_exactly_the_events_completed_before_the_cut(
    evs: list[dict[str, Any]], data: st.DataObject
) -> None:
    elements = [encode(e) for e in evs]
    frame = b"[" + b",".join(elements) + b"]"
    cut = data.draw(st.integers(0, len(frame) - 1))
    split = split_frame(frame[:cut])
    ends, offset = [], 1
    for el in elements:
        offset += len(el)
        ends.append(offset)
        offset += 1
    assert [bytes(r) for r in split.raws] == [el for el, end in zip(elements, ends, strict=True) if end <= cut]
    assert split.refused  # a cut frame is never taken as whole


@settings(max_examples=examples(600, deep=3000), suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
@example(b"[" * 100_000)
@example(b'[{"ev":"T","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}]")
@example(b"\x00" * 1000)
@example(b'["\\')
def test_any_bytes_never_raise_and_only_json_objects_are_forwarded(frame: bytes) -> None:
    split = split_frame(frame)
    for head, raw in zip(split.heads, split.raws, strict=True):
        value = strict_json(bytes(raw))  # an independent strict parser agrees it is one JSON object
        assert isinstance(value, dict)
        assert isinstance(head.ev, str) and isinstance(head.sym, str)
        assert bytes(raw) in frame  # the exact bytes received, not a re-encoding
    for piece in split.refused:
        assert isinstance(piece.raw, bytes) and piece.reason


@settings(max_examples=examples(100, deep=300))
@given(st.text(max_size=100))
def test_any_text_frame_never_raises(frame: str) -> None:
    split = split_frame(frame)
    assert all(isinstance(strict_json(bytes(r)), dict) for r in split.raws)


def test_values_that_json_allows_but_int64_does_not_are_forwarded_untouched() -> None:
    event = b'{"ev":"T","sym":"AAPL","t":99999999999999999999999,"s":18446744073709551616,"p":1e308,"q":-9223372036854775809}'
    split = split_frame(b"[" + event + b"]")
    assert [bytes(r) for r in split.raws] == [event] and split.refused == []


def test_lone_surrogates_and_invalid_utf8_are_refused_with_the_reason() -> None:
    split = split_frame('[{"ev":"T","sym":"A","x":"\ud800"},{"ev":"T","sym":"B"}]')
    assert [bytes(r) for r in split.raws] == [b'{"ev":"T","sym":"B"}']
    assert [r.reason for r in split.refused] == ["unreadable event: not valid UTF-8 (byte 25)"]


def test_a_huge_frame_and_a_huge_event_split_like_small_ones() -> None:
    small = [{"ev": "T", "sym": f"S{i % 500}", "p": 1.5, "s": i, "t": 1_700_000_000_000 + i} for i in range(40_000)]
    huge = {"ev": "T", "sym": "BIG", "blob": "x" * 3_000_000}
    frame = orjson.dumps([*small[:20_000], huge, *small[20_000:]])
    assert len(frame) > 5_000_000
    split = split_frame(frame)
    assert len(split.raws) == 40_001 and bytes(split.raws[20_000]) == orjson.dumps(huge)
    broken = frame.replace(b'"p":1.5,"s":7,', b'"p":NaN,"s":7,', 1)  # one bad event: the slow path
    split = split_frame(broken)
    assert len(split.raws) == 40_000 and len(split.refused) == 1


def test_the_modules_examples_run() -> None:
    for name in (
        "connectors.feeds.bridge.frames",
        "connectors.kafka.errors",
        "connectors.feeds.bridge.spool",
        "connectors.backoff",
    ):
        result = doctest.testmod(importlib.import_module(name))
        assert result.attempted > 0 and result.failed == 0, name


# --- Kafka error verdicts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "verdict", "kind"),
    [
        (KafkaError._TRANSPORT, RETRY, None),  # broker down
        (KafkaError._ALL_BROKERS_DOWN, RETRY, None),
        (KafkaError.REQUEST_TIMED_OUT, RETRY, None),
        (KafkaError._MSG_TIMED_OUT, RETRY, None),
        (KafkaError.NOT_LEADER_FOR_PARTITION, RETRY, None),  # leader change
        (KafkaError.LEADER_NOT_AVAILABLE, RETRY, None),
        (KafkaError.UNKNOWN_PRODUCER_ID, RENEW, None),  # the broker forgot the producer's state
        (KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, RENEW, None),
        (KafkaError.PRODUCER_FENCED, RENEW, None),  # Tansu's answer to an epoch bump
        (KafkaError._FATAL, RENEW, None),
        (KafkaError.NOT_ENOUGH_REPLICAS, RETRY, None),
        (KafkaError._PURGE_QUEUE, RETRY, None),
        (KafkaError.MSG_SIZE_TOO_LARGE, DEAD_LETTER, "too_large"),
        (KafkaError.RECORD_LIST_TOO_LARGE, DEAD_LETTER, "too_large"),
        (KafkaError.INVALID_RECORD, DEAD_LETTER, "malformed"),
        (KafkaError.INVALID_TIMESTAMP, DEAD_LETTER, "malformed"),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, STOP, None),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, STOP, None),
        (KafkaError.SASL_AUTHENTICATION_FAILED, STOP, None),
        (KafkaError._AUTHENTICATION, STOP, None),
        (KafkaError._UNKNOWN_TOPIC, STOP, None),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, STOP, None),
        (KafkaError.TOPIC_EXCEPTION, STOP, None),
    ],
)
def test_kafka_errors_are_told_apart(code: int, verdict: str, kind: str | None) -> None:
    assert judge(KafkaError(code)) == (verdict, kind)


# --- backoff -----------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [0, 1, 10, 1023, 1024, 1075, 10_000, 10**6, 10**18, -5])
def test_backoff_is_finite_capped_and_jittered_for_any_attempt(attempt: int) -> None:
    delays = [backoff_s(attempt, 0.5, 30.0) for _ in range(200)]
    assert all(math.isfinite(d) and 0 < d <= 30.0 for d in delays)
    assert len(set(delays)) > 1  # jittered: reconnecting bridges do not move in step
    if attempt >= 10:
        assert min(delays) >= 15.0  # capped at 30 s, jitter takes off at most half


def test_backoff_grows_exponentially_until_the_cap() -> None:
    top = [backoff_s(n, 0.5, 30.0, rng=lambda: 1.0) for n in range(10)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


# --- spool ---------------------------------------------------------------------------------------


RECORDS = [("stocks.trades", b"AAPL", b'{"ev":"T","sym":"AAPL"}', None),
           ("stocks.deadletter", None, b"\x00\xff" * 10, [("dlq.kind", b"malformed"), ("dlq.reason", b"x")]),
           ("stocks.quotes", b"MSFT", b"", None)]  # fmt: skip


def test_spool_round_trip_keeps_every_record_and_its_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.lock()
    first = spool.write(RECORDS)
    second = spool.write(RECORDS[:1])
    assert spool.write([]) is None  # nothing to spool: no file
    assert spool.pending() == [first, second]
    assert [list(spool.read(p)) for p in spool.pending()] == [RECORDS, RECORDS[:1]]
    spool.remove([first, second])
    assert spool.pending() == [] and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[:-3], lambda b: b[: len(MAGIC) + 2], lambda b: b"garbage" + b, lambda b: b + b"\xff\xff\xff\xff",
     lambda b: b + b"\x00\x00\x00\x05abcde"],
)  # fmt: skip
def test_a_damaged_spool_file_yields_what_precedes_the_damage_and_is_set_aside(tmp_path: Path, damage: Any) -> None:
    spool = Spool(tmp_path)
    path = spool.write(RECORDS)
    assert path is not None
    path.write_bytes(damage(path.read_bytes()))
    got = list(spool.read(path))
    assert got == RECORDS[: len(got)]
    assert not path.exists() and path.with_suffix(".unreadable").exists()


def test_a_spool_directory_serves_one_bridge_at_a_time(tmp_path: Path) -> None:
    held = Spool(tmp_path)
    held.lock()
    with pytest.raises(SpoolError, match="in use by another bridge"):
        Spool(tmp_path).lock()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SpoolError, match="cannot use BRIDGE_SPOOL_DIR"):
        Spool(blocker / "spool").lock()


def test_spool_records_are_msgpack_as_documented(tmp_path: Path) -> None:
    path = Spool(tmp_path).write(RECORDS[:1])
    assert path is not None
    blob = path.read_bytes()[len(MAGIC) + 4 :]
    assert msgspec.msgpack.decode(blob) == list(RECORDS[0])
