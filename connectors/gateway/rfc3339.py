"""Times in REST parameters: RFC 3339 date-times (`2026-11-02T14:30:00Z`, `...+01:00`), nothing else.

A time whose UTC equivalent falls outside years 1-9999 is clamped to the first/last
representable instant: it is before/after every stored row, so the answer is the same. A leap
second is the last instant of its minute. An unreadable time is a 422 naming the parameter, in
FastAPI's own validation-error shape.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fastapi.exceptions import RequestValidationError

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,12})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
FIRST = datetime.min.replace(tzinfo=UTC)
LAST = datetime.max.replace(tzinfo=UTC)


def _invalid(name: str, text: str, why: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("query", name), "msg": why, "input": text[:60]}])


def parse_time(name: str, text: str) -> datetime:
    """An RFC 3339 date-time as an aware UTC datetime (clamped to years 1-9999), or a 422 naming `name`.

    >>> parse_time("since", "2026-11-02T14:30:00.5+01:00").isoformat()
    '2026-11-02T13:30:00.500000+00:00'
    >>> parse_time("since", "0001-01-01T00:00:00+05:00") == datetime.min.replace(tzinfo=UTC)
    True
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise _invalid(name, text, "must be an RFC 3339 date-time, e.g. 2026-11-02T14:30:00Z")
    year, month, day, hour, minute, second = (int(m[i]) for i in range(1, 7))
    micro = int((m[7][1:] + "000000")[:6]) if m[7] else 0
    if second == 60:  # a leap second: the last instant of its minute
        second, micro = 59, 999_999
    try:
        naive = datetime(year, month, day, hour, minute, second, micro)
    except ValueError as exc:
        raise _invalid(name, text, f"not a valid date-time: {exc}") from None
    offset_min = 0
    if m[8] not in ("Z", "z"):
        hours, minutes = int(m[8][1:3]), int(m[8][4:6])
        if hours > 23 or minutes > 59:
            raise _invalid(name, text, "the UTC offset must be at most 23:59")
        offset_min = (hours * 60 + minutes) * (1 if m[8][0] == "+" else -1)
    try:
        return (naive - timedelta(minutes=offset_min)).replace(tzinfo=UTC)
    except OverflowError:
        return FIRST if offset_min > 0 else LAST
