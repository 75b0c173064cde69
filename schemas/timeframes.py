"""Timeframes: the bar lengths the product serves, their names on every surface, and their tables.

One definition for the REST `timeframe` parameter, the analyst API, the event rows' `timeframe`
column and the database views (`infra/migrations/0002_timeframes`, `0004_rollups`).

>>> TIMEFRAMES["5m"].ms, TIMEFRAMES["5m"].table
(300000, 'ohlcv_5min')
>>> [t.name for t in TIMEFRAMES.values()]
['1m', '5m', '15m', '1h', '1d']
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

TimeframeName = Literal["1m", "5m", "15m", "1h", "1d"]


class Timeframe(NamedTuple):
    name: TimeframeName
    ms: int  # length of one bar
    table: str  # where its bars are (a table for 1m, a view or rollup table for the others)


TIMEFRAMES: Final[dict[str, Timeframe]] = {
    t.name: t
    for t in (
        Timeframe("1m", 60_000, "ohlcv_1min"),
        Timeframe("5m", 300_000, "ohlcv_5min"),
        Timeframe("15m", 900_000, "ohlcv_15min"),
        Timeframe("1h", 3_600_000, "ohlcv_1hour"),
        Timeframe("1d", 86_400_000, "ohlcv_1day"),  # UTC calendar days
    )
}
