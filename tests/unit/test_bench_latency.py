"""`bench.ohlcv.boundary_kind`: which buckets a minute's close also closes, to read the latency per boundary."""

from __future__ import annotations

import pytest

from bench.ohlcv import boundary_kind

DAY0 = 1_704_240_000_000  # 2024-01-03 00:00 UTC


@pytest.mark.parametrize(
    ("minute", "closes"),
    [(0, "1m"), (3, "1m"), (4, "5m"), (9, "5m"), (14, "15m"), (29, "15m"), (44, "15m"), (58, "1m"), (59, "1h"),
     (119, "1h"), (1438, "1m"), (1439, "1d")],
)  # fmt: skip
def test_a_minute_closes_the_coarsest_bucket_it_ends(minute, closes):
    assert boundary_kind(DAY0 + minute * 60_000) == closes


def test_every_kind_recurs_as_often_as_its_buckets_close():
    kinds = [boundary_kind(DAY0 + m * 60_000) for m in range(1440)]
    assert [kinds.count(k) for k in ("1m", "5m", "15m", "1h", "1d")] == [1440 - 288, 288 - 96, 96 - 24, 24 - 1, 1]
