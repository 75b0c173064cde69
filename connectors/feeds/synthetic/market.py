"""The synthetic feed's market model: symbols, prices, exchanges, lot sizes, sale conditions, and
the ways a record can be broken.

The trade profiles are mostly regular sales; the rest exercise every consolidated update rule
the bars depend on (the rules themselves are `schemas.conditions`'s). The tables are drawn from
with one random number each (`quantile_table`), which keeps the generator's hot path cheap.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from bisect import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar, cast

import orjson

# Polygon stock exchange ids with a rough share of trades (sums to 100); 4 = FINRA TRF/ADF.
EXCHANGE_SHARE: Final = {
    4: 33,
    12: 14,
    11: 8,
    10: 7,
    19: 6,
    8: 6,
    21: 5,
    15: 4,
    17: 3,
    7: 3,
    18: 3,
    2: 2,
    1: 2,
    3: 2,
    9: 1,
    20: 1,
}
TRF_EXCHANGE: Final = 4
ROUND_LOTS: Final = (1,) * 40 + (2,) * 20 + (3,) * 10 + (4,) * 6 + (5,) * 8 + (6, 7, 8, 9) + (10,) * 6 + (15, 20, 25, 30, 50, 100)

ROUND, ODD, MIXED, BLOCK = range(4)
T = TypeVar("T")
NO_CONDITIONS: Final[list[int]] = []  # shared; omitted on the wire like Polygon's regular sales


@dataclass(frozen=True, slots=True)
class TradeProfile:
    """A kind of trade: its sale conditions, size class, and whether it prints off the market."""

    weight: int
    conditions: tuple[int, ...]
    size_kind: int
    off_market: bool = False  # priced away from the last sale and leaves the walk alone


# Mostly regular sales; the rest exercise every consolidated update rule the bars depend on.
PROFILES: Final = (
    TradeProfile(4300, (), ROUND),
    TradeProfile(600, (), MIXED),
    TradeProfile(1100, (14,), ROUND),
    TradeProfile(500, (14, 41), ROUND),
    TradeProfile(200, (41,), ROUND),
    TradeProfile(40, (), BLOCK),
    TradeProfile(2000, (37,), ODD),  # odd lot: volume only
    TradeProfile(500, (14, 37), ODD),
    TradeProfile(100, (14, 37, 41), ODD),
    TradeProfile(100, (12,), ROUND),  # Form T: full update for intraday bars
    TradeProfile(20, (12, 37), ODD),
    TradeProfile(50, (10,), ROUND, True),  # derivatively priced: high/low + volume
    TradeProfile(40, (2,), ROUND, True),  # average price: volume only
    TradeProfile(8, (15,), BLOCK, True),  # official close: nothing
    TradeProfile(8, (16,), BLOCK, True),  # official open: nothing
    TradeProfile(20, (17,), ROUND, True),  # opening trade: high/low + volume
    TradeProfile(30, (22,), ROUND, True),  # prior reference price: high/low + volume
    TradeProfile(30, (32,), ROUND, True),  # sold out of sequence: high/low + volume
)


def make_symbols(n: int, rng: random.Random) -> list[str]:
    """`n` unique 1-5 letter tickers, mostly 3-4 letters like listed US stocks."""
    lengths = (1,) + (2,) * 5 + (3,) * 30 + (4,) * 54 + (5,) * 10
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    seen: set[str] = set()
    symbols: list[str] = []
    while len(symbols) < n:
        length = lengths[int(rng.random() * len(lengths))]
        sym = "".join(letters[int(rng.random() * 26)] for _ in range(length))
        if sym not in seen:
            seen.add(sym)
            symbols.append(sym)
    return symbols


def quantile_table(weights: list[int], items: list[T], size: int) -> list[T]:
    """`size` slots filled in proportion to `weights`: one random index picks an item."""
    cum = list(itertools.accumulate(weights))
    return [items[bisect(cum, (j + 0.5) * cum[-1] / size)] for j in range(size)]


@functools.cache
def walk_steps(width: float) -> tuple[int, ...]:
    """256 equally likely price steps in cents, uniform in +-width/2 (shared per width)."""
    return tuple(round(((j + 0.5) / 256 - 0.5) * width) for j in range(256))


def popularity_cum_weights(n: int, exponent: float = 0.9) -> list[float]:
    """Zipf-like activity: symbol k trades ~ (k+1)^-exponent as often as the busiest."""
    return list(itertools.accumulate((k + 1) ** -exponent for k in range(n)))


def base_price_cents(rng: random.Random) -> int:
    """Log-normal-ish listed price, median ~$25, clipped to $1-$600."""
    dollars = math.exp(rng.gauss(math.log(25.0), 1.1))
    return round(min(600.0, max(1.0, dollars)) * 100)


def _with(good: dict[str, object], **changes: object) -> bytes:
    return orjson.dumps(good | changes)


def _without(good: dict[str, object], field: str) -> bytes:
    return orjson.dumps({k: v for k, v in good.items() if k != field})


MALFORMATIONS: Final[tuple[Callable[[dict[str, object], Callable[[], float]], bytes], ...]] = (
    lambda g, r: orjson.dumps(g)[: 10 + int(r() * 30)],  # truncated JSON
    lambda g, r: b"\x00\xffnot json " + str(g["sym"]).encode(),  # not JSON at all
    lambda g, r: _with(g, p=str(g["p"])),  # price as a string
    lambda g, r: _with(g, s=100.5),  # fractional size in the integer field
    lambda g, r: _with(g, t="2026-11-02T14:30:00Z"),  # ISO time instead of epoch ms
    lambda g, r: _with(g, c=37),  # conditions not a list
    lambda g, r: _without(g, ("p", "s", "t", "sym", "i", "x")[int(r() * 6)]),  # missing required
    lambda g, r: _with(g, p=0.0 if r() < 0.5 else -cast(float, g["p"])),  # price <= 0 (`p` is a float)
    lambda g, r: _with(g, s=-100),  # negative size
    lambda g, r: _with(g, ev=("X", "TT", "trade")[int(r() * 3)]),  # unknown event type
    lambda g, r: _without(g, "ev"),  # no event type
    lambda g, r: orjson.dumps([g]),  # a frame (array) where one event object is expected
)
