"""Sink partition names: the first is the one single-partition sinks had, and a larger count only adds names.

Bytewax 0.21 refuses to resume a recovery store holding a sink partition the flow no longer
lists, so a flow whose input gained partitions must list a superset (connectors/sinks/parts.py).
"""

from __future__ import annotations

import pytest

from connectors.kafka.settings import KafkaSettings
from connectors.kafka.sink import TopicSink
from connectors.sinks.parts import MAX_LANES, MAX_PARTS, PerWorker, part_names
from connectors.sinks.records import final_bar_sink
from connectors.sinks.settings import OutputSettings


def test_one_partition_keeps_the_name_the_sink_always_had():
    assert part_names("ohlcv_1min", 1) == ["ohlcv_1min"]


@pytest.mark.parametrize("smaller, larger", [(1, 2), (2, 4), (4, 64), (3, MAX_PARTS)])
def test_more_partitions_only_add_names(smaller, larger):
    few, many = part_names("detection", smaller), part_names("detection", larger)
    assert many[:smaller] == few
    assert len(set(many)) == larger


@pytest.mark.parametrize("count", [0, -1, MAX_PARTS + 1])
def test_a_count_out_of_bounds_is_refused_with_the_sink_named(count):
    with pytest.raises(ValueError, match=rf"stocks\.bars: sink partitions must be 1-{MAX_PARTS}, not {count}"):
        part_names("stocks.bars", count)


def test_the_sinks_list_their_partitions():
    assert TopicSink(KafkaSettings(), "stocks.bars", lambda b: (None, b, None), parts=3).list_parts() == [
        "stocks.bars", "stocks.bars#1", "stocks.bars#2"]  # fmt: skip
    assert final_bar_sink(OutputSettings(), parts=2).list_parts() == ["ohlcv_1min", "ohlcv_1min#1"]


class _Recording:
    """A writer that keeps what it was given and whether it was closed."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.closed = 0

    def write_batch(self, items: list[int]) -> None:
        self.items += items

    def snapshot(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


def test_a_worker_spreads_its_partitions_over_its_lanes_and_each_keeps_one():
    opened: list[_Recording] = []

    def open_writer() -> _Recording:
        opened.append(_Recording())
        return opened[-1]

    writers = PerWorker(open_writer, lanes=2)
    parts = [writers.partition() for _ in range(5)]
    assert len(opened) == 2
    for n, part in enumerate(parts):
        part.write_batch([n, n])
    assert opened[0].items == [0, 0, 2, 2, 4, 4]  # partitions 0, 2, 4: one lane, in the order given
    assert opened[1].items == [1, 1, 3, 3]
    for part in parts[:4]:
        part.close()
    assert [w.closed for w in opened] == [0, 1]  # lane 0 still holds partition 4
    parts[4].close()
    assert [w.closed for w in opened] == [1, 1]


def test_one_lane_is_one_writer_per_worker():
    opened: list[_Recording] = []
    writers = PerWorker(lambda: opened.append(_Recording()) or opened[-1])
    parts = [writers.partition() for _ in range(3)]
    assert len(opened) == 1
    for part in parts:
        part.close()
    assert opened[0].closed == 1


@pytest.mark.parametrize("lanes", [0, MAX_LANES + 1])
def test_a_lane_count_out_of_bounds_is_refused(lanes):
    with pytest.raises(ValueError, match=rf"writers per worker must be 1-{MAX_LANES}, not {lanes}"):
        PerWorker(_Recording, lanes=lanes)
