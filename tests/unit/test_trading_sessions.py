"""schemas.sessions' trading hours (the one definition the 0006 views are held to) across both DST changes,
and the analyst API's refusal of a session it cannot serve, before any query."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from connectors.postgres.analyst import SESSION_SCHEMA, UnknownSession, UnknownTimeframe, bar_query
from connectors.postgres.queries import SESSION_BARS_IN_RANGE
from schemas.sessions import SESSIONS


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("day", "regular", "extended"),
    [
        (date(2024, 3, 8), (ms(2024, 3, 8, 14, 30), ms(2024, 3, 8, 21)), (ms(2024, 3, 8, 9), ms(2024, 3, 9, 1))),  # EST
        (date(2024, 3, 11), (ms(2024, 3, 11, 13, 30), ms(2024, 3, 11, 20)), (ms(2024, 3, 11, 8), ms(2024, 3, 12))),  # EDT
        (date(2024, 11, 1), (ms(2024, 11, 1, 13, 30), ms(2024, 11, 1, 20)), (ms(2024, 11, 1, 8), ms(2024, 11, 2))),
        (date(2024, 11, 4), (ms(2024, 11, 4, 14, 30), ms(2024, 11, 4, 21)), (ms(2024, 11, 4, 9), ms(2024, 11, 5, 1))),
    ],
)
def test_hours_follow_new_york_wall_clock(day: date, regular: tuple[int, int], extended: tuple[int, int]) -> None:
    assert SESSIONS["regular"].bounds_ms(day) == regular
    assert SESSIONS["extended"].bounds_ms(day) == extended


def test_a_minute_belongs_to_its_new_york_day() -> None:
    regular, extended = SESSIONS["regular"], SESSIONS["extended"]
    assert regular.contains(ms(2024, 3, 8, 14, 30)) and not regular.contains(ms(2024, 3, 8, 14, 29))
    assert regular.contains(ms(2024, 3, 8, 20, 59)) and not regular.contains(ms(2024, 3, 8, 21))
    # 00:30 UTC on Saturday is 19:30 Friday in New York: Friday's extended hours, not the UTC day's
    assert extended.contains(ms(2024, 3, 9, 0, 30)) and not extended.contains(ms(2024, 3, 9, 1))
    assert extended.contains(ms(2024, 3, 11, 8)) and not extended.contains(ms(2024, 3, 11, 7, 59))


def test_the_api_refuses_sessions_it_cannot_serve() -> None:
    assert bar_query("1d", "extended") == (SESSION_BARS_IN_RANGE["extended"], SESSION_SCHEMA)
    with pytest.raises(UnknownSession, match=r"'overnight'; expected one of regular, extended"):
        bar_query("1d", "overnight")
    with pytest.raises(UnknownTimeframe, match=r"session 'regular' has daily bars: use timeframe '1d', not '5m'"):
        bar_query("5m", "regular")
    with pytest.raises(UnknownTimeframe, match="unknown timeframe '1w'"):
        bar_query("1w", "regular")
