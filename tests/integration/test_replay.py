"""Flat-file replay: parsing into live-feed events, and the same bars as the live path."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.testing import run_main
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from connectors.feeds.flat_files import FlatFileError, flat_file, flat_file_events, merged_events
from connectors.feeds.replay import main, replay
from connectors.feeds.synthetic import generate
from connectors.kafka.dead_letter import KIND, REASON, SHA256, SIZE, SOURCE_OFFSET, SOURCE_TOPIC, TRUNCATED
from flows.ohlcv import build_flow
from flows.settings import Settings
from schemas.polygon import MinuteAgg, Quote, Trade, decode_event
from schemas.status import DEAD_LETTER_KINDS
from tests.support.examples import examples
from tests.support.fixtures.flat_files import gz, write_trades_flat_file
from tests.support.services import base_settings, create_topics, publish, read_topic, table_bars

pytestmark = pytest.mark.cost(15)  # a rough serial time in seconds: run early (tests/conftest.py)

TRADES_CSV = """\
ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,sip_timestamp,size,tape,trf_id,trf_timestamp
AAPL,"14,37,41",0,4,52983525029470,1793629800123456789,190.5,2001,1793629800200000000,35,3,202,1793629800190000000
AAPL,,1,12,7,1793629800000000000,190.25,1999,1793629800100000000,100.5,3,,
MSFT,12,0,11,8,1793629801000000000,400,5,1793629801000999999,0.25,1,,
"""
MINUTE_CSV = """\
ticker,volume,open,close,high,low,window_start,transactions
AAPL,4000,190.1,190.4,190.5,190.0,1793629800000000000,31
"""
QUOTES_CSV = """\
ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp
AAPL,12,190.6,300,11,190.5,200,1,"604,605",1793629800000000000,9,1793629800000500000,3,
"""


def test_trades_become_live_feed_events_in_event_time_order(tmp_path: Path) -> None:
    events = flat_file_events(gz(tmp_path / "trades_v1.csv.gz", TRADES_CSV))
    values = events["value"].to_list()
    trades = [decode_event(v.encode()) for v in values]
    assert all(isinstance(t, Trade) for t in trades)
    first, second, third = trades
    assert (first.symbol, first.timestamp, first.sequence, first.size, first.decimal_size) == (
        "AAPL", 1793629800100, 1999, 100, "100.5")  # fmt: skip
    assert first.conditions == [] and first.trf_id is None and "c" not in orjson.loads(values[0])
    assert (second.conditions, second.trade_id, second.trf_id, second.trf_timestamp) == (
        [14, 37, 41],
        "52983525029470",
        202,
        1793629800190,
    )
    assert (third.symbol, third.size, third.decimal_size, third.price, third.conditions) == ("MSFT", 0, "0.25", 400.0, [12])
    assert events["key"].to_list() == ["AAPL", "AAPL", "MSFT"]


def test_minute_aggs_and_quotes_become_am_and_q(tmp_path: Path) -> None:
    (am,) = [decode_event(v.encode()) for v in flat_file_events(gz(tmp_path / "minute_aggs_v1.csv.gz", MINUTE_CSV))["value"]]
    assert isinstance(am, MinuteAgg)
    assert (am.volume, am.open, am.close, am.high, am.low, am.start, am.end) == (
        4000,
        190.1,
        190.4,
        190.5,
        190.0,
        1793629800000,
        1793629860000,
    )
    (q,) = [decode_event(v.encode()) for v in flat_file_events(gz(tmp_path / "quotes_v1.csv.gz", QUOTES_CSV))["value"]]
    assert isinstance(q, Quote)
    assert (q.bid_price, q.ask_size, q.condition, q.indicators, q.timestamp) == (190.5, 300, 1, [604, 605], 1793629800000)


SPLIT_TRADES = {  # two trades files whose events interleave in time, and quotes in between
    "a": "ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,sip_timestamp,size,tape,trf_id,trf_timestamp\n"
    "AAPL,,0,4,1,1793629800000000000,190.0,10,1793629801000000000,100,3,,\n"
    "AAPL,,0,4,2,1793629802000000000,190.1,11,1793629803000000000,100,3,,\n"
    "AAPL,,0,4,3,1793629804000000000,190.2,12,1793629805000000000,100,3,,\n",
    "b": "ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,sip_timestamp,size,tape,trf_id,trf_timestamp\n"
    "MSFT,,0,4,7,1793629801000000000,400.0,5,1793629802000000000,10,3,,\n"
    "MSFT,,0,4,8,1793629803000000000,400.1,6,1793629804000000000,10,3,,\n",
    "quotes": "ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp\n"
    "AAPL,12,190.6,300,11,190.5,200,1,,1793629802000000000,9,1793629802500000000,3,\n",
}  # fmt: skip


def test_several_files_are_merged_by_event_time_not_one_after_another(tmp_path: Path) -> None:
    a = gz(tmp_path / "trades_v1" / "a.csv.gz", SPLIT_TRADES["a"])
    b = gz(tmp_path / "trades_v1" / "b.csv.gz", SPLIT_TRADES["b"])
    quotes = gz(tmp_path / "quotes_v1.csv.gz", SPLIT_TRADES["quotes"])
    events = merged_events([a, b, quotes])
    assert events.select("kind", "key", "t").rows() == [
        ("trades", "AAPL", 1793629801000), ("trades", "MSFT", 1793629802000), ("quotes", "AAPL", 1793629802500),
        ("trades", "AAPL", 1793629803000), ("trades", "MSFT", 1793629804000), ("trades", "AAPL", 1793629805000),
    ]  # fmt: skip
    minute = gz(tmp_path / "minute_aggs_v1.csv.gz", MINUTE_CSV)
    last = merged_events([minute, a]).row(-1, named=True)
    assert (last["kind"], last["t"]) == ("minute_aggs", 1793629860000)  # a minute bar comes once its minute ended


@pytest.mark.integration
def test_replay_of_several_files_publishes_in_event_time_order(services: None, tmp_path: Path) -> None:
    s = base_settings(topic_partitions=1)  # one partition: Kafka's order is the publish order
    create_topics(s)
    a = gz(tmp_path / "trades_v1" / "a.csv.gz", SPLIT_TRADES["a"])
    b = gz(tmp_path / "trades_v1" / "b.csv.gz", SPLIT_TRADES["b"])
    assert replay([a, b], settings=s) == 5
    published = [orjson.loads(m.value()) for m in read_topic(s, s.topic_trades)]
    assert [(e["sym"], e["t"]) for e in published] == [
        ("AAPL", 1793629801000), ("MSFT", 1793629802000), ("AAPL", 1793629803000),
        ("MSFT", 1793629804000), ("AAPL", 1793629805000),
    ]  # fmt: skip


@pytest.mark.integration
def test_replayed_flat_file_gives_the_same_bars_as_the_live_events(settings: Settings, db, tmp_path: Path) -> None:
    live = [e for e in generate(seed=11, count=5000, symbols=30, rate=20, out_of_order_ratio=0, late_ratio=0,
                                duplicate_ratio=0) if e.topic_kind == "trades"]  # fmt: skip
    publish(settings, live)
    run_main(build_flow(settings))
    live_bars = table_bars(db)
    assert live_bars.height > 30

    db.execute("TRUNCATE ohlcv_1min, symbols")
    replayed = base_settings(database_url=settings.database_url)
    create_topics(replayed)
    path = write_trades_flat_file(tmp_path / "trades_v1_2026-11-02.csv.gz", [e.value for e in live])
    assert replay([path], settings=replayed) == len(live)
    run_main(build_flow(replayed))
    assert_frame_equal(table_bars(db), live_bars)


# --- hostile flat files --------------------------------------------------------------------


TRADE_COLUMNS = TRADES_CSV.splitlines()[0].split(",")
GOOD = {"ticker": "AAPL", "conditions": "14,41", "correction": "0", "exchange": "4", "id": "7",
        "participant_timestamp": "1793629800000000000", "price": "190.5", "sequence_number": "9",
        "sip_timestamp": "1793629800200000000", "size": "100", "tape": "3", "trf_id": "", "trf_timestamp": ""}  # fmt: skip
NOW_MS = 1796100000000  # 2026-12-01, the wall clock the checks use in these tests


def csv_of(rows: list[dict[str, Any]], columns: list[str] = TRADE_COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
    return out.getvalue()


BAD_TRADES = [  # (the field changed, its value, what the reason says, the dead-letter kind)
    ("ticker", "", "ticker is missing", "malformed"),
    ("ticker", "A B", "ticker 'A B' is not a symbol", "malformed"),
    ("ticker", "日本", "ticker '日本' is not a symbol", "malformed"),
    ("ticker", "X" * 5000, "is not a symbol", "malformed"),
    ("price", "", "price is missing", "malformed"),
    ("price", "abc", "price 'abc' is not a number", "malformed"),
    ("price", "NaN", "price 'NaN' is not a finite number", "malformed"),
    ("price", "inf", "price 'inf' is not a finite number", "malformed"),
    ("price", "1e400", "price '1e400' is not a finite number", "malformed"),
    ("price", "-1", "price '-1' is not a price", "malformed"),
    ("price", "0", "price '0' is not a price", "malformed"),
    ("price", "1e9", "price '1e9' is not a price", "malformed"),
    ("size", "-5", "size '-5' is not a size", "malformed"),
    ("size", "1e30", "size '1e30' is not a size", "malformed"),
    ("size", "NaN", "size 'NaN' is not a finite number", "malformed"),
    ("exchange", "99999999999999999999", "exchange '99999999999999999999' is not an integer within int64", "malformed"),
    ("exchange", "4.5", "exchange '4.5' is not an integer", "malformed"),
    ("exchange", "", "exchange is missing", "malformed"),
    ("id", "", "id is missing", "malformed"),
    ("sequence_number", "-9223372036854775809", "is not an integer within int64", "malformed"),
    ("sip_timestamp", "0", "sip_timestamp '0' is not a time in 2000-2099", "malformed"),
    ("sip_timestamp", "-1793629800000000000", "is not a time in 2000-2099", "malformed"),
    ("sip_timestamp", "99999999999999999999", "is not an integer within int64", "malformed"),
    ("sip_timestamp", "9223372036854775807", "is not a time in 2000-2099", "malformed"),  # year 2262
    ("sip_timestamp", "4000000000000000000", "is after the wall clock", "future"),  # 2096: in range, not history
    ("sip_timestamp", "1.5e18", "is not an integer within int64", "malformed"),
    ("conditions", "a,b", "conditions 'a,b' are not integer codes", "malformed"),
    ("conditions", "14;41", "are not integer codes", "malformed"),
    ("conditions", "-1", "are not integer codes", "malformed"),
    ("conditions", "1.5", "are not integer codes", "malformed"),
    ("conditions", "9999999999", "are not integer codes", "malformed"),
    ("trf_timestamp", "-5", "trf_timestamp '-5' is not a time in 2000-2099", "malformed"),
]


def test_every_bad_value_is_refused_with_its_reason_and_row_and_the_good_rows_become_events(tmp_path: Path) -> None:
    rows = []
    for n, (field, value, _, _) in enumerate(BAD_TRADES):
        rows.append(GOOD | {"id": f"good{n}"})
        rows.append(GOOD | {"id": f"bad{n}", field: value})
    rows.append(GOOD | {"id": 'quote " backslash \\ newline-free \x01 日本 🚀'})  # any Unicode in an id: escaped
    f = flat_file(gz(tmp_path / "trades_v1.csv.gz", csv_of(rows)), now_ms=NOW_MS)
    events = [orjson.loads(v) for v in f.events["value"]]
    assert sorted(e["i"] for e in events) == sorted([f"good{n}" for n in range(len(BAD_TRADES))] + [rows[-1]["id"]])
    assert all(isinstance(decode_event(v.encode()), Trade) for v in f.events["value"])
    refused = {row: (kind, reason, json.loads(value)) for row, kind, reason, _, value in f.refused.iter_rows()}
    assert len(refused) == len(BAD_TRADES)
    for n, (field, value, says, kind) in enumerate(BAD_TRADES):
        got_kind, reason, original = refused[2 * n + 2]  # the row number in the file (1 = first after the header)
        assert says in reason and got_kind == kind, (field, value, reason)
        assert original["id"] == (f"bad{n}" if field != "id" else None)  # the dead letter holds the row's own fields
        assert original[field] == (value or None)


def test_a_row_with_more_fields_than_the_header_is_refused_and_the_others_kept(tmp_path: Path) -> None:
    text = csv_of([GOOD | {"id": "1"}]) + csv_of([GOOD | {"id": "2"}]).splitlines()[1] + ",extra,fields\n"
    text += csv_of([GOOD | {"id": "3"}]).splitlines()[1] + "\n" + 'AAPL,"14,41\n'  # and an unbalanced quote
    f = flat_file(gz(tmp_path / "trades_v1.csv.gz", text), now_ms=NOW_MS)
    assert [orjson.loads(v)["i"] for v in f.events["value"]] == ["1", "3"]
    reasons = dict(zip(f.refused["row"], f.refused["reason"], strict=True))
    assert reasons[2] == "the row has 15 fields, the header 13"
    assert "is missing" in reasons[4]  # the unbalanced quote swallowed the rest of its line: fields missing


def test_a_file_with_missing_or_extra_columns(tmp_path: Path) -> None:
    optional_gone = [c for c in TRADE_COLUMNS if c not in ("trf_id", "trf_timestamp", "tape", "conditions")]
    f = flat_file(gz(tmp_path / "trades_v1.csv.gz", csv_of([GOOD], [*optional_gone, "surprise"])), now_ms=NOW_MS)
    (event,) = [orjson.loads(v) for v in f.events["value"]]
    assert "z" not in event and "c" not in event and event["sym"] == "AAPL"
    required_gone = [c for c in TRADE_COLUMNS if c != "price"]
    with pytest.raises(FlatFileError, match=r"trades_v1.csv.gz: no column price for trades"):
        flat_file(gz(tmp_path / "trades_v1.csv.gz", csv_of([GOOD], required_gone)), now_ms=NOW_MS)


def test_times_outside_the_files_day_are_refused(tmp_path: Path) -> None:
    rows = [GOOD, GOOD | {"id": "old", "sip_timestamp": "1000000000000000000"}]  # 2001 in a 2026-11-02 file
    f = flat_file(gz(tmp_path / "trades_v1" / "2026-11-02.csv.gz", csv_of(rows)), now_ms=NOW_MS)
    assert f.events.height == 1
    assert "is outside the file's day" in f.refused["reason"][0]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot open it"),
        (b"", "it is empty"),
        (gzip.compress(TRADES_CSV.encode())[:-10], "truncated or corrupt gzip"),
        (gzip.compress(TRADES_CSV.encode())[:40], "truncated or corrupt gzip"),
        (b"\x1f\x8b" + bytes(range(256)) * 4, "truncated or corrupt gzip"),
        (b"\x00\xff\xfe binary junk \x01\x02\n\x03", "no column"),
        (gzip.compress(b""), "it is empty"),
        (gzip.compress(b"just,a,header\n"), "no column ticker"),
    ],
    # ids by position: gzip stamps the time into its bytes, and pytest-xdist's workers must
    # collect the same test names
    ids=["missing", "empty", "gzip-truncated", "gzip-cut-at-40", "gzip-garbage", "binary", "gzip-empty", "header-only"],
)
def test_a_file_that_cannot_be_read_is_a_precise_error_naming_it(tmp_path: Path, content: bytes | None, says: str) -> None:
    path = tmp_path / "trades_v1.csv.gz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FlatFileError, match=re.escape(str(path)) + ".*" + re.escape(says)):
        flat_file(path)


def test_the_command_exits_2_naming_the_file_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "trades_v1.csv.gz"
    path.write_bytes(gzip.compress(TRADES_CSV.encode())[:-10])
    proc = subprocess.run([sys.executable, "-m", "connectors.feeds.replay", str(path)], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert proc.returncode == 2
    assert f"replay: {path}: truncated or corrupt gzip" in proc.stderr and "Traceback" not in proc.stderr
    assert main([str(tmp_path / "trades_v1_nope.csv.gz")]) == 2
    with pytest.raises(SystemExit) as bad_speed:
        main([str(path), "--speed", "nan"])
    assert bad_speed.value.code == 2


# Any text for any field (written as proper CSV), with the hostile values of each kind mixed in.
hostile_number = st.sampled_from(["", "NaN", "inf", "-inf", "1e400", "-0", "0", "-1", "1e30", "99999999999999999999",
                                  "9223372036854775807", "-9223372036854775808", "abc", " 5", "+5", "5.0", "0x10"])  # fmt: skip
field_value = st.one_of(hostile_number, st.text(max_size=12), st.integers().map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr))  # fmt: skip
plausible = {"ticker": st.sampled_from(["AAPL", "BRK.A", "BACpL", "msft", "", "A B", "日本", "X" * 30]),
             "price": st.floats(0.01, 1e5).map(str), "size": st.floats(0, 1e6).map(str),
             "sip_timestamp": st.integers(1793600000000000000, 1793700000000000000).map(str),
             "conditions": st.sampled_from(["", "14,41", "12", "1, 2", "a", "-1", "07"])}  # fmt: skip


@st.composite
def trade_rows(draw: st.DrawFn) -> dict[str, str]:
    row = dict(GOOD)
    for column in TRADE_COLUMNS:
        choice = draw(st.integers(0, 9))
        if choice == 0:
            row[column] = draw(field_value)
        elif choice == 1 and column in plausible:
            row[column] = draw(plausible[column])
    return row


@hypothesis_settings(max_examples=examples(40, deep=150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(trade_rows(), min_size=1, max_size=30))
def test_any_values_either_become_the_event_they_say_or_are_refused_with_a_reason(rows: list[dict[str, str]]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        f = flat_file(gz(Path(tmp) / "trades_v1.csv.gz", csv_of(rows)), now_ms=NOW_MS)
    published = set(f.events["row"].to_list())
    refused = set(f.refused["row"].to_list())
    assert published.isdisjoint(refused) and published | refused == set(range(1, len(rows) + 1))
    assert set(f.refused["kind"]) <= set(DEAD_LETTER_KINDS) and all(f.refused["reason"])
    for row, value in zip(f.events["row"], f.events["value"], strict=True):
        trade = decode_event(value.encode())  # the feed's own schema accepts it
        assert isinstance(trade, Trade)
        source = rows[row - 1]
        assert trade.symbol == source["ticker"] and trade.trade_id == source["id"]
        assert trade.price == float(source["price"]) and math.isfinite(trade.price)
        assert trade.size == math.floor(float(source["size"]))
        assert trade.timestamp == int(source["sip_timestamp"]) // 1_000_000 > 0
        assert trade.exchange == int(source["exchange"])
        codes = source["conditions"].replace(" ", "")
        assert trade.conditions == ([int(c) for c in codes.split(",")] if codes else [])


@hypothesis_settings(max_examples=examples(100, deep=300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_are_either_read_or_a_flat_file_error(content: bytes, compress: bool) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trades_v1.csv.gz"
        path.write_bytes(gzip.compress(TRADES_CSV.encode()[:60] + content) if compress else content)
        try:
            f = flat_file(path, now_ms=NOW_MS)
        except FlatFileError as exc:
            assert str(path) in str(exc)
            return
    assert all(isinstance(decode_event(v.encode()), Trade) for v in f.events["value"])


@pytest.mark.integration
def test_replay_dead_letters_bad_rows_with_file_and_row_and_publishes_the_good_ones_once(services: None, tmp_path: Path) -> None:
    s = base_settings(topic_partitions=1)
    create_topics(s)
    rows = [GOOD | {"id": "g1"}, GOOD | {"id": "b1", "price": "NaN"}, GOOD | {"id": "g2", "sip_timestamp": "1793629800300000000"},
            GOOD | {"id": "x" * 2_000_000, "sip_timestamp": "1793629800400000000"},  # a 2 MB row: its dead letter is cut
            GOOD | {"id": "b2", "ticker": "A/B"}]  # fmt: skip
    path = gz(tmp_path / "trades_v1" / "2026-11-02.csv.gz", csv_of(rows))
    report: dict[str, object] = {}
    assert replay([path], settings=s, report=report) == 2
    assert [orjson.loads(m.value())["i"] for m in read_topic(s, s.topic_trades)] == ["g1", "g2"]
    dead = {int(dict(m.headers())[SOURCE_OFFSET] or 0): (m, dict(m.headers())) for m in read_topic(s, s.topic_dead_letter)}
    assert set(dead) == {2, 4, 5} and report["dead_letters"] == {"malformed": 3}
    for row in (2, 4, 5):
        assert dead[row][1][SOURCE_TOPIC] == str(path).encode()
    assert b"price 'NaN' is not a finite number" in dead[2][1][REASON] and json.loads(dead[2][0].value())["id"] == "b1"
    assert b"ticker 'A/B' is not a symbol" in dead[5][1][REASON] and dead[5][0].key() is None
    big, headers = dead[4]
    assert headers[KIND] == b"malformed" and headers[TRUNCATED] == b"true" and b"longer than 64 characters" in headers[REASON]
    assert int(headers[SIZE]) > 2_000_000 and len(big.value()) == 512 * 1024 and len(headers[SHA256]) == 64
    assert big.key() == b"AAPL"
