"""Trading sessions: the US/Eastern calendar day a time falls in, pre- and after-market included,
and the hours of its daily bars (regular session, extended hours).

>>> s = session_of(1_764_253_800_000)          # 2025-11-27 14:30 UTC = 09:30 EST
>>> s.day, s.start_ms, s.end_ms
('2025-11-27', 1764219600000, 1764306000000)
>>> SESSIONS["regular"].bounds_ms(date(2024, 3, 8)), SESSIONS["regular"].bounds_ms(date(2024, 3, 11))
((1709908200000, 1709931600000), (1710163800000, 1710187200000))

The second pair is an hour earlier in UTC (14:30 -> 13:30): US daylight saving time began on
2024-03-10. `SESSIONS` is the one definition of the hours: the SQL views of migration 0006
(`ohlcv_1day_regular`, `ohlcv_1day_extended`) are tested against it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Final, Literal, NamedTuple
from zoneinfo import ZoneInfo

EASTERN = ZoneInfo("America/New_York")
_HOUR_MS = 3_600_000


class Session(NamedTuple):
    day: str  # YYYY-MM-DD, US/Eastern
    start_ms: int  # midnight US/Eastern, epoch ms
    end_ms: int  # the next midnight (23, 24 or 25 hours later)


_by_hour: dict[int, Session] = {}
_MAX_CACHED_HOURS = 4096


def session_of(ms: int) -> Session:
    """The session containing `ms`; cached per UTC hour (an hour never spans two Eastern days)."""
    hour = ms // _HOUR_MS
    session = _by_hour.get(hour)
    if session is None:
        day = datetime.fromtimestamp(hour * 3600, UTC).astimezone(EASTERN).date()
        start = datetime(day.year, day.month, day.day, tzinfo=EASTERN)
        end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=EASTERN)
        if len(_by_hour) >= _MAX_CACHED_HOURS:  # times from all over the calendar must not grow it
            _by_hour.clear()
        session = _by_hour[hour] = Session(day.isoformat(), int(start.timestamp() * 1000), int(end.timestamp() * 1000))
    return session


class Reference(NamedTuple):
    """What the database held for a symbol's session before this flow started writing it."""

    today_high: float | None
    today_low: float | None
    sessions: list[tuple[str, float, float]]  # previous sessions (day, high, low), newest first


SessionName = Literal["regular", "extended"]
"""Which hours of a trading day a daily bar covers; a notion beside `schemas.timeframes`, not one of its names."""


class TradingHours(NamedTuple):
    """The hours, US/Eastern wall-clock time, of one kind of daily bar, and the view that holds those bars.

    The bounds are wall-clock times, so they move in UTC with daylight saving time; a bar's `timestamp`
    is its session's open (as every bar's is its bucket's start) and it holds the minutes in [opens, closes).
    Early closes (half days) are not modelled: a regular bar of such a day runs to 16:00 all the same.
    """

    name: SessionName
    opens: time
    closes: time
    table: str

    def bounds_ms(self, day: date) -> tuple[int, int]:
        """Epoch ms of `day`'s open and close (the open inclusive, the close exclusive)."""
        opens = datetime.combine(day, self.opens, tzinfo=EASTERN)
        closes = datetime.combine(day, self.closes, tzinfo=EASTERN)
        return int(opens.timestamp() * 1000), int(closes.timestamp() * 1000)

    def contains(self, ms: int) -> bool:
        """Whether the minute starting at `ms` belongs to this session of its US/Eastern day."""
        start, end = self.bounds_ms(date.fromisoformat(session_of(ms).day))
        return start <= ms < end


SESSIONS: Final[dict[str, TradingHours]] = {
    t.name: t
    for t in (
        TradingHours("regular", time(9, 30), time(16, 0), "ohlcv_1day_regular"),
        TradingHours("extended", time(4, 0), time(20, 0), "ohlcv_1day_extended"),
    )
}
