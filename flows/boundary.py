"""The minute boundary on the wall clock: the half second in which the bar flow's sink writes a minute's bars.

A tailing bar flow closes every symbol's minute at its end plus `BAR_CLOSE_DELAY_S` (wall clock
and event time agree live), and its sink then has a few hundred milliseconds of PostgreSQL and
Redis work to get those bars out. The detection flow gets the same bars from Kafka a moment later
and, left alone, spends the same moments detecting on them and writing what it found, on the same
two cores. `wait_after_boundary` says how long bars read during that window should wait, so the
detection of a minute comes after its bars instead of beside them; outside it, nothing waits.

>>> [round(wait_after_boundary(t, close_delay_s=2.0, hold_s=0.5), 3) for t in (120.0, 122.0, 122.2, 122.5, 150.0)]
[0.0, 0.5, 0.3, 0.0, 0.0]
"""

from __future__ import annotations

MINUTE_S = 60.0


def wait_after_boundary(now_s: float, *, close_delay_s: float, hold_s: float) -> float:
    """Seconds from `now_s` (epoch) to the end of the window `hold_s` long that starts when a minute
    closes (its end plus `close_delay_s`); 0 outside it."""
    if hold_s <= 0:
        return 0.0
    since = (now_s - close_delay_s) % MINUTE_S
    return hold_s - since if since < hold_s else 0.0
