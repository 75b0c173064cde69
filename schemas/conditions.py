"""Which trades update which bar fields: Polygon's consolidated sale-condition rules.

The rules are data (`conditions.csv`, Polygon's `/v3/reference/conditions` table for
stock trades, `update_rules.consolidated`). A trade updates a field only if every one of
its conditions allows it; a trade with no condition is a regular sale.

>>> rules = ConditionRules.load()
>>> rules.mask([]) == ALL
True
>>> rules.mask([37]) == VOLUME          # odd lot: volume only
True
>>> rules.mask([14, 10]) == HIGH_LOW | VOLUME
True
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

HIGH_LOW = 1
OPEN_CLOSE = 2
VOLUME = 4
ALL = HIGH_LOW | OPEN_CLOSE | VOLUME

RULES_CSV = Path(__file__).with_name("conditions.csv")
MAX_KNOWN_COMBINATIONS = 4096  # the feed uses a few dozen; beyond this, masks are computed each time

INTRADAY_OVERRIDES: Mapping[int, int] = {
    # Form T (extended hours): the consolidated table says volume only, but Polygon's
    # intraday (minute) bars do include these trades' prices.
    12: ALL,
}


class UnknownCondition(ValueError):
    """A trade carries a condition code that is not in the rule table."""


class ConditionRules:
    """Maps a trade's condition codes to a bit mask of the bar fields it may update."""

    __slots__ = ("_single", "known")

    def __init__(self, masks: Mapping[int, int]) -> None:
        self._single: dict[int, int] = dict(masks)
        # Every combination met so far, keyed by the condition tuple; hot loops read it directly.
        self.known: dict[tuple[int, ...], int] = {(code,): mask for code, mask in masks.items()}

    @classmethod
    def load(cls, path: Path = RULES_CSV, overrides: Mapping[int, int] = INTRADAY_OVERRIDES) -> ConditionRules:
        masks: dict[int, int] = {}
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                mask = (
                    (HIGH_LOW if row["updates_high_low"] == "true" else 0)
                    | (OPEN_CLOSE if row["updates_open_close"] == "true" else 0)
                    | (VOLUME if row["updates_volume"] == "true" else 0)
                )
                masks[int(row["id"])] = mask
        masks.update(overrides)
        return cls(masks)

    def mask(self, conditions: Sequence[int]) -> int:
        """Fields a trade with these conditions may update; raises `UnknownCondition`."""
        if not conditions:
            return ALL
        key = tuple(conditions)
        found = self.known.get(key)
        if found is None:
            found = ALL
            for code in key:
                one = self._single.get(code)
                if one is None:
                    raise UnknownCondition(f"unknown sale condition {code} (not in the rule table)")
                found &= one
            if len(self.known) < MAX_KNOWN_COMBINATIONS:  # a flood of odd combinations must not grow it
                self.known[key] = found
        return found
