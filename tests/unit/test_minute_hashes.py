"""The key hashes open bars collect in the trade loop (`MinuteBar.hashes`) give the final minute exactly
the ids and exact blob that hashing its keys afresh gives, through duplicates, late trades and restores."""

from __future__ import annotations

import random
from collections import Counter

from flows.bars import MINUTE_MS
from flows.book import COMPACT_AFTER_MS, BarBook
from flows.trade_ids import NO_HASHES, MinuteIds
from tests.unit.test_book import RULES, T0, book, trade


def test_of_hashed_equals_of_for_the_same_keys():
    bars = [("AAPL", {(4, "1", None), (11, "1", 3)}), ("MSFT", set()), ("X", {(4, "9", None)})]
    fresh = MinuteIds.of(bars)
    hashed = MinuteIds.of_hashed([(s, keys, [hash(k) for k in keys]) for s, keys in bars])
    assert hashed.hashes.tolist() == fresh.hashes.tolist()
    assert hashed.exact == fresh.exact


def _open_hashes_match(b: BarBook) -> None:
    for bar in b._bars.values():
        if not bar.final:
            assert Counter(bar.hashes) == Counter(map(hash, bar.seen))


def test_the_compacted_minute_has_the_ids_of_its_exact_keys_and_restores_to_them():
    rng = random.Random(11)
    b = book()
    symbols = ["AAPL", "MSFT", "NVDA"]
    events = [
        trade(rng.choice(symbols), T0 + rng.randint(0, 59_999), 10.0, i=str(rng.randint(0, 80)), x=rng.choice([4, 11]))
        for _ in range(400)
    ]  # many repeats of the same (exchange, id): duplicates
    b.apply(events)
    _open_hashes_match(b)
    exact = [(bar.symbol, set(bar.seen)) for bar in b._open[T0]]
    restored = BarBook.restore(b.snapshot(), RULES, close_delay_ms=2_000, lateness_ms=900_000, source="trades")
    _open_hashes_match(restored)
    for one in (b, restored):
        one.apply([trade("AAPL", T0 + MINUTE_MS + 2_000 + COMPACT_AFTER_MS, 11.0, i="next")])
        assert one._ids[T0].hashes.tolist() == MinuteIds.of(exact).hashes.tolist()
        assert all(bar.hashes is NO_HASHES for bar in one._final[T0])
        before = one.counts.duplicates
        late, _ = one.apply([*events[:50], trade("AAPL", T0 + 7, 9.0, i="new late")])
        assert one.counts.duplicates == before + 50 and [r.low for r in late] == [9.0]


def test_a_final_minute_counts_late_trades_once_before_and_after_its_compaction_and_across_a_restore():
    """Between its close and its compaction (COMPACT_AFTER_MS later) a final minute de-duplicates from
    its bars' exact sets; a snapshot taken then restores to a book that compacts it at the same
    watermark, to the same ids."""
    b = book()
    events = [trade(s, T0 + 1_000 * i, 10.0 + i, i=f"{s}{i}") for i in range(30) for s in ("AAPL", "MSFT")]
    b.apply(events)
    closed, _ = b.apply([trade("AAPL", T0 + MINUTE_MS + 2_000, 11.0, i="closes")])  # closes T0, not yet compacted
    assert len(closed) == 2 and T0 not in b._ids
    late, _ = b.apply([*events[:10], trade("MSFT", T0 + 5, 1.0, i="late one")])
    assert [(r.symbol, r.low, r.revision) for r in late] == [("MSFT", 1.0, 1)] and b.counts.duplicates == 10
    restored = BarBook.restore(b.snapshot(), RULES, close_delay_ms=2_000, lateness_ms=900_000, source="trades")
    assert T0 not in restored._ids
    for one in (b, restored):
        one.apply([trade("AAPL", T0 + MINUTE_MS + 2_000 + COMPACT_AFTER_MS - 1, 11.0, i="not yet")])
        assert T0 not in one._ids
        one.apply([trade("AAPL", T0 + MINUTE_MS + 2_000 + COMPACT_AFTER_MS, 11.0, i="due")])
        assert len(one._ids[T0]) == 61 and all(bar.hashes is NO_HASHES for bar in one._final[T0])
        before = one.counts.duplicates
        again, _ = one.apply([*events[10:20], trade("MSFT", T0 + 5, 1.0, i="late one"), trade("MSFT", T0 + 6, 0.5, i="late two")])
        assert one.counts.duplicates == before + 11 and [(r.symbol, r.low, r.revision) for r in again] == [("MSFT", 0.5, 2)]
    assert restored._ids[T0].hashes.tolist() == b._ids[T0].hashes.tolist()


def _ordered(rows: list) -> list:
    """Rows by (symbol, minute), each with its trade ids in a fixed order (a set's order is not kept)."""
    return sorted(([*row[:-1], sorted(row[-1], key=repr)] for row in rows), key=lambda row: (row[0], row[1]))


def _rows(snapshot: bytes) -> list:
    import msgspec

    return _ordered(msgspec.msgpack.decode(snapshot)[3])


def _rebuilt(b: BarBook) -> list:
    """The rows a snapshot holds if nothing is reused: every bar's row, built now."""
    import msgspec

    return _ordered(msgspec.msgpack.decode(msgspec.msgpack.encode([bar.to_row() for bar in b._bars.values()])))


def test_a_snapshot_reuses_final_rows_only_while_their_bars_are_unchanged():
    """Snapshots keep the rows of final minutes between epochs; every change to a final bar (a late
    trade, a late second, the compaction, a new bar for the minute, the minute leaving) must show in
    the next snapshot as if every row were built anew, and it must restore to the same book."""
    b = book(lateness_ms=180_000)
    b.apply([trade(s, T0 + 1_000 * i, 10.0 + i, i=f"{s}{i}") for i in range(20) for s in ("AAPL", "MSFT")])
    b.apply([trade("AAPL", T0 + MINUTE_MS + 2_000, 11.0, i="closes T0")])
    steps = [
        [],  # the same state twice: the rows are reused
        [trade("MSFT", T0 + 5, 1.0, i="late, before the compaction")],
        [trade("AAPL", T0 + MINUTE_MS + 2_000 + COMPACT_AFTER_MS, 12.0, i="compacts T0")],
        [trade("MSFT", T0 + 6, 0.5, i="late, after the compaction")],
        [trade("NVDA", T0 + 7, 99.0, i="a late symbol's new bar in T0")],
        [trade("AAPL", T0 + 2 * MINUTE_MS + 2_000, 13.0, i="closes T0+1m, and NVDA's T0 bar")],
        [trade("MSFT", T0 + 8, 0.25, i="late again")],
        [trade("AAPL", T0 + 4 * MINUTE_MS + 500, 14.0, i="T0 is no longer revisable")],
    ]
    for events in steps:
        b.apply(events)
        snapshot = b.snapshot()
        assert _rows(snapshot) == _rebuilt(b)
        restored = BarBook.restore(snapshot, RULES, close_delay_ms=2_000, lateness_ms=180_000, source="trades")
        assert _rows(restored.snapshot()) == _rows(snapshot)
    assert T0 not in b._final and T0 not in b._final_rows
    assert b._final_rows  # the later final minutes' rows are held for the next snapshot
