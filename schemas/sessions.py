"""Trading sessions: the US/Eastern calendar day a time falls in, pre- and after-market included.

>>> s = session_of(1_764_253_800_000)          # 2025-11-27 14:30 UTC = 09:30 EST
>>> s.day, s.start_ms, s.end_ms
('2025-11-27', 1764219600000, 1764306000000)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple
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
