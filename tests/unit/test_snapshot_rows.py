"""Open bars' snapshot rows encode only the ids added since the last snapshot (`MinuteBar.snapshot_row`),
and say exactly what a row encoded whole says: the same fields, the same ids (in arrival order), through
duplicates, late trades of final bars, compaction and restores."""

from __future__ import annotations

import random

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.bars import MINUTE_MS
from flows.book import COMPACT_AFTER_MS, BarBook
from tests.unit.test_book import RULES, T0, book, trade


def _restore(snapshot: bytes) -> BarBook:
    return BarBook.restore(snapshot, RULES, close_delay_ms=2_000, lateness_ms=900_000, source="trades")


def _rows(b: BarBook) -> dict[tuple[str, int], tuple[list, set]]:
    """Every bar of a book as its snapshot says it: fields, and the ids as a set."""
    rows = msgspec.msgpack.decode(b.snapshot())[3]
    return {(row[0], row[1]): (row[:-1], {tuple(key) for key in row[-1]}) for row in rows}


def _whole(b: BarBook) -> dict[tuple[str, int], tuple[list, set]]:
    """The same, from each bar's `to_row` encoded whole (what every snapshot did before)."""
    out = {}
    for bar in b._bars.values():
        row = msgspec.msgpack.decode(msgspec.msgpack.encode(bar.to_row()))
        out[(row[0], row[1])] = (row[:-1], {tuple(key) for key in row[-1]})
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(1, 399), max_size=6))
def test_snapshots_between_any_batches_say_what_whole_rows_say_and_restore_to_the_same_book(seed, cuts):
    rng = random.Random(seed)
    symbols = ["AAPL", "MSFT", "NVDA", "TSLA"]
    events = [
        trade(rng.choice(symbols), T0 + rng.randint(0, 2 * MINUTE_MS + 9_000), 10.0 + rng.random(),
              i=str(rng.randint(0, 120)), x=rng.choice([4, 11]))
        for _ in range(400)
    ]  # fmt: skip  # repeats of (exchange, id): duplicates; two minutes and more: closes, late trades
    b = book()
    at = 0
    for cut in [*sorted(set(cuts)), len(events)]:
        b.apply(events[at:cut])
        at = cut
        assert _rows(b) == _whole(b)
        restored = _restore(b.snapshot())
        assert _rows(restored) == _rows(b) == _rows(_restore(restored.snapshot()))
    fresh = book()
    fresh.apply(events)
    assert _rows(fresh) == _rows(b)


def test_a_second_snapshot_encodes_only_the_new_ids():
    b = book()
    b.apply([trade("AAPL", T0 + i, 10.0, i=str(i)) for i in range(100)])
    first = b.snapshot()
    (bar,) = b._open[T0]
    assert bar.encoded[0] == 100
    kept = bar.encoded[1]
    b.apply([trade("AAPL", T0 + 500 + i, 11.0, i=f"n{i}") for i in range(5)])
    second = b.snapshot()
    assert bar.encoded[0] == 105 and bar.encoded[1].startswith(kept)
    assert len(second) > len(first)
    assert _rows(_restore(second)) == _whole(b)


def test_bars_whose_ids_did_not_all_come_through_the_open_loop_are_encoded_whole():
    """A late trade of a final bar adds to its set, not to its arrival list: its row is `to_row`'s."""
    b = book()
    b.apply([trade("AAPL", T0 + i, 10.0, i=str(i)) for i in range(10)])
    b.apply([trade("AAPL", T0 + MINUTE_MS + 2_000, 11.0, i="closes")])
    b.snapshot()
    b.apply([trade("AAPL", T0 + 20, 9.0, i="late")])  # before the compaction: into the final bar's own set
    (bar,) = b._final[T0]
    assert len(bar.arrived) != len(bar.seen)
    assert bar.snapshot_row() == msgspec.msgpack.encode(bar.to_row())
    assert _rows(b) == _whole(b)
    b.apply([trade("AAPL", T0 + 2 * MINUTE_MS + 2_000 + COMPACT_AFTER_MS, 12.0, i="compacts")])
    assert T0 in b._ids and bar.arrived == () and bar.snapshot_row() == msgspec.msgpack.encode(bar.to_row())
    assert _rows(_restore(b.snapshot())) == _rows(b)
