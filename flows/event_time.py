"""Event time that one bad timestamp cannot poison: how far ahead an event may be, and when a jump is real.

A partition's watermark is the newest event time it has seen, and it only moves forward. One
event stamped in 2099 would close every open bar at once and make every later event too late,
for good (the watermark is part of the recovery snapshot). So an event may move a watermark
only if it is

- at most `max_ahead_of_clock_ms` ahead of the wall clock. A live feed's SIP timestamps and
  this machine's clock agree to well under a second; anything further ahead is a broken clock
  (a feed 10 minutes fast) or a bad record, and is refused as `future` at once.
- at most `max_jump_ms` ahead of the watermark, unless the jump is confirmed. Replaying history
  jumps legitimately (overnight, a weekend, the next file); a lone bad timestamp does not. An
  event beyond the jump is held instead of applied. If `confirm` events are held before
  `confirm` events arrive that carry the watermark on (at or after it, within the jump), the
  jump is real: the held events are released and applied in arrival order. If those arrive
  first, the held ones were outliers and are refused as `future`. Late events (behind the
  watermark) count for neither side: a stream that began with a few late ones must still be
  able to move on to the present. At the end of a finite input, held events are refused too.

The jump rule depends on the input alone, so a replay after a restart decides exactly as the
first run did. (The wall-clock rule depends on the clock: an event refused for being 5 minutes
ahead would be accepted by a replay an hour later. Only events that were wrong when they
arrived can differ.)

>>> h = Horizon(max_ahead_of_clock_ms=60_000, max_jump_ms=300_000, confirm=2, clock=lambda: 10_000.0)
>>> h.limit(watermark=0, wall_limit=h.wall_limit()), h.limit(watermark=5_000_000, wall_limit=h.wall_limit())
(10060000, 5300000)
>>> h.hold(9_000_000, b"a", 1), h.normal(), h.normal()   # an outlier: two ordinary events came first
(None, None, [Held(t=9000000, value=b'a', position=1)])
>>> h.hold(9_000_000, b"b", 2), h.hold(9_000_100, b"c", 3)   # two in a row: the jump is real
(None, [Held(t=9000000, value=b'b', position=2), Held(t=9000100, value=b'c', position=3)])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

NEVER = 1 << 62


class Held(msgspec.Struct, array_like=True, frozen=True):
    """An event held until its jump is confirmed: its time, original bytes and input position."""

    t: int
    value: bytes
    position: int


class Horizon:
    """The limits on one partition's event time, and the events held beyond its jump limit."""

    def __init__(
        self,
        *,
        max_ahead_of_clock_ms: int,
        max_jump_ms: int,
        confirm: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if confirm < 1:
            raise ValueError("confirm must be at least 1")
        self.max_ahead_of_clock_ms = max_ahead_of_clock_ms
        self.max_jump_ms = max_jump_ms
        self.confirm = confirm
        self.clock = clock
        self.held: list[Held] = []
        self._ordinary = 0  # events that carried the watermark on since the first held one

    def wall_limit(self) -> int:
        """The latest event time the wall clock allows now (read once per batch)."""
        return int(self.clock() * 1000) + self.max_ahead_of_clock_ms

    def limit(self, watermark: int, wall_limit: int) -> int:
        """Events above this need a decision (`ahead_of_clock` or `hold`); at or below it they are ordinary."""
        if not watermark:
            return wall_limit
        return min(wall_limit, watermark + self.max_jump_ms)

    def hold(self, t: int, value: bytes, position: int) -> list[Held] | None:
        """Hold an event beyond the jump limit; returns every held event once the jump is confirmed."""
        self.held.append(Held(t, value, position))
        if len(self.held) < self.confirm:
            return None
        released, self.held, self._ordinary = self.held, [], 0
        return released

    def normal(self) -> list[Held] | None:
        """An event carried the watermark on while events are held; returns the held ones once they are outliers."""
        self._ordinary += 1
        if self._ordinary < self.confirm:
            return None
        refused, self.held, self._ordinary = self.held, [], 0
        return refused

    def within(self, limit: int) -> list[Held]:
        """Held events the (advanced) limit now admits, released in arrival order; the rest stay held."""
        if not self.held:
            return []
        released = [h for h in self.held if h.t <= limit]
        if released:
            self.held = [h for h in self.held if h.t > limit]
            if not self.held:
                self._ordinary = 0
        return released

    def drain(self) -> list[Held]:
        """End of a finite input: whatever is still held is refused."""
        refused, self.held, self._ordinary = self.held, [], 0
        return refused

    # ---- reasons ---------------------------------------------------------------------------

    def ahead_of_clock(self, t: int, wall_limit: int) -> str:
        ahead = (t - wall_limit + self.max_ahead_of_clock_ms) / 1000
        return (
            f"event time {t} ms ({iso(t)}) is {ahead:.0f} s ahead of the wall clock; at most "
            f"{self.max_ahead_of_clock_ms / 1000:g} s is allowed (EVENT_MAX_AHEAD_S)"
        )

    def unconfirmed(self, held: Held, watermark: int, why: str) -> str:
        return (
            f"event time {held.t} ms ({iso(held.t)}) is {(held.t - watermark) / 1000:.0f} s ahead of the partition's "
            f"watermark ({iso(watermark)}), beyond the {self.max_jump_ms / 1000:g} s a watermark may jump "
            f"(WATERMARK_MAX_JUMP_S), and {why}"
        )

    # ---- recovery --------------------------------------------------------------------------

    def snapshot(self) -> tuple[list[Held], int]:
        return self.held, self._ordinary

    def restore(self, state: tuple[list, int]) -> None:
        held, ordinary = state
        self.held = [h if isinstance(h, Held) else Held(*h) for h in held]
        self._ordinary = ordinary


def iso(t_ms: int) -> str:
    """An epoch-ms time as ISO 8601 UTC for messages (any int, never raises)."""
    try:
        return datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return "out of range"
