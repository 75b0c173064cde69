"""The compact trade ids of final minutes (flows.trade_ids) and the bar book around them: the same
bars as exact sets gave, duplicates of late trades still caught, old recovery stores still loading."""

from __future__ import annotations

import random

import msgspec
import pytest

from flows.bars import MINUTE_MS, MinuteBar
from flows.book import BarBook
from flows.trade_ids import NO_IDS, MinuteIds
from tests.unit.test_book import RULES, T0, _stream, book, trade


def test_inlined_trade_arithmetic_equals_minute_bar():
    rng = random.Random(5)
    reference = MinuteBar("AAPL", T0)
    extremes: list[tuple] = []
    b = book(on_trade=lambda *a: extremes.append(a))
    expected_extremes = []
    for k in range(400):
        p, s, t, q = round(rng.uniform(9, 11), 2), rng.randint(1, 500), T0 + rng.randint(0, 59_999), rng.randint(0, 50)
        c = rng.choice([None, [37], [14, 41], [10], [12], [2], [7]])
        mask = RULES.mask(c or [])
        if mask and reference.add_trade(p, s, t, q, mask):
            expected_extremes.append(("AAPL", p, t))
        b.apply([trade("AAPL", t, p, s, c=c, q=q, i=str(k))])
    got = b._bars[("AAPL", T0)]
    assert got.to_row()[:-1] == reference.to_row()[:-1]
    assert extremes == expected_extremes


def test_duplicates_of_a_final_minute_are_caught_from_its_compact_ids():
    b = book()
    first = [trade(sym, T0 + k * 100, 10.0 + k / 100, i=str(k)) for k in range(50) for sym in ("AAPL", "MSFT")]
    b.apply(first)
    finals, _ = b.apply([trade("AAPL", T0 + 2 * MINUTE_MS + 5_000, 12.0, i="next")])
    assert len(finals) == 2 and b.counts.duplicates == 0
    bar = b._bars[("AAPL", T0)]
    assert bar.final and bar.seen is NO_IDS and len(b._ids[T0]) == 100  # the exact set is gone
    late, _ = b.apply(first[::7])  # the same trades again, late
    assert late == [] and b.counts.duplicates == len(first[::7]) and b.counts.revisions == 0
    same_id_other_exchange = trade("AAPL", T0 + 1, 9.0, i="3", x=11)
    revised, _ = b.apply([same_id_other_exchange, same_id_other_exchange])
    assert [(r.symbol, r.low, r.revision) for r in revised] == [("AAPL", 9.0, 1)]
    assert b.counts.duplicates == len(first[::7]) + 1  # the repeat of the late trade: from the bar's exact set


def _old_store(b: BarBook, version: int) -> bytes:
    """The recovery snapshot as versions 2 and 3 wrote it: every bar with its exact ids, no minute ids."""
    counts = [getattr(b.counts, f) for f in b.counts.__struct_fields__]
    rows = [bar.to_row() for bar in b._bars.values()]
    live = [(bar.symbol, bar.start) for bar in b._live]
    state = (version, b.watermark, counts, rows, live) + ((b.horizon.snapshot(),) if version == 3 else ())
    return msgspec.msgpack.encode(state)


@pytest.mark.parametrize("version", [2, 3])
def test_a_store_of_the_previous_format_restores_and_continues_exactly(version, monkeypatch):
    messages = _stream(11)
    straight = book(lateness_ms=300_000)
    expected = straight.apply(messages)[0] + straight.close_all()

    with monkeypatch.context() as m:
        m.setattr(BarBook, "_compact", lambda self, start, closing: None)  # the old code kept exact sets
        first = book(lateness_ms=300_000)
        got = first.apply(messages[:1700])[0]
        assert any(bar.final and bar.seen for bar in first._bars.values())
        old = _old_store(first, version)
    restored = BarBook.restore(old, RULES, close_delay_ms=2_000, lateness_ms=300_000, source="trades")
    assert restored._ids and all(bar.seen is NO_IDS for bars in restored._final.values() for bar in bars)
    got += restored.apply(messages[1700:])[0] + restored.close_all()
    assert got == expected
    assert restored.counts == straight.counts


def test_restore_twice_keeps_compact_ids_exact():
    messages = _stream(12)
    straight = book(lateness_ms=300_000)
    expected = straight.apply(messages)[0] + straight.close_all()
    b = book(lateness_ms=300_000)
    got = b.apply(messages[:1000])[0]
    for cut in (1000, 2000):
        b = BarBook.restore(b.snapshot(), RULES, close_delay_ms=2_000, lateness_ms=300_000, source="trades")
        assert b._ids
        got += b.apply(messages[cut : cut + 1000])[0]
    got += b.apply(messages[3000:])[0] + b.close_all()
    assert got == expected and b.counts == straight.counts


def test_a_store_of_an_unknown_version_or_with_broken_ids_is_refused_precisely():
    b = book()
    b.apply([trade("AAPL", T0, 10.0, i="1"), trade("AAPL", T0 + 3 * MINUTE_MS, 10.0, i="2")])
    version, *rest = msgspec.msgpack.decode(b.snapshot())
    options: dict = {"close_delay_ms": 2_000, "lateness_ms": 900_000, "source": "trades"}
    with pytest.raises(ValueError, match=r"snapshot version 9; this version of the flow restores versions 2, 3, 4"):
        BarBook.restore(msgspec.msgpack.encode([9, *rest]), RULES, **options)
    rest[-1] = [[T0, b"\x93garbage"]]
    with pytest.raises(ValueError, match=r"version 4: unreadable trade ids of a final minute"):
        BarBook.restore(msgspec.msgpack.encode([version, *rest]), RULES, **options)


def test_minute_ids_hold_exactly_the_keys_given():
    keys = {(4, "1", None), (4, "1", 0), (5, "1", None), (4, "01", None), (4, "1\x00", None)}
    ids = MinuteIds.of([("AAPL", keys), ("MSFT", {(4, "1", None)}), ("EMPTY", set())])
    assert len(ids) == 6
    for key in keys:
        assert ids.counted("AAPL", key)
    assert not ids.counted("AAPL", (4, "2", None)) and not ids.counted("MSFT", (5, "1", None))
    again = MinuteIds.restore(ids.exact)
    assert sorted(again.hashes.tolist()) == sorted(ids.hashes.tolist())
