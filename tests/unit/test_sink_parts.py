"""Sink partition names: the first is the one single-partition sinks had, and a larger count only adds names.

Bytewax 0.21 refuses to resume a recovery store holding a sink partition the flow no longer
lists, so a flow whose input gained partitions must list a superset (connectors/sinks/parts.py).
"""

from __future__ import annotations

import pytest

from connectors.kafka.settings import KafkaSettings
from connectors.kafka.sink import TopicSink
from connectors.sinks.parts import MAX_PARTS, part_names
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
