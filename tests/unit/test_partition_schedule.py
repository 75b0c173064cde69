"""When the bar flow's partition step asks Bytewax to wake it (`PartitionLogic.notify_at`).

Bytewax calls `on_notify` whenever the time `notify_at` gave has passed, and asks again after
every activation of its 1 ms loop: a step that says "now" when it has nothing to do is called a
thousand times a second. Idle, that was a third of a core.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from connectors.kafka.source import RawBatch
from flows import partition
from flows.detect.settings import DetectionSettings
from flows.partition import PartitionLogic
from flows.settings import Settings

LIVE_S, IDLE_S = 30.0, 2.0
T0 = 1_764_253_800_000


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(partition.time, "monotonic", lambda: now[0])
    return now


def step() -> PartitionLogic:
    s = Settings(live_update_interval_s=LIVE_S, idle_advance_s=IDLE_S, health_interval_s=3600, bar_timeframes=())
    return PartitionLogic(s, DetectionSettings(enabled=False), None)


def wakes_in_s(logic: PartitionLogic) -> float:
    at = logic.notify_at()
    assert at is not None
    return (at - datetime.now(UTC)).total_seconds()


def trade(i: int, t: int) -> bytes:
    return orjson.dumps({"ev": "T", "sym": "AAA", "x": 4, "i": str(i), "z": 3, "p": 10.0, "s": 10, "t": t, "q": i})


def test_a_partition_that_never_had_a_trade_waits_for_its_next_live_update_not_for_an_idle_advance(clock):
    logic = step()
    logic.on_batch([RawBatch("t", 0, (), [], caught_up=True)])
    clock[0] += 10 * IDLE_S  # idle far longer than IDLE_ADVANCE_S, but there is no event time to advance
    assert wakes_in_s(logic) > LIVE_S - 10 * IDLE_S - 1
    logic.on_notify()
    assert wakes_in_s(logic) > LIVE_S - 10 * IDLE_S - 1


def test_a_partition_whose_source_is_not_caught_up_does_not_ask_for_the_idle_advance(clock):
    logic = step()
    logic.on_batch([RawBatch("t", 0, range(1), [trade(1, T0)])])  # a watermark, no caught-up marker
    clock[0] += 10 * IDLE_S  # the broker went quiet: no evidence the silence is the market's
    assert wakes_in_s(logic) > LIVE_S - 10 * IDLE_S - 1
    out, _ = logic.on_notify()
    assert not [b for b in out if getattr(b, "status", None) == "final"], "an outage is not silence"
    assert wakes_in_s(logic) > LIVE_S - 10 * IDLE_S - 1


def test_a_caught_up_silent_partition_is_woken_when_its_idle_advance_is_due_and_then_idle_s_later(clock):
    logic = step()
    logic.on_batch([RawBatch("t", 0, range(1), [trade(1, T0)])])
    logic.on_batch([RawBatch("t", 0, (), [], caught_up=True)])
    assert 0 < wakes_in_s(logic) <= IDLE_S
    clock[0] += IDLE_S + 0.5
    assert wakes_in_s(logic) <= 0  # due
    before = logic.book.watermark
    logic.on_notify()
    assert logic.book.watermark > before  # event time followed the wall clock
    assert IDLE_S - 1 < wakes_in_s(logic) <= IDLE_S
