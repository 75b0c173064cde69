"""Flat-file replay: parsing into live-feed events, and the same bars as the live path."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import polars as pl
import pytest
from bytewax.testing import run_main
from polars.testing import assert_frame_equal

from connectors.replay import flat_file_events, merged_events, replay
from connectors.synthetic import generate
from flows.ohlcv import build_flow
from flows.settings import Settings
from schemas.polygon import MinuteAgg, Quote, Trade, decode_event
from tests.conftest import base_settings, create_topics, publish, read_topic, table_bars

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


def gz(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))
    return path


def test_trades_become_live_feed_events_in_event_time_order(tmp_path: Path) -> None:
    events = flat_file_events(gz(tmp_path / "trades_v1.csv.gz", TRADES_CSV))
    values = events["value"].to_list()
    trades = [decode_event(v.encode()) for v in values]
    assert all(isinstance(t, Trade) for t in trades)
    first, second, third = trades
    assert (first.symbol, first.timestamp, first.sequence, first.size, first.decimal_size) == (
        "AAPL", 1793629800100, 1999, 100, "100.5")  # fmt: skip
    assert first.conditions == [] and first.trf_id is None and "c" not in orjson.loads(values[0])
    assert (second.conditions, second.trade_id, second.trf_id, second.trf_timestamp) == ([14, 37, 41], "52983525029470", 202, 1793629800190)
    assert (third.symbol, third.size, third.decimal_size, third.price, third.conditions) == ("MSFT", 0, "0.25", 400.0, [12])
    assert events["key"].to_list() == ["AAPL", "AAPL", "MSFT"]


def test_minute_aggs_and_quotes_become_am_and_q(tmp_path: Path) -> None:
    (am,) = [decode_event(v.encode()) for v in flat_file_events(gz(tmp_path / "minute_aggs_v1.csv.gz", MINUTE_CSV))["value"]]
    assert isinstance(am, MinuteAgg)
    assert (am.volume, am.open, am.close, am.high, am.low, am.start, am.end) == (4000, 190.1, 190.4, 190.5, 190.0, 1793629800000, 1793629860000)
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


def write_trades_flat_file(path: Path, values: list[bytes]) -> Path:
    """Live-feed trades as a Polygon trades_v1 file (ns timestamps, quoted conditions)."""
    rows = [orjson.loads(v) for v in values]
    df = pl.DataFrame(
        {
            "ticker": [r["sym"] for r in rows],
            "conditions": [",".join(map(str, r.get("c", []))) or None for r in rows],
            "correction": [0] * len(rows),
            "exchange": [r["x"] for r in rows],
            "id": [r["i"] for r in rows],
            "participant_timestamp": [r["t"] * 1_000_000 - 5_000 for r in rows],
            "price": [r["p"] for r in rows],
            "sequence_number": [r["q"] for r in rows],
            "sip_timestamp": [r["t"] * 1_000_000 + 123 for r in rows],
            "size": [float(r["s"]) for r in rows],
            "tape": [r["z"] for r in rows],
            "trf_id": [r.get("trfi") for r in rows],
            "trf_timestamp": [r["trft"] * 1_000_000 if "trft" in r else None for r in rows],
        }
    )
    csv = df.write_csv()
    assert '"14,41"' in csv or '"14,37"' in csv  # multi-value conditions are quoted, as in Polygon's files
    return gz(path, csv)


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
