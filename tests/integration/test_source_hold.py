"""`KafkaBatchSource(hold=...)` on a real broker: the detection flow waiting out a minute boundary.

What a tailing partition read while `hold` says to wait goes out no sooner than that, and until it
does the partition's recovery state (its next offset) stays before it, so a restart would read it
again. A finite input (`tail=False`: replays, tests, benchmarks) is never held."""

from __future__ import annotations

import time

import pytest

from connectors.kafka import clients
from connectors.kafka.source import KafkaBatchSource

pytestmark = pytest.mark.integration
HOLD_S = 1.0


def produce(settings, values: list[bytes]) -> None:
    producer = clients.producer(settings)
    for value in values:
        producer.produce(settings.topic_trades, value, partition=0)
    assert producer.flush(10) == 0


def drain(part, count: int, timeout_s: float = 20.0) -> list[tuple[float, int, list[bytes | None]]]:
    """(when, the snapshot just before, values) of each non-empty batch until `count` values came."""
    out: list[tuple[float, int, list[bytes | None]]] = []
    deadline = time.monotonic() + timeout_s
    while sum(len(v) for _, _, v in out) < count and time.monotonic() < deadline:
        before = part.snapshot()
        for batch in part.next_batch():
            if batch.values:
                out.append((time.monotonic(), before, batch.values))
        time.sleep(0.005)
    return out


def test_what_a_tailing_partition_reads_while_it_must_wait_goes_out_after_the_wait(settings):
    source = KafkaBatchSource(settings, [settings.topic_trades], start="earliest", tail=True, hold=lambda: HOLD_S)
    part = source.build_part("bars", f"{settings.topic_trades}#0", None)
    try:
        start = part.snapshot()  # "earliest", until a message has gone out
        produce(settings, [b"a", b"b", b"c"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not part._held:  # until read from the broker
            assert not [b for b in part.next_batch() if b.values], "nothing goes out before its wait"
            time.sleep(0.005)
        read_at = time.monotonic()
        assert part._held and part.snapshot() == start, "held: the recovery state stays before the held messages"
        assert part.next_awake() is not None, "the dataflow is told when to come back, not polled meanwhile"
        ((at, before, values),) = drain(part, 3)
        assert values == [b"a", b"b", b"c"] and before == start
        assert at >= read_at + HOLD_S - 0.05, f"out {at - read_at:.3f} s after it was read"
        assert part.snapshot() == 3
    finally:
        part.close()


def test_a_finite_input_is_never_held(settings):
    produce(settings, [b"x"])
    source = KafkaBatchSource(settings, [settings.topic_trades], start="earliest", tail=False, hold=lambda: 60.0)
    part = source.build_part("bars", f"{settings.topic_trades}#0", None)
    try:
        started = time.monotonic()
        assert [v for _, _, v in drain(part, 1)] == [[b"x"]]
        assert time.monotonic() - started < 30, "not held for the minute `hold` asks"
    finally:
        part.close()
