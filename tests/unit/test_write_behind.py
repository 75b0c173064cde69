"""The sinks' write-behind: batches handed over while one is written go out together, in order."""

from __future__ import annotations

import threading

import pytest

from connectors.sinks.records import _WriteBehind


class _Recorder:
    """A writer whose first write waits until released, so batches queue up behind it."""

    def __init__(self) -> None:
        self.writes: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.closed = False

    def write(self, items: list[int]) -> None:
        if not self.writes:
            self.started.set()
            assert self.release.wait(10), "the test never released the first write"
        self.writes.append(list(items))

    def close(self) -> None:
        self.closed = True


def test_batches_queued_behind_a_write_are_written_as_one_in_order() -> None:
    rec = _Recorder()
    behind = _WriteBehind("test", rec.write, rec.close)
    behind.write_batch([1, 2])
    assert rec.started.wait(10)
    behind.write_batch([3])
    behind.write_batch([4, 5])
    behind.write_batch([6])
    rec.release.set()
    behind.snapshot()
    assert rec.writes == [[1, 2], [3, 4, 5, 6]]
    behind.close()
    assert rec.closed


def test_snapshot_returns_only_once_every_batch_is_written() -> None:
    rec = _Recorder()
    behind = _WriteBehind("test", rec.write, rec.close)
    behind.write_batch([1])
    assert rec.started.wait(10)
    behind.write_batch([2])
    done = threading.Event()
    snapshot = threading.Thread(target=lambda: (behind.snapshot(), done.set()))
    snapshot.start()
    assert not done.wait(0.2)  # the first write is still held
    rec.release.set()
    snapshot.join(10)
    assert done.is_set()
    assert [x for w in rec.writes for x in w] == [1, 2]
    behind.close()


def test_close_writes_what_is_queued_then_closes() -> None:
    rec = _Recorder()
    rec.release.set()
    behind = _WriteBehind("test", rec.write, rec.close)
    for i in range(5):
        behind.write_batch([i])
    behind.close()
    assert [x for w in rec.writes for x in w] == [0, 1, 2, 3, 4]
    assert rec.closed


def test_a_failed_write_fails_the_next_hand_over_and_skips_the_rest() -> None:
    writes: list[list[int]] = []

    def write(items: list[int]) -> None:
        writes.append(items)
        raise OSError("disk on fire")

    behind = _WriteBehind("test", write, lambda: None)
    behind.write_batch([1])
    with pytest.raises(RuntimeError, match="test sink failed: disk on fire"):
        behind.snapshot()
    with pytest.raises(RuntimeError, match="disk on fire"):
        behind.write_batch([2])
    assert writes == [[1]]


def _newest(written: list, first: object, key=lambda item: item[0]):
    from connectors.sinks.records import _Newest

    return _Newest("live-0", written.append, lambda: None, key=key, after=first)  # type: ignore[arg-type]


def test_live_updates_wait_for_the_final_bars_in_hand_and_go_in_slices() -> None:
    from connectors.sinks.records import _LIVE_SLICE, _FinalsFirst

    order: list[str] = []
    finals = _Recorder()
    first = _FinalsFirst()
    final_sink = _WriteBehind("finals", lambda items: (finals.write(items), order.append("final")), finals.close, first=first)
    written: list[list] = []
    live_sink = _newest(written, first)
    final_sink.write_batch([1])
    assert finals.started.wait(10)  # the final bars' write is in hand (blocked)
    live_sink.write_batch([(i, "x") for i in range(_LIVE_SLICE + 1)])
    assert not threading.Event().wait(0.3) and order == [] and written == [], (
        "live updates went out while final bars were in hand"
    )
    finals.release.set()
    final_sink.snapshot()
    live_sink.close()
    assert order == ["final"] and [len(w) for w in written] == [_LIVE_SLICE, 1]
    final_sink.close()


def test_live_updates_are_not_starved_by_final_bars_that_never_finish(monkeypatch) -> None:
    from connectors.sinks import records

    monkeypatch.setattr(records, "_LIVE_WAIT_S", 0.2)
    first = records._FinalsFirst()
    first.handed()  # a final-bar batch that is never written (its database is away)
    written: list[list] = []
    live_sink = _newest(written, first)
    live_sink.write_batch([(1, "a"), (2, "b"), (3, "c")])
    live_sink.close()
    assert written == [[(1, "a"), (2, "b"), (3, "c")]]


def test_a_burst_behind_final_bars_never_holds_the_flow_and_only_the_newest_per_key_goes_out(monkeypatch) -> None:
    """While final bars are in hand, bursts of live updates are handed over at once (the queue of
    batches this replaced stopped the flow's thread after 8), and a newer record of a key
    replaces the one waiting; records without a key are each kept."""
    from connectors.sinks import records

    first = records._FinalsFirst()
    first.handed()  # final bars in hand until written() below
    written: list[list] = []
    live_sink = _newest(written, first, key=lambda item: item[0] if item[0] != "error" else None)
    handed = threading.Event()

    def flow() -> None:
        for burst in range(50):  # 50 bursts of 100 keys, while the final bars are written
            live_sink.write_batch([(f"S{i}", burst) for i in range(100)] + [("error", burst)])
        handed.set()

    threading.Thread(target=flow, daemon=True).start()
    assert handed.wait(5), "the flow's thread was held while final bars were written"
    assert written == []
    first.written(1)
    live_sink.close()
    out = [x for w in written for x in w]
    assert sorted(x for x in out if x[0] != "error") == sorted((f"S{i}", 49) for i in range(100))
    assert [x for x in out if x[0] == "error"] == [("error", b) for b in range(50)]


def test_a_failed_live_write_fails_the_next_hand_over(monkeypatch) -> None:
    from connectors.sinks import records

    def write(items: list) -> None:
        raise ConnectionError("redis gone for good")

    live_sink = records._Newest("live-0", write, lambda: None, key=lambda item: item, after=records._FinalsFirst())
    live_sink.write_batch([1])
    for _ in range(100):
        if live_sink._failure is not None:
            break
        threading.Event().wait(0.05)
    with pytest.raises(RuntimeError, match="live-0 sink failed: redis gone for good"):
        live_sink.write_batch([2])
    with pytest.raises(RuntimeError, match="redis gone for good"):
        live_sink.close()


def test_the_next_batch_is_stored_while_the_one_before_is_published() -> None:
    stored: list[list[int]] = []
    published: list[list[int]] = []
    publishing = threading.Event()
    release = threading.Event()

    def store(items: list[int]) -> list[int]:
        stored.append(list(items))
        return [x * 10 for x in items]

    def publish(result: list[int]) -> None:
        if not published:
            publishing.set()
            assert release.wait(10), "the test never released the first publish"
        published.append(result)

    behind = _WriteBehind("test", store, lambda: None, then=publish)
    behind.write_batch([1])
    assert publishing.wait(10)  # the first batch is stored, its publishing held
    behind.write_batch([2, 3])
    done = threading.Event()
    snapshot = threading.Thread(target=lambda: (behind.snapshot(), done.set()))
    snapshot.start()
    for _ in range(100):  # the second batch is stored meanwhile
        if len(stored) == 2:
            break
        threading.Event().wait(0.05)
    assert stored == [[1], [2, 3]] and published == []
    assert not done.wait(0.2), "the epoch ended before its batches were published"
    release.set()
    snapshot.join(10)
    assert done.is_set() and published == [[10], [20, 30]]  # in order, each after its store
    behind.close()


def test_a_failed_publish_fails_the_next_hand_over_and_publishes_nothing_more() -> None:
    published: list[list[int]] = []

    def publish(result: list[int]) -> None:
        published.append(result)
        raise ConnectionError("redis gone for good")

    behind = _WriteBehind("test", list, lambda: None, then=publish)
    behind.write_batch([1])
    with pytest.raises(RuntimeError, match="test sink failed: redis gone for good"):
        behind.snapshot()
    with pytest.raises(RuntimeError, match="redis gone for good"):
        behind.write_batch([2])
    assert published == [[1]]


def test_close_stores_and_publishes_what_is_queued() -> None:
    published: list[int] = []
    closed = threading.Event()
    behind = _WriteBehind("test", list, closed.set, then=published.extend)
    for i in range(6):
        behind.write_batch([i])
    behind.close()
    assert published == [0, 1, 2, 3, 4, 5] and closed.is_set()
