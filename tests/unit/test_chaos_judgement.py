"""The chaos harness's own judgement, without services: what counts as lost, doubled, refused right, crashed."""

from __future__ import annotations

import random

import orjson

from bench.chaos import compare
from bench.chaos.live import FinalBarRecorder, Record, crash_reason, with_port
from bench.chaos.mutate import Mutator, dumps

BAR = {"open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 300, "vwap": 10.2, "trades": 3}


def test_a_missing_or_wrong_bar_is_lost_a_higher_count_is_duplicated_an_extra_one_unexpected() -> None:
    expected = {("A", 0): BAR, ("B", 0): BAR, ("C", 0): BAR, ("D", 0): BAR}
    written = {
        ("A", 0): BAR | {"revision": 2},  # same values: fine whatever its revision
        ("B", 0): BAR | {"close": 10.4},  # wrong: lost
        ("C", 0): BAR | {"volume": 400, "trades": 4},  # a trade counted twice
        ("E", 0): BAR,  # no such bar in the input
    }  # ("D", 0) missing: lost
    report = compare.compare_bars(expected, written)
    assert (report["bars_lost"], report["bars_duplicated"], report["bars_unexpected"]) == (2, 1, 1)
    assert report["bars_expected"] == 4 and report["bars_written"] == 4
    assert not compare.caught_up(expected, written)
    assert compare.caught_up({("A", 0): BAR}, {("A", 0): BAR | {"trades": 5}}), "a later revision is further along"


def test_numeric_round_trips_are_not_differences() -> None:
    assert compare.same_bar(BAR | {"vwap": 10.123456789012}, BAR | {"vwap": 10.1234567890121})
    assert not compare.same_bar(BAR | {"open": None}, BAR)


def test_redis_must_hold_the_tables_newest_revision() -> None:
    table = {("A", 0): BAR | {"revision": 1}, ("B", 0): BAR | {"revision": 0}}
    redis_side = {("A", 0): BAR | {"revision": 0}, ("C", 0): BAR | {"revision": 0}}
    report = compare.compare_redis(redis_side, table)
    assert (report["redis_missing"], report["redis_stale"], report["redis_extra"]) == (1, 1, 1)


def _record(label: str, offset: int, expect: tuple[str, ...] | None = None, any_outcome: bool = False) -> Record:
    return Record("t", b"K", b"{}", label, 0, expect=expect, any_outcome=any_outcome, partition=0, offset=offset)


def test_every_bad_record_needs_its_dead_letter_and_a_good_one_none() -> None:
    records = [
        _record("trade", 0),  # good, dead-lettered: wrong
        _record("trade", 1),
        _record("malformed", 2, ("malformed",)),  # right
        _record("poison:trade_in_2099", 3, ("future",)),  # wrong kind
        _record("poison:tombstone", 4, ("malformed",)),  # none at all
        _record("poison:bar_extreme_values", 5, None, any_outcome=True),  # anything goes but a crash
    ]
    letters = [({"dlq.kind": "too_late", "dlq.topic": "t", "dlq.partition": "0", "dlq.offset": "0"}, b""),
               ({"dlq.kind": "malformed", "dlq.topic": "t", "dlq.partition": "0", "dlq.offset": "2"}, b""),
               ({"dlq.kind": "malformed", "dlq.topic": "t", "dlq.partition": "0", "dlq.offset": "2"}, b""),  # repeated
               ({"dlq.kind": "too_late", "dlq.topic": "t", "dlq.partition": "0", "dlq.offset": "3"}, b""),
               ({"dlq.kind": "malformed", "dlq.topic": "t", "dlq.partition": "0", "dlq.offset": "5"}, b"")]  # fmt: skip
    report = compare.check_dead_letters(records, letters)
    assert report["dead_letters"] == {"too_late": 2, "malformed": 2}
    assert report["dead_letters_expected"] == {"malformed": 2, "future": 1}
    assert report["dead_letter_repeats"] == 1
    assert report["good_records_dead_lettered"] == {"too_late": 1}
    problems = report["dead_letter_problems"]
    assert "poison:trade_in_2099: dead-lettered as too_late, expected future" in problems
    assert "poison:tombstone: no dead letter (expected malformed)" in problems
    assert "1 good records dead-lettered as too_late" in problems
    assert len(problems) == 3
    assert report["poison_outcomes"] == {"trade_in_2099": "too_late", "tombstone": "none", "bar_extreme_values": "malformed"}


def test_the_recorder_keeps_the_newest_revision_whatever_the_arrival_order() -> None:
    recorder = FinalBarRecorder("redis://127.0.0.1:1/0", "x")
    for offset, revision in ((1, 0), (3, 2), (2, 1), (4, 2)):  # a restart may publish revision 2 again
        recorder._add(orjson.dumps({"offset": offset, "epoch": "e", "symbol": "A", "timestamp": 0, "revision": revision,
                                    "close": float(offset)}))  # fmt: skip
    newest = recorder.newest()
    assert newest[("A", 0)]["revision"] == 2 and newest[("A", 0)]["close"] == 4.0
    recorder._add(orjson.dumps({"offset": 4, "epoch": "e", "symbol": "A", "timestamp": 0, "revision": 2, "close": 4.0}))
    assert len(recorder.messages) == 4, "a message caught up from the history and also received live counts once"


def test_crash_reason_names_the_root_cause_not_the_wrapper() -> None:
    log = ("INFO health ...\nTraceback (most recent call last):\n  File \"/w/flows/detection.py\", line 46, in _bars_of\n"
           "    bar = decode(raw)\nTypeError: a bytes-like object is required, not 'NoneType'\n\nThe above exception was "
           "the direct cause of the following exception:\n\nbytewax.errors.BytewaxRuntimeError: error calling `mapper`\n")  # fmt: skip
    assert crash_reason(log) == "TypeError: a bytes-like object is required, not 'NoneType' (flows/detection.py:46 in _bars_of)"
    assert crash_reason("just a line\n") == "just a line"


def test_proxied_urls_keep_user_and_database() -> None:
    assert (
        with_port("postgresql://postgres@127.0.0.1:5432/tickstock_chaos", 6000)
        == "postgresql://postgres@127.0.0.1:6000/tickstock_chaos"
    )
    assert with_port("redis://127.0.0.1:6379/0", 6001) == "redis://127.0.0.1:6001/0"


def test_mutations_are_deterministic_and_reach_every_class() -> None:
    seed = b'{"ev":"T","sym":"AAPL","x":4,"i":"1","z":3,"p":190.5,"s":100,"t":1796117645000,"q":1}'

    def run() -> list[bytes | None]:
        m = Mutator(random.Random(42), [seed], huge_ratio=0.02)
        return [m.mutate(seed) for _ in range(20_000)]

    first = run()
    assert first == run()
    texts = [r for r in first if r is not None]
    assert None in first and b"" in first
    assert any(b"NaN" in r for r in texts) and any(b"1e999" in r for r in texts)
    assert any(b"18446744073709551616" in r for r in texts), "2**64"
    assert any(b"[[[[[[[[[[[[[[[[[[[[" in r for r in texts), "deep nesting"
    assert any(len(r) > 1_000_000 for r in texts), "~1 MB records"
    assert any(b"\\ud800" in r for r in texts), "lone surrogates"
    invalid = 0
    for r in texts:
        try:
            r.decode("utf-8")
        except UnicodeDecodeError:
            invalid += 1
    assert invalid > 100, "invalid UTF-8"
    assert sum(r == seed for r in texts) < 200, "almost every record is changed"


def test_dumps_writes_what_json_encoders_refuse() -> None:
    assert dumps({"a": float("nan"), "b": float("-inf"), "c": 10**30, "d": "\ud800"}) == \
        b'{"a":NaN,"b":-Infinity,"c":1000000000000000000000000000000,"d":"\\ud800"}'  # fmt: skip
    assert dumps("\ud800", ascii_only=False) == b'"\xed\xa0\x80"'


def test_docstring_examples_of_the_harness() -> None:
    import doctest
    import importlib

    for module in ("bench.chaos.mutate", "bench.chaos.live"):
        result = doctest.testmod(importlib.import_module(module))
        assert result.attempted > 0 and result.failed == 0, module
