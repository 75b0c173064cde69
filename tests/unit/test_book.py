"""The bar book, driven directly with wire bytes: no Kafka, no database."""

from __future__ import annotations

import random

import orjson
import pytest

from flows.bars import MINUTE_MS
from flows.book import BarBook
from schemas.bars import Bar
from schemas.conditions import ConditionRules

T0 = 1_762_094_400_000  # 2025-11-02 14:40:00 UTC, a minute boundary
RULES = ConditionRules.load()


def trade(sym: str, t: int, p: float, s: int = 100, *, i: str | None = None, x: int = 4, c=None, q: int = 0, trfi=None) -> bytes:
    event = {"ev": "T", "sym": sym, "x": x, "i": i or f"{sym}-{t}-{p}-{q}", "z": 3, "p": p, "s": s, "t": t, "q": q}
    if c is not None:
        event["c"] = c
    if trfi is not None:
        event["trfi"] = trfi
    return orjson.dumps(event)


def book(**kw) -> BarBook:
    return BarBook(RULES, close_delay_ms=kw.pop("close_delay_ms", 2_000), lateness_ms=kw.pop("lateness_ms", 900_000), **kw)


def test_bar_is_final_only_after_minute_end_plus_delay():
    b = book()
    finals, _ = b.apply([trade("AAPL", T0 + 1_000, 10.0), trade("AAPL", T0 + MINUTE_MS + 1_999, 11.0)])
    assert finals == []
    finals, _ = b.apply([trade("MSFT", T0 + MINUTE_MS + 2_000, 50.0)])
    assert [(f.symbol, f.timestamp, f.close, f.status, f.revision) for f in finals] == [("AAPL", T0, 10.0, "final", 0)]


@pytest.mark.parametrize(
    ("conditions", "expect"),
    [
        # (open, high, low, close, volume, trades) of a bar with a regular 10.00 x100 trade first,
        # then the conditioned trade at 12.00 x50 and a regular 11.00 x100 last.
        (None, (10.0, 12.0, 10.0, 11.0, 250, 3)),
        ([37], (10.0, 11.0, 10.0, 11.0, 250, 3)),  # odd lot: volume only
        ([2], (10.0, 11.0, 10.0, 11.0, 250, 3)),  # average price: volume only
        ([10], (10.0, 12.0, 10.0, 11.0, 250, 3)),  # derivatively priced: high/low, not open/close
        ([15], (10.0, 11.0, 10.0, 11.0, 200, 2)),  # official close: nothing
        ([12], (10.0, 12.0, 10.0, 11.0, 250, 3)),  # Form T: full update for intraday bars
        ([14, 37], (10.0, 11.0, 10.0, 11.0, 250, 3)),  # every condition must allow the field
        ([14, 41], (10.0, 12.0, 10.0, 11.0, 250, 3)),
    ],
)
def test_condition_rules_decide_which_fields_a_trade_updates(conditions, expect):
    b = book()
    b.apply([trade("A", T0 + 1, 10.0, q=1), trade("A", T0 + 2, 12.0, 50, c=conditions, q=2), trade("A", T0 + 3, 11.0, q=3)])
    (bar,) = b.close_all()
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades) == expect


def test_volume_only_minute_has_no_prices():
    b = book()
    b.apply([trade("A", T0 + 1, 10.0, 10, c=[37]), trade("A", T0 + 2, 10.5, 20, c=[37])])
    (bar,) = b.close_all()
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == (None, None, None, None, 30)
    assert bar.vwap == pytest.approx((10.0 * 10 + 10.5 * 20) / 30)


def test_out_of_order_trades_set_open_and_close_by_event_time_then_sequence():
    b = book()
    b.apply(
        [
            trade("A", T0 + 500, 11.0, q=5),
            trade("A", T0 + 100, 9.0, q=2),
            trade("A", T0 + 100, 9.5, q=1),
            trade("A", T0 + 500, 12.0, q=4),
        ]
    )
    (bar,) = b.close_all()
    assert (bar.open, bar.close, bar.high, bar.low) == (9.5, 11.0, 12.0, 9.0)


def test_duplicates_count_once_by_symbol_exchange_id_and_trf():
    b = book()
    first = trade("A", T0 + 1, 10.0, i="7", x=4, trfi=201)
    same_id_other_trf = trade("A", T0 + 1, 10.0, i="7", x=4, trfi=202)
    same_id_other_exchange = trade("A", T0 + 1, 10.0, i="7", x=11)
    b.apply([first, first, same_id_other_trf, same_id_other_exchange, first])
    (bar,) = b.close_all()
    assert bar.volume == 300 and bar.trades == 3
    assert b.counts.duplicates == 2


def test_late_trade_within_lateness_revises_final_bar():
    b = book()
    finals, _ = b.apply([trade("A", T0 + 1, 10.0), trade("B", T0 + MINUTE_MS + 2_000, 5.0)])
    assert [f.revision for f in finals] == [0]
    finals, rejects = b.apply([trade("A", T0 + 30_000, 13.0), trade("A", T0 + 40_000, 8.0)])
    assert rejects == []
    assert [(f.symbol, f.revision, f.high, f.low, f.volume) for f in finals] == [
        ("A", 1, 13.0, 10.0, 200),  # one revision per late trade, in the order they came
        ("A", 2, 13.0, 8.0, 300),
    ]


def test_trade_beyond_lateness_is_rejected_with_reason():
    b = book(lateness_ms=60_000)
    b.apply([trade("A", T0 + 1, 10.0)])
    b.apply([trade("B", T0 + 3 * MINUTE_MS, 5.0)])  # watermark 2 minutes past A's minute end... plus
    finals, rejects = b.apply([trade("A", T0 + 2, 99.0), trade("C", T0 + 3 * MINUTE_MS, 1.0)])
    assert [(r.index, r.kind) for r in rejects] == [(0, "too_late")]
    assert "allowed lateness" in rejects[0].reason
    assert b.counts.too_late == 1
    assert not any(f.high == 99.0 for f in finals)


def test_malformed_and_unknown_condition_are_rejected_and_good_data_still_counts():
    b = book()
    batch = [
        trade("A", T0 + 1, 10.0),
        b"{not json",
        orjson.dumps({"ev": "T", "sym": "A", "x": 4, "i": "9", "p": -1.0, "s": 1, "t": T0 + 2}),
        orjson.dumps({"ev": "Q", "sym": "A", "bp": 1, "ap": 2, "t": T0}),
        trade("A", T0 + 3, 11.0, c=[999]),
        orjson.dumps({"sym": "A", "x": 4, "i": "10", "p": 11.0, "s": 1, "t": T0 + 2}),  # no `ev` tag
        trade("A\tB", T0 + 3, 11.0),
        trade("A", T0 + 4, 12.0),
    ]
    _, rejects = b.apply(batch)
    kinds = [(r.index, r.kind) for r in rejects]
    assert kinds == [
        (1, "malformed"),
        (2, "malformed"),
        (3, "malformed"),
        (4, "unknown_condition"),
        (5, "malformed"),
        (6, "malformed"),
    ]
    assert "999" in rejects[3].reason
    assert "`ev`" in rejects[4].reason
    (bar,) = b.close_all()
    assert (bar.open, bar.close, bar.volume) == (10.0, 12.0, 200)


def test_live_updates_only_for_changed_open_bars():
    b = book()
    b.apply([trade("A", T0 + 1, 10.0), trade("B", T0 + 2, 20.0)])
    assert sorted(u.symbol for u in b.take_live()) == ["A", "B"]
    assert b.take_live() == []
    b.apply([trade("A", T0 + 3, 10.5)])
    (update,) = b.take_live()
    assert (update.symbol, update.status, update.close) == ("A", "live", 10.5)


def test_idle_advance_closes_bars_and_expires_old_ones():
    b = book(lateness_ms=60_000)
    b.apply([trade("A", T0 + 1, 10.0)])
    assert [f.symbol for f in b.advance(T0 + MINUTE_MS + 2_000)] == ["A"]
    b.advance(T0 + 3 * MINUTE_MS)
    _, rejects = b.apply([trade("A", T0 + 5, 1.0)])
    assert [r.kind for r in rejects] == ["too_late"]


def _stream(seed: int, n: int = 3000) -> list[bytes]:
    rng = random.Random(seed)
    out, sent = [], []
    for k in range(n):
        t = T0 + k * 150 + rng.randint(-3_000, 0)
        if rng.random() < 0.02:
            t -= rng.randint(60_000, 400_000)  # late
        msg = trade(rng.choice("ABCDEFG"), t, round(rng.uniform(10, 11), 2), rng.choice([1, 50, 100]),
                    c=rng.choice([None, [37], [14, 41], [10], [12]]), q=k)  # fmt: skip
        if sent and rng.random() < 0.02:
            out.append(rng.choice(sent))
        out.append(msg)
        sent.append(msg)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_messages_give_same_bars_however_batched(seed):
    messages = _stream(seed)
    whole = book(lateness_ms=300_000)
    one, _ = whole.apply(messages)
    one += whole.close_all()
    rng = random.Random(seed)
    pieces = book(lateness_ms=300_000)
    many: list[Bar] = []
    i = 0
    while i < len(messages):
        step = rng.randint(1, 400)
        many += pieces.apply(messages[i : i + step])[0]
        i += step
    many += pieces.close_all()
    assert one == many, "the same bars and revisions in the same order, whatever the batches"
    assert whole.counts == pieces.counts


def test_snapshot_restore_continues_exactly():
    messages = _stream(7)
    straight = book(lateness_ms=300_000)
    expected = straight.apply(messages)[0] + straight.close_all()

    first = book(lateness_ms=300_000)
    got = first.apply(messages[:1700])[0]
    restored = BarBook.restore(first.snapshot(), RULES, close_delay_ms=2_000, lateness_ms=300_000, source="trades")
    got += restored.apply(messages[1700:])[0] + restored.close_all()
    assert got == expected
    assert restored.counts == straight.counts


def test_second_aggregates_build_minute_bars():
    b = book(source="second_aggs")

    def agg(sec: int, o, h, l, c, v, vw):  # noqa: E741
        s = T0 + sec * 1000
        return orjson.dumps(
            {"ev": "A", "sym": "A", "o": o, "h": h, "l": l, "c": c, "v": v, "vw": vw, "z": 50, "s": s, "e": s + 1000}
        )

    b.apply([agg(1, 10, 11, 9.5, 10.5, 100, 10.2), agg(0, 9.8, 10, 9.7, 9.9, 200, 9.9), agg(1, 10, 11, 9.5, 10.5, 100, 10.2)])
    (bar,) = b.close_all()
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades) == (9.8, 11, 9.5, 10.5, 300, 6)
    assert bar.vwap == pytest.approx((10.2 * 100 + 9.9 * 200) / 300)
