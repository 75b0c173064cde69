"""The synthetic feed: deterministic, valid where it should be, broken where it should be."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from functools import cache
from typing import Any

import msgspec
import orjson
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from connectors.feeds.synthetic import (
    DEFAULT_START_MS,
    LATE_MS,
    OUT_OF_ORDER_MS,
    TOO_LATE_MS,
    FeedEvent,
    generate,
)
from schemas.polygon import Quote, SecondAgg, Trade, decode_event
from tests.support.reference import reference_bars

NEW_TRADES = ("trade", "out_of_order", "late", "too_late")  # everything but re-sends and junk
MIXED: dict[str, Any] = {
    "count": 200_000,
    "symbols": 500,
    "duplicate_ratio": 0.01,
    "out_of_order_ratio": 0.02,
    "late_ratio": 0.01,
    "too_late_ratio": 0.005,
    "malformed_ratio": 0.01,
    "quote_ratio": 0.05,
    "second_aggs": True,
}


@cache
def mixed_feed() -> tuple[FeedEvent, ...]:
    """One feed with every kind of event, shared by the tests that only read it."""
    return tuple(generate(**MIXED))


def primary(events: tuple[FeedEvent, ...]) -> list[FeedEvent]:
    return [e for e in events if e.label != "second_agg"]


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    options = MIXED | {"count": 20_000}
    first = list(generate(**options))
    assert first == list(generate(**options))
    other = list(generate(**options | {"seed": 2}))
    assert [e.value for e in other] != [e.value for e in first]


def test_labels_follow_the_configured_ratios() -> None:
    events = primary(mixed_feed())
    assert len(events) == MIXED["count"]
    seen = Counter(e.label for e in events)
    for label, ratio in [
        ("duplicate", MIXED["duplicate_ratio"]),
        ("out_of_order", MIXED["out_of_order_ratio"]),
        ("late", MIXED["late_ratio"]),
        ("too_late", MIXED["too_late_ratio"]),
        ("malformed", MIXED["malformed_ratio"]),
        ("quote", MIXED["quote_ratio"]),
    ]:
        assert seen[label] / len(events) == pytest.approx(ratio, rel=0.15), label
    assert seen["trade"] / len(events) == pytest.approx(1 - 0.1, rel=0.02)


def test_defaults_emit_only_trades_with_a_little_disorder() -> None:
    events = list(generate(count=50_000))
    seen = Counter(e.label for e in events)
    assert set(seen) == {"trade", "duplicate", "out_of_order", "late"}
    assert {e.topic_kind for e in events} == {"trades"}
    assert events[0].clock_ms == DEFAULT_START_MS
    assert events[-1].clock_ms == DEFAULT_START_MS + (50_000 - 1) * 1000 // 2000


def test_seconds_is_event_time_at_the_given_rate() -> None:
    events = list(generate(seconds=3, rate=500, start_ms=1_000_000))
    assert len(events) == 1500
    assert events[-1].clock_ms == 1_000_000 + 2998


def test_every_valid_value_decodes_to_its_topic_type() -> None:
    types = {"trades": Trade, "quotes": Quote, "second_aggs": SecondAgg}
    for e in mixed_feed():
        if e.label == "malformed":
            continue
        event = decode_event(e.value)
        assert isinstance(event, types[e.topic_kind]), e
        assert event.symbol.encode() == e.key


def test_every_malformed_value_fails_to_decode_and_all_kinds_occur() -> None:
    kinds: Counter[str] = Counter()
    for e in mixed_feed():
        if e.label != "malformed":
            continue
        assert e.topic_kind == "trades"
        with pytest.raises(msgspec.DecodeError):  # ValidationError is a DecodeError
            decode_event(e.value)
        kinds[malformation(e.value)] += 1
    assert set(kinds) == {"not json", "not an object", "unknown type", "missing field", "wrong type", "bad value"}


def malformation(value: bytes) -> str:
    """What is wrong with a malformed value, as far as a test can tell."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "not json"
    if not isinstance(record, dict):
        return "not an object"
    if record.get("ev") != "T":
        return "unknown type"
    if not {"sym", "x", "i", "p", "s", "t"} <= record.keys():
        return "missing field"
    if not all(isinstance(record[f], int) for f in ("x", "s", "t")) or not isinstance(record["p"], float):
        return "wrong type"
    if not isinstance(record.get("c", []), list):
        return "wrong type"
    assert record["p"] <= 0 or record["s"] < 0, record
    return "bad value"


def test_sequence_increases_per_symbol_and_trade_ids_are_unique() -> None:
    last_q: dict[str, int] = {}
    ids: set[tuple] = set()
    for e in mixed_feed():
        if e.label not in NEW_TRADES and e.label != "quote":
            continue
        record = orjson.loads(e.value)
        assert record["q"] > last_q.get(record["sym"], 0), e
        last_q[record["sym"]] = record["q"]
        if e.label != "quote":
            trade_id = (record["sym"], record["x"], record["i"], record.get("trfi"))
            assert trade_id not in ids, e
            ids.add(trade_id)


def test_trades_look_like_the_consolidated_tape() -> None:
    trades = [orjson.loads(e.value) for e in mixed_feed() if e.label in NEW_TRADES]
    symbols = {t["sym"] for t in trades}
    assert all(re.fullmatch(r"[A-Z]{1,5}", s) for s in symbols)
    assert len(symbols) > 400  # most of the 500 trade at least once
    for t in trades:
        assert t["p"] > 0 and round(t["p"] * 100) == pytest.approx(t["p"] * 100)
        assert (t["s"] < 100) == (37 in t.get("c", [])), t  # odd lots carry 37
        assert ("trfi" in t) == (t["x"] == 4), t
        assert t["z"] in (1, 2, 3) and 1 <= t["x"] <= 21
    conditions = Counter(tuple(t.get("c", ())) for t in trades)
    for c in [(), (14,), (14, 41), (37,), (12,), (10,), (2,), (15,), (16,), (17,), (22,), (32,)]:
        assert conditions[c] > 0, c
    activity = Counter(t["sym"] for t in trades).most_common()
    assert activity[0][1] > 20 * activity[len(activity) // 2][1], "some symbols trade far more"


def test_a_duplicate_resends_an_earlier_trade_exactly_a_little_later() -> None:
    sent_at: dict[tuple[bytes, bytes], int] = {}
    duplicates = 0
    for e in mixed_feed():
        if e.label in ("trade", "out_of_order", "late"):
            sent_at[e.key, e.value] = e.clock_ms
        elif e.label == "duplicate":
            assert 0 <= e.clock_ms - sent_at[e.key, e.value] <= 1000
            duplicates += 1
    assert duplicates > 0


def test_event_times_relative_to_the_feed_clock() -> None:
    delays: dict[str, list[int]] = defaultdict(list)
    clock = 0
    for e in mixed_feed():
        assert e.clock_ms >= clock
        clock = e.clock_ms
        if e.label in NEW_TRADES or e.label == "quote":
            delays[e.label].append(e.clock_ms - orjson.loads(e.value)["t"])
    assert set(delays["trade"]) == set(delays["quote"]) == {0}
    for label, (low, high) in [("out_of_order", OUT_OF_ORDER_MS), ("late", LATE_MS), ("too_late", TOO_LATE_MS)]:
        assert low <= min(delays[label]) and max(delays[label]) <= high, label
    assert max(delays["late"]) < 15 * 60_000 < 20 * 60_000 < min(delays["too_late"])


def test_a_real_time_clock_stamps_on_time_events() -> None:
    ticks = iter(range(5_000_000, 10**9, 3))
    events = list(generate(clock=lambda: next(ticks), count=1000, late_ratio=0.05, second_aggs=True))
    on_time = [e for e in events if e.label == "trade"]
    assert all(orjson.loads(e.value)["t"] == e.clock_ms for e in on_time)
    assert on_time[-1].clock_ms > 5_000_000 + 2000


def test_second_aggregates_summarise_each_seconds_on_time_trades() -> None:
    events = mixed_feed()
    trades = [orjson.loads(e.value) for e in events if e.label == "trade"]
    expected = reference_bars(trades, interval_ms=1000).filter(pl.col("open").is_not_null() & pl.col("high").is_not_null())
    aggs = [(e, orjson.loads(e.value)) for e in events if e.label == "second_agg"]
    assert all(e.clock_ms >= a["e"] == a["s"] + 1000 for e, a in aggs), "emitted after the second ends"
    actual = pl.DataFrame(
        [(a["sym"], a["s"], a["o"], a["h"], a["l"], a["c"], a["v"], a["vw"], round(a["v"] / a["z"])) for _, a in aggs],
        schema=["symbol", "timestamp", "open", "high", "low", "close", "volume", "vwap", "trades"],
        orient="row",
    ).sort("symbol", "timestamp")
    assert_frame_equal(actual, expected, check_dtypes=False, rel_tol=1e-12)


def test_regular_mix_gives_every_second_an_aggregate() -> None:
    events = list(generate(count=20_000, symbols=50, second_aggs=True, condition_mix="regular"))
    trades = [orjson.loads(e.value) for e in events if e.label == "trade"]
    assert all(set(t.get("c", [])) <= {14, 41, 12} and t["s"] >= 100 for t in trades)
    seconds = {(t["sym"], t["t"] // 1000) for t in trades}
    aggs = {(a["sym"], a["s"] // 1000) for a in (orjson.loads(e.value) for e in events if e.label == "second_agg")}
    assert aggs == seconds
