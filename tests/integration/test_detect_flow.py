"""Detection inside the real flow: Kafka in, tables and catalog channels out, warm starts from PostgreSQL."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import talib
from bytewax.testing import run_main

from connectors.feeds.synthetic import DEFAULT_START_MS, generate
from connectors.postgres.bars import BarStore
from flows import detection as detection_flow
from flows import ohlcv
from flows.detect.settings import DetectionSettings
from schemas.bars import Bar
from schemas.channels import CATALOG, DETECTED_MIN_CONFIDENCE, Channels
from schemas.export import OUT
from schemas.prices import Price
from schemas.status import FlowError, FlowHealth
from schemas.watchlists import WatchlistChange
from tests.support.services import TEST_DATABASE_URL, publish

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MINUTE = 60_000
DAY = 86_400_000
SCHEMAS = {kind: json.loads((OUT / f"{kind}.schema.json").read_text())
           for kind in ("highlow", "trend", "surge", "pattern", "indicator", "alert")}  # fmt: skip


def feed(**kw):
    options = {"seed": 17, "symbols": 30, "rate": 60.0, "seconds": 40 * 60, "duplicate_ratio": 0.01, "out_of_order_ratio": 0.02,
                   "late_ratio": 0.01, "too_late_ratio": 0.002, "malformed_ratio": 0.003}  # fmt: skip
    options.update(kw)
    return list(generate(**options))


def run_both(settings, detection: DetectionSettings | None = None) -> None:
    """The bar flow to the end of its input, then the detection flow over the bars it published."""
    d = detection or DetectionSettings()
    run_main(ohlcv.build_flow(settings, d))
    run_main(detection_flow.build_flow(settings, d))


def test_events_land_in_their_tables_and_on_their_catalog_channels(settings, db, recorder):
    publish(settings, feed())
    ns = settings.redis_namespace
    dotted, colon = recorder(settings.redis_url, f"{ns}.*"), recorder(settings.redis_url, f"{ns}:*")
    run_both(settings, DetectionSettings(alerts={"critical": ("bollinger_above", "bollinger_below")}))
    time.sleep(0.5)
    messages = dotted.stop() + colon.stop()

    kinds = dict(db.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
    assert {"highlow", "pattern", "trend", "surge"} <= set(kinds), kinds
    indicator_rows = db.execute(
        "SELECT count(*), count(rsi), count(macd) FROM indicator_values WHERE timeframe = '1m'"
    ).fetchone()
    priced_bars = db.execute("SELECT count(*) FROM ohlcv_1min WHERE close IS NOT NULL").fetchone()[0]
    assert indicator_rows[0] == priced_bars and indicator_rows[1] > 0 and indicator_rows[2] > 0
    assert db.execute("SELECT count(*) FROM alerts").fetchone()[0] > 0

    channels = Channels(ns)
    by_channel: dict[str, list[dict]] = {}
    for channel, data in messages:
        by_channel.setdefault(channel, []).append(json.loads(data))
    for spec in CATALOG:
        if spec.per_symbol or spec.payload in (Bar, FlowHealth, FlowError, Price, WatchlistChange):
            continue  # bars, prices, the flow's status and the gateway's watchlist notices are not detection's
        payloads = by_channel.get(spec.name(channels), [])
        assert payloads, f"nothing on {spec.name(channels)}"
        for p in payloads[:200]:
            jsonschema.validate({k: v for k, v in p.items() if k not in ("offset", "epoch")}, SCHEMAS[p["kind"]])
        assert [p["offset"] for p in payloads] == list(range(payloads[0]["offset"], payloads[0]["offset"] + len(payloads)))

    # (and every amendment or retraction of a pattern, whatever its confidence)
    assert all(p["confidence"] >= DETECTED_MIN_CONFIDENCE or p["status"] != "detected"
               for p in by_channel[channels.patterns_detected])  # fmt: skip
    assert len(by_channel[channels.patterns_detected]) < len(by_channel[channels.patterns_streaming])
    assert all(p["type"] == "volume_surge" for p in by_channel[channels.volume])
    critical = by_channel[channels.alerts_critical]
    assert all(p["severity"] == "critical" and p["type"].startswith("bollinger") for p in critical)
    assert {p["id"] for p in critical} == {p["id"] for p in by_channel[channels.alerts] if p["severity"] == "critical"}
    # every event in the table was published, under its own id (a re-emission may repeat an id)
    published = {p["id"] for ch in (channels.highlow, channels.trend, channels.surge, channels.patterns_streaming)
                 for p in by_channel.get(ch, [])}  # fmt: skip
    stored = {row[0] for row in db.execute("SELECT id FROM events").fetchall()}
    assert published == stored
    per_symbol = [(ch, p) for ch, ps in by_channel.items() if ch.startswith(channels.events + ".") for p in ps]
    assert per_symbol and all(ch.endswith("." + p["symbol"]) for ch, p in per_symbol)
    assert {p["kind"] for _, p in per_symbol} >= {"highlow", "pattern"}
    assert "indicator" not in {p["kind"] for _, p in per_symbol}


def test_feeding_the_same_ticks_again_gives_the_same_rows(settings, db):
    publish(settings, feed(seed=4, seconds=25 * 60))
    run_both(settings)
    tables = ("events", "indicator_values", "alerts")

    def contents() -> dict[str, list]:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall() for t in tables}

    def versions() -> dict[str, str]:  # xmin: the transaction that last wrote each row
        return {t: db.execute(f"SELECT string_agg(xmin::text, ',' ORDER BY 1, 2, 3) FROM {t}").fetchone()[0]
                for t in ("events", "alerts")}  # fmt: skip

    first, written = contents(), versions()
    assert all(first.values())
    run_both(settings)
    assert contents() == first, "same ids, same values"
    # Events and alerts are decided once and never rewritten. Indicator rows may be: a late
    # minute recomputes later bars, and a replay repeats those intermediate values on the way.
    assert versions() == written


def history_bars(symbol: str, end_ms: int, n: int, base: float) -> list[Bar]:
    rng = np.random.default_rng(abs(hash(symbol)) % 2**32)
    closes = base + np.cumsum(rng.normal(0, base * 0.001, n))
    return [
        Bar(symbol=symbol, timestamp=end_ms - (n - i) * MINUTE, open=float(c), high=float(c) * 1.001, low=float(c) * 0.999,
            close=float(c), volume=500, vwap=float(c), trades=5, revision=0, status="final")
        for i, c in enumerate(closes)
    ]  # fmt: skip


def test_indicators_are_valid_from_the_first_bar_when_history_is_in_the_database(settings, db):
    events = feed(seed=9, symbols=5, rate=20.0, seconds=5 * 60, duplicate_ratio=0, out_of_order_ratio=0, late_ratio=0,
                  too_late_ratio=0, malformed_ratio=0)  # fmt: skip
    symbols = sorted({e.key.decode() for e in events if e.topic_kind == "trades"})
    store = BarStore(TEST_DATABASE_URL)
    for s in symbols:
        store.upsert(history_bars(s, DEFAULT_START_MS - 30 * MINUTE, 200, base=50.0))  # before the lateness reach
    store.close()
    publish(settings, events)
    run_both(settings)

    for symbol in symbols:
        bars = db.execute("SELECT close::float8, high::float8, low::float8, timestamp FROM ohlcv_1min "
                          "WHERE symbol = %s AND close IS NOT NULL ORDER BY timestamp", (symbol,)).fetchall()  # fmt: skip
        values = db.execute("SELECT timestamp, rsi, macd, atr FROM indicator_values WHERE symbol = %s AND timeframe = '1m' "
                            "ORDER BY timestamp", (symbol,)).fetchall()  # fmt: skip
        first_new = next(i for i, b in enumerate(bars) if b[3].timestamp() * 1000 >= DEFAULT_START_MS)
        close = np.array([b[0] for b in bars])
        high, low = np.array([b[1] for b in bars]), np.array([b[2] for b in bars])
        assert len(values) == len(bars) - first_new, "only the flow's own bars get indicator rows"
        ts, rsi, macd, atr = values[0]
        assert ts == bars[first_new][3] and None not in (rsi, macd, atr), "valid from the first bar"
        assert rsi == pytest.approx(talib.RSI(close, 14)[first_new], abs=1e-9)
        assert atr == pytest.approx(talib.ATR(high, low, close, 14)[first_new], abs=1e-9)


def test_n_day_highs_fire_against_the_previous_sessions_in_the_database(services, db):
    from tests.support.services import base_settings, create_topics

    s = base_settings()
    create_topics(s)
    events = feed(seed=2, symbols=4, rate=20.0, seconds=10 * 60, duplicate_ratio=0, out_of_order_ratio=0,
                  late_ratio=0, too_late_ratio=0, malformed_ratio=0)  # fmt: skip
    symbols = sorted({e.key.decode() for e in events if e.topic_kind == "trades"})
    first_price = {}
    for e in events:
        if e.topic_kind == "trades" and e.key.decode() not in first_price:
            first_price[e.key.decode()] = json.loads(e.value)["p"]
    store = BarStore(TEST_DATABASE_URL)
    for symbol in symbols:  # three earlier sessions whose highs sit just above the day's first trade
        for day in (1, 2, 4):  # Fri, Thu, Tue before Mon 2026-11-02 (the weekend has no session)
            bars = history_bars(symbol, DEFAULT_START_MS - day * DAY, 30, base=first_price[symbol])
            store.upsert([b.__replace__(high=first_price[symbol] * 1.002, low=first_price[symbol] * 0.998) for b in bars])
    store.close()
    publish(s, events)
    run_main(ohlcv.build_flow(s, DetectionSettings(highlow={"n_days": 3})))

    rows = db.execute("SELECT symbol, type, price, detail->>'previous' FROM events WHERE type LIKE 'n_day_%%'").fetchall()
    assert rows, "the day's trades leave the previous sessions' range"
    counts = Counter((symbol, kind) for symbol, kind, _, _ in rows)
    assert max(counts.values()) == 1, "once per session and side"
    for symbol, kind, price, previous in rows:
        bound = first_price[symbol] * (1.002 if kind == "n_day_high" else 0.998)
        assert float(previous) == pytest.approx(bound)
        assert (price > bound) if kind == "n_day_high" else (price < bound)


def test_a_bad_detection_setting_stops_the_flow_at_start_with_the_variable_named(settings):
    env = os.environ | settings.as_env() | {"DETECT_SURGE__VOLUME_MULTIPLE": "0.5"}
    for flow in ("flows.ohlcv:build_flow()", "flows.detection:build_flow()"):
        result = subprocess.run([sys.executable, "-m", "bytewax.run", flow], env=env, cwd=ROOT, capture_output=True,
                                timeout=60)  # fmt: skip
        assert result.returncode != 0
        assert b"DETECT_SURGE__VOLUME_MULTIPLE" in result.stderr and b"greater than 1" in result.stderr


# ---- timeframes and decisions made again -------------------------------------------------------

FIVE = 300_000


def five_minute(symbol: str, i: int, close: float, volume: int = 1000, revision: int = 0) -> Bar:
    return Bar(symbol=symbol, timeframe="5m", timestamp=DEFAULT_START_MS + i * FIVE, open=close - 0.01,
               high=close + 0.05, low=close - 0.06, close=close, volume=volume, vwap=close, trades=5,
               revision=revision, status="final")  # fmt: skip


def produce_bars(s, bars: list[Bar]) -> None:
    from connectors.kafka import clients
    from schemas.bars import encode_bar

    producer = clients.producer(s)
    for b in bars:
        producer.produce(s.topic_bars, encode_bar(b), b.symbol.encode())
    assert producer.flush(30) == 0


def surge_rows(db) -> list[tuple]:
    return db.execute("SELECT type, (extract(epoch FROM timestamp) * 1000)::bigint, status, revision, timeframe, id "
                      "FROM events WHERE kind = 'surge' ORDER BY 2, 1").fetchall()  # fmt: skip


def test_five_minute_bars_give_five_minute_rows_warm_from_the_view_and_revisions_amend_them(settings, db, recorder,
                                                                                          tmp_path):  # fmt: skip
    """5m bars on the bars topic (and 1m ones, not detected here): 5m indicator rows valid from the first
    bar, warm-started from `ohlcv_5min`; a revision retracts one surge and amends another, in the table
    and on Redis; the same rows when the flow restarts from its recovery store between the bars and
    the revisions."""
    from bytewax.recovery import RecoveryConfig, init_db_dir

    symbol = "FIVE"
    # 1,000 minutes of history ending well before the flow's first bar (its reach: the lateness and a minute)
    history_end = DEFAULT_START_MS - 30 * MINUTE
    store = BarStore(TEST_DATABASE_URL)
    store.upsert([b.__replace__(volume=200) for b in history_bars(symbol, history_end, 1000, base=100.0)])
    store.close()
    calm = [five_minute(symbol, i, 100 + 0.01 * math.sin(i)) for i in range(60)]
    calm[40] = calm[40].__replace__(volume=10_000)  # a volume surge ...
    calm[45] = five_minute(symbol, 45, 102.0)  # ... and a price surge
    minutes = [Bar(symbol=symbol, timestamp=DEFAULT_START_MS + i * MINUTE, open=1.0, high=1.0, low=1.0, close=1.0,
                   volume=1, vwap=1.0, trades=1, revision=0, status="final") for i in range(30)]  # fmt: skip
    revisions = [calm[40].__replace__(volume=1_200, revision=1), calm[45].__replace__(close=101.5, low=101.44, revision=1)]
    only_5m = DetectionSettings(timeframes=("5m",))
    produce_bars(settings, minutes + calm + revisions)
    heard = recorder(settings.redis_url, f"{settings.redis_namespace}.events.surge")
    run_main(detection_flow.build_flow(settings, only_5m))
    time.sleep(0.3)

    assert db.execute("SELECT DISTINCT timeframe FROM indicator_values").fetchall() == [("5m",)]
    assert db.execute("SELECT count(*) FROM indicator_values").fetchone() == (60,)
    assert db.execute("SELECT DISTINCT timeframe FROM events").fetchall() == [("5m",)]
    view = db.execute("SELECT close::float8, high::float8, low::float8 FROM ohlcv_5min WHERE symbol = %s ORDER BY timestamp",
                      (symbol,)).fetchall()  # fmt: skip
    close = np.array([r[0] for r in view] + [b.close for b in calm[:1]])
    high, low = np.array([r[1] for r in view] + [calm[0].high]), np.array([r[2] for r in view] + [calm[0].low])
    first = db.execute("SELECT rsi, atr FROM indicator_values ORDER BY timestamp LIMIT 1").fetchone()
    assert first[0] == pytest.approx(talib.RSI(close, 14)[-1], abs=1e-9), "warm from the 5-minute view"
    assert first[1] == pytest.approx(talib.ATR(high, low, close, 14)[-1], abs=1e-9)

    surges = {(kind, t): (status, revision, tf, i) for kind, t, status, revision, tf, i in surge_rows(db)}
    volume = surges[("volume_surge", calm[40].timestamp)]
    price = surges[("price_surge", calm[45].timestamp)]
    assert volume[:3] == ("retracted", 1, "5m") and price[:3] == ("amended", 1, "5m")
    said: dict[str, list] = {}
    for _, data in heard.stop():
        p = json.loads(data)
        said.setdefault(p["id"], []).append((p["status"], p["revision"]))
    assert said[volume[3]] == [("detected", 0), ("retracted", 1)] and said[price[3]] == [("detected", 0), ("amended", 1)]
    uninterrupted = {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall() for t in ("events", "indicator_values")}

    db.execute("TRUNCATE events, indicator_values, alerts")
    again = settings.model_copy(update={"topic_bars": settings.topic_bars + ".again"})
    from tests.support.services import create_topics

    create_topics(again)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    produce_bars(again, minutes + calm)
    run_main(detection_flow.build_flow(again, only_5m), recovery_config=RecoveryConfig(str(recovery)))
    produce_bars(again, revisions)
    heard = recorder(settings.redis_url, f"{settings.redis_namespace}.events.surge")
    run_main(detection_flow.build_flow(again, only_5m), recovery_config=RecoveryConfig(str(recovery)))
    time.sleep(0.3)
    after = {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3").fetchall() for t in uninterrupted}
    assert after == uninterrupted, "the decisions on the bars before the restart were made again after it"
    resumed = [(p["id"], p["status"], p["revision"]) for p in (json.loads(data) for _, data in heard.stop())]
    assert (volume[3], "retracted", 1) in resumed and (price[3], "amended", 1) in resumed
    assert all(status != "detected" or revision > 0 for _, status, revision in resumed), "resumed, not replayed"
