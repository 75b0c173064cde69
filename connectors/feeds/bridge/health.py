"""What the bridge reports: its counters and health line, bounded whatever the feed sends.

A feed of a million distinct `ev` values must not grow memory or the health line, so event
types are counted by name only up to MAX_EVENT_TYPES (short ones, first seen first) and the
rest as OTHER; statuses and repeated warnings are logged 1 in 2**n (`power_of_two`), and any
JSON value the feed puts where text is expected is cut short (`bounded`) before it is logged.
"""

from __future__ import annotations

import time
from collections import Counter
from operator import attrgetter
from typing import Any, Final

from connectors.feeds.bridge.frames import Head

MAX_EVENT_TYPES: Final = 32  # distinct `ev` values counted by name; the rest as OTHER
MAX_EVENT_TYPE_CHARS: Final = 16
OTHER: Final = "(other)"


def power_of_two(n: int) -> bool:
    """For logging the 1st, 2nd, 4th, 8th ... occurrence, not every one."""
    return n & (n - 1) == 0


def bounded(value: Any, limit: int) -> str:
    """A status field of any JSON type as bounded text for logs and decisions."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_ev = attrgetter("ev")


class Stats:
    """Counters the health line reports, bounded whatever the feed sends.

    `events_in` counts what the feed sent per event type (statuses aside), `out` what went to its
    topic; `acked`/`in_flight` come from the producer (Kafka reports failures only, so a
    successful delivery costs no Python call). The event-time gap is sampled once per frame.
    At most MAX_EVENT_TYPES event types are counted by name (short ones, first seen first);
    any other is counted as OTHER.
    """

    def __init__(self) -> None:
        self.events_in: Counter[str] = Counter()  # includes "status", not reported
        self.not_forwarded: Counter[str] = Counter()  # ignored types and dead-lettered events, by label
        self.types: set[str] = {"T", "Q", "A", "AM", "status", OTHER}
        self.handed = 0  # records handed to the producer (events, dead letters, spooled records)
        self.reconnects = 0
        self.delivery_errors = 0
        self.dead_letters: Counter[str] = Counter()  # by kind
        self.ignored = 0  # valid events of a type with no topic (e.g. LULD)
        self.gap_samples = 0
        self.gap_ms_sum = 0
        self.gap_ms_max = 0

    def label(self, ev: str) -> str:
        """`ev` itself while it is one of the types counted by name, else OTHER."""
        if ev in self.types:
            return ev
        if len(self.types) < MAX_EVENT_TYPES + 6 and len(ev) <= MAX_EVENT_TYPE_CHARS:
            self.types.add(ev)
            return ev
        return OTHER

    def count_frame(self, heads: list[Head]) -> None:
        counts = self.events_in
        known = len(counts)
        counts.update(map(_ev, heads))  # one C loop per frame
        if len(counts) > known:  # a type not seen before: keep it by name only if there is room
            for ev in [ev for ev in counts if ev not in self.types]:
                label = self.label(ev)
                if label != ev:
                    counts[label] += counts.pop(ev)

    def events_total(self) -> int:
        return sum(self.events_in.values()) - self.events_in["status"]

    def sample_gap(self, event_ms: int) -> None:
        gap = time.time_ns() // 1_000_000 - event_ms
        self.gap_samples += 1
        self.gap_ms_sum += gap
        if gap > self.gap_ms_max:
            self.gap_ms_max = gap

    def events_out(self) -> dict[str, int]:
        out = {ev: n - self.not_forwarded[ev] for ev, n in self.events_in.items()
               if ev != "status" and n > self.not_forwarded[ev]}  # fmt: skip
        if self.dead_letters:
            out["dead_letter"] = sum(self.dead_letters.values())
        return out

    def line(self, in_flight: int) -> str:
        """One health line; the gap figures cover the frames since the previous line."""
        mean = self.gap_ms_sum / self.gap_samples if self.gap_samples else 0.0
        events_in = {ev: n for ev, n in self.events_in.items() if ev != "status"}
        line = (
            f"health in={events_in} out={self.events_out()} acked={self.handed - in_flight} "
            f"in_flight={in_flight} reconnects={self.reconnects} delivery_errors={self.delivery_errors} "
            f"malformed={self.dead_letters['malformed']} ignored={self.ignored} "
            f"too_large={self.dead_letters['too_large']} "
            f"event_to_publish_ms(mean={mean:.0f} max={self.gap_ms_max})"
        )
        self.gap_samples = self.gap_ms_sum = self.gap_ms_max = 0
        return line
