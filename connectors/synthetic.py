"""Synthetic Polygon stocks feed: realistic trades plus the anomalies the flow must survive.

The generator is pure and deterministic (same config => byte-identical events), so tests and
benchmarks can replay exactly the same stream, and it knows nothing about Kafka: it yields
`FeedEvent`s (topic kind, key, value, label) that the CLI (`python -m connectors.synthetic`)
publishes. Values are Polygon wire JSON of one event, encoded with `schemas.polygon`.

Time model: the *feed clock* advances by `1000 / rate` ms per primary event, starting at
`start_ms` (or reads `clock()` when given, for real-time runs). An on-time trade is stamped
with the feed clock; out-of-order, late and too-late trades are stamped `clock - delay`, where
the delay is drawn uniformly from `OUT_OF_ORDER_MS`, `LATE_MS` and `TOO_LATE_MS`. Every event
carries the feed clock it was emitted at (`FeedEvent.clock_ms`).

Per-second `A` aggregates summarise the on-time trades (label "trade") of each symbol-second with
the consolidated update rules, and are emitted once the feed clock has left that second. A second
whose trades cannot set all four prices (say, only odd lots) gets no `A`: the wire format has no
way to carry volume without prices.

>>> first = next(iter(SyntheticFeed(FeedConfig(count=1, symbols=10))))
>>> first.topic_kind, first.label, first.clock_ms == DEFAULT_START_MS
('trades', 'trade', True)
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import random
import signal
import sys
import time
from bisect import bisect
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, NamedTuple, TypeVar

import orjson

from schemas.conditions import ALL, HIGH_LOW, OPEN_CLOSE, VOLUME, ConditionRules
from schemas.polygon import Quote, SecondAgg, Trade, encode_event

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message, Producer

# --- public vocabulary -------------------------------------------------------------------

TRADES, QUOTES, SECOND_AGGS = "trades", "quotes", "second_aggs"
TRADE, DUPLICATE, OUT_OF_ORDER, LATE, TOO_LATE, MALFORMED, QUOTE, SECOND_AGG = (
    "trade",
    "duplicate",
    "out_of_order",
    "late",
    "too_late",
    "malformed",
    "quote",
    "second_agg",
)
LABELS: Final = (TRADE, DUPLICATE, OUT_OF_ORDER, LATE, TOO_LATE, MALFORMED, QUOTE, SECOND_AGG)

DEFAULT_START_MS: Final = 1_793_629_800_000  # Mon 2026-11-02 14:30:00 UTC = 09:30 New York (open)
OUT_OF_ORDER_MS: Final = (100, 5_000)  # arrives this much after its SIP time
LATE_MS: Final = (60_000, 840_000)  # 1-14 min: inside the default 15-minute allowed lateness
TOO_LATE_MS: Final = (1_200_001, 1_800_000)  # > 20 min: even its bar's end is > 19 min old
DUPLICATE_WINDOW: Final = 512  # a duplicate re-sends one of the last N trades (and <= 1 s of events)



class FeedEvent(NamedTuple):
    """One Kafka record to publish, with what it is for (`label`) and when (`clock_ms`)."""

    topic_kind: str  # "trades" | "quotes" | "second_aggs"
    key: bytes  # symbol
    value: bytes  # Polygon wire JSON of one event (or deliberately broken bytes)
    label: str  # one of LABELS
    clock_ms: int  # feed clock when emitted


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """What to generate. Ratios are fractions of the primary (non-aggregate) events."""

    seed: int = 1
    symbols: int = 4000
    rate: float = 2000.0  # primary events per second of event time
    start_ms: int = DEFAULT_START_MS
    count: int | None = None  # primary events; None with seconds=None => endless
    seconds: float | None = None  # alternative to count: seconds of event time
    duplicate_ratio: float = 0.002
    out_of_order_ratio: float = 0.01
    late_ratio: float = 0.001
    too_late_ratio: float = 0.0
    malformed_ratio: float = 0.0
    quote_ratio: float = 0.0
    second_aggs: bool = False  # also emit `A` aggregates of each symbol-second's on-time trades
    # "regular": only trades that update every bar field, so bars built from `A` equal bars
    # built from the trades (with "realistic" odd lots etc., seconds without a price-setting
    # trade get no `A` and their volume is missing from `A`-built bars).
    condition_mix: Literal["realistic", "regular"] = "realistic"

    def __post_init__(self) -> None:
        if not 1 <= self.symbols <= 100_000:
            raise ValueError("symbols must be in 1..100000")
        if self.rate <= 0:
            raise ValueError("rate must be > 0")
        if self.count is not None and self.seconds is not None:
            raise ValueError("give count or seconds, not both")
        if (self.count is not None and self.count < 0) or (self.seconds is not None and self.seconds < 0):
            raise ValueError("count/seconds must be >= 0")
        if self.condition_mix not in ("realistic", "regular"):
            raise ValueError("condition_mix must be 'realistic' or 'regular'")
        ratios = self.anomaly_ratios()
        if any(r < 0 for r in ratios.values()) or sum(ratios.values()) > 1:
            raise ValueError(f"ratios must be >= 0 and sum to <= 1: {ratios}")

    def anomaly_ratios(self) -> dict[str, float]:
        return {
            DUPLICATE: self.duplicate_ratio,
            OUT_OF_ORDER: self.out_of_order_ratio,
            LATE: self.late_ratio,
            TOO_LATE: self.too_late_ratio,
            MALFORMED: self.malformed_ratio,
            QUOTE: self.quote_ratio,
        }

    def primary_events(self) -> int | None:
        """How many primary events to emit (None = endless)."""
        if self.seconds is not None:
            return int(self.seconds * self.rate)
        return self.count


# --- market model tables -----------------------------------------------------------------

# Polygon stock exchange ids with a rough share of trades (sums to 100); 4 = FINRA TRF/ADF.
EXCHANGE_SHARE: Final = {4: 33, 12: 14, 11: 8, 10: 7, 19: 6, 8: 6, 21: 5, 15: 4, 17: 3, 7: 3, 18: 3, 2: 2, 1: 2, 3: 2, 9: 1, 20: 1}
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


@functools.lru_cache(maxsize=None)
def walk_steps(width: float) -> tuple[int, ...]:
    """256 equally likely price steps in cents, uniform in +-width/2 (shared per width)."""
    return tuple(round(((j + 0.5) / 256 - 0.5) * width) for j in range(256))


def popularity_cum_weights(n: int, exponent: float = 0.9) -> list[float]:
    """Zipf-like activity: symbol k trades ~ (k+1)^-exponent as often as the busiest."""
    return list(itertools.accumulate((k + 1) ** -exponent for k in range(n)))


# --- the generator -----------------------------------------------------------------------


class _SecondBar:
    """On-time trades of one symbol in the current second, for its `A` aggregate."""

    __slots__ = ("open", "high", "low", "close", "volume", "notional", "trades")

    def __init__(self) -> None:
        self.open: float | None = None
        self.high: float | None = None
        self.low: float | None = None
        self.close: float | None = None
        self.volume = 0
        self.notional = 0.0
        self.trades = 0

    def add(self, price: float, size: int, mask: int) -> None:
        if mask & OPEN_CLOSE:
            if self.open is None:
                self.open = price
            self.close = price
        if mask & HIGH_LOW:
            if self.high is None or price > self.high:
                self.high = price
            if self.low is None or price < self.low:
                self.low = price
        if mask & VOLUME:
            self.volume += size
            self.notional += price * size
            self.trades += 1


class SyntheticFeed:
    """Iterating yields the configured stream; each iteration replays it from the start."""

    def __init__(self, config: FeedConfig, clock: Callable[[], int] | None = None) -> None:
        self.config = config
        self.clock = clock  # real-time runs: epoch-ms wall clock; breaks determinism by design
        self.rules = ConditionRules.load()

    def __iter__(self) -> Iterator[FeedEvent]:
        return _FeedRun(self.config, self.rules, self.clock).events()


def generate(clock: Callable[[], int] | None = None, **config: object) -> Iterator[FeedEvent]:
    """Shortcut: `generate(seed=7, count=1000, late_ratio=0.01)`."""
    return iter(SyntheticFeed(FeedConfig(**config), clock))  # type: ignore[arg-type]


class _FeedRun:
    """Mutable state of one pass over the feed (prices, sequences, trade ids, recent trades)."""

    def __init__(self, config: FeedConfig, rules: ConditionRules, clock: Callable[[], int] | None) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng = random.Random(config.seed)
        self.symbols = make_symbols(config.symbols, rng)
        self.keys = [s.encode() for s in self.symbols]
        self.cum_popularity = popularity_cum_weights(config.symbols)
        self.base_cents = [_base_price_cents(rng) for _ in self.symbols]
        self.cents = list(self.base_cents)
        self.walk_steps = [walk_steps(round(max(1.2, b * 0.0008), 1)) for b in self.base_cents]
        self.tape = [1 + int(rng.random() * 3) for _ in self.symbols]
        self.sequence = [1 + int(rng.random() * 100_000) for _ in self.symbols]
        self.trade_ids = [0] * (config.symbols * 32)  # per (symbol, exchange)
        self.exchanges = [x for x, share in EXCHANGE_SHARE.items() for _ in range(share)]  # 100
        self.quote_exchanges = [x for x in self.exchanges if x != TRF_EXCHANGE]
        profiles = [(p, rules.mask(p.conditions)) for p in PROFILES]
        if config.condition_mix == "regular":
            profiles = [(p, mask) for p, mask in profiles if mask == ALL]
        self.profiles = [p for p, _ in profiles]
        self.profile_masks = [mask for _, mask in profiles]
        window = max(1, min(DUPLICATE_WINDOW, int(config.rate)))
        self.recent: deque[tuple[bytes, bytes]] = deque(maxlen=window)  # (key, value) of recent trades
        self.seconds: dict[int, _SecondBar] = {}  # symbol -> its on-time trades in the current second
        self.second_start = -1
        self.day: dict[int, list[float]] = {}  # symbol -> [day open, day volume, day notional]
        self.trade = self.trade_maker()

    # -- driver --

    def events(self) -> Iterator[FeedEvent]:
        config = self.config
        total = config.primary_events()
        cuts = list(itertools.accumulate(config.anomaly_ratios().values()))
        cut_dup, cut_ooo, cut_late, cut_too_late, cut_malformed, cut_quote = cuts
        rand = self.rng.random
        ms_per_event = 1000.0 / config.rate
        start, clock_fn, with_aggs = config.start_ms, self.clock, config.second_aggs
        trade, pick_symbol = self.trade, self.pick_symbol
        popularity = self.cum_popularity
        popularity_total = popularity[-1]
        clock = start
        for n in itertools.count() if total is None else range(total):
            clock = max(clock, clock_fn()) if clock_fn else start + int(n * ms_per_event)
            if with_aggs and clock // 1000 * 1000 != self.second_start:
                yield from self.close_second(clock)
            r = rand()
            if r >= cut_quote:
                yield trade(bisect(popularity, rand() * popularity_total), clock, clock, TRADE)
            elif r < cut_dup:
                yield self.duplicate(clock)
            elif r < cut_ooo:
                yield trade(pick_symbol(), clock - self.delay(OUT_OF_ORDER_MS), clock, OUT_OF_ORDER)
            elif r < cut_late:
                yield trade(pick_symbol(), clock - self.delay(LATE_MS), clock, LATE)
            elif r < cut_too_late:
                yield trade(pick_symbol(), clock - self.delay(TOO_LATE_MS), clock, TOO_LATE)
            elif r < cut_malformed:
                yield self.malformed(pick_symbol(), clock)
            else:
                yield self.quote(pick_symbol(), clock)
        if with_aggs:
            yield from self.close_second(clock // 1000 * 1000 + 1000)

    def pick_symbol(self) -> int:
        cum = self.cum_popularity
        return bisect(cum, self.rng.random() * cum[-1])

    def delay(self, bounds: tuple[int, int]) -> int:
        low, high = bounds
        return low + int(self.rng.random() * (high - low + 1))

    # -- trades --

    def next_sequence(self, sym: int) -> int:
        q = self.sequence[sym] + 1 + int(self.rng.random() * 4)  # increasing, not contiguous
        self.sequence[sym] = q
        return q

    def trade_maker(self) -> Callable[[int, int, int, str], FeedEvent]:
        """The hot path: a closure over locals, drawing one 64-bit random number per trade.

        `trade(symbol, t, clock, label)` makes a new trade at time `t`: last-sale prices follow a
        $0.01-tick random walk pulled gently to the symbol's base; off-market prints (average
        price, derivatively priced, ...) land up to 0.5% away and leave the walk alone.
        On-time trades also feed the symbol's current second aggregate.
        """
        rng, symbols, keys, tapes = self.rng, self.symbols, self.keys, self.tape
        getrandbits, rand = rng.getrandbits, rng.random
        last_cents, base_cents, steps = self.cents, self.base_cents, self.walk_steps
        sequence, trade_ids = self.sequence, self.trade_ids
        profiles = [
            (list(p.conditions) if p.conditions else NO_CONDITIONS, p.size_kind, p.off_market, mask)
            for p, mask in zip(self.profiles, self.profile_masks)
        ]
        profile_draw = quantile_table([p.weight for p in self.profiles], profiles, 1 << 14)
        exchange_draw = quantile_table(list(EXCHANGE_SHARE.values()), list(EXCHANGE_SHARE), 128)
        lot_draw = quantile_table([1] * len(ROUND_LOTS), [100 * lot for lot in ROUND_LOTS], 128)
        trf_draw = quantile_table([5, 3], [201, 202], 8)  # FINRA/NYSE TRF, FINRA/Nasdaq TRF
        remember, seconds, with_aggs = self.recent.append, self.seconds, self.config.second_aggs
        new_event = tuple.__new__

        def trade(sym: int, t: int, clock: int, label: str) -> FeedEvent:
            bits = getrandbits(64)
            conditions, size_kind, off_market, mask = profile_draw[bits & 0x3FFF]
            cents = last_cents[sym]
            if off_market:
                away = 1 + int(rand() * max(5, cents * 0.005))
                cents = cents + away if bits >> 63 or cents - away < 1 else cents - away
            else:
                cents += steps[sym][(bits >> 14) & 0xFF]
                if not (bits >> 22) & 0xF:  # 1 in 16: pull towards the base price
                    cents += round((base_cents[sym] - cents) * 0.03)
                if cents < 1:
                    cents = 1
                last_cents[sym] = cents
            draw = (bits >> 26) & 0xFFFF
            if size_kind == ROUND:
                size = lot_draw[draw & 0x7F]
            elif size_kind == ODD:
                size = 1 + draw % 99
            elif size_kind == MIXED:
                size = 101 + draw % 899
            else:
                size = 10_000 + 100 * (draw % 400)
            x = exchange_draw[(bits >> 42) & 0x7F]
            slot = sym * 32 + x
            trade_ids[slot] = trade_id = trade_ids[slot] + 1
            trf_id: int | None = None
            trf_time: int | None = None
            if x == TRF_EXCHANGE:  # reported through a FINRA trade reporting facility
                trf_id, trf_time = trf_draw[(bits >> 51) & 7], t - ((bits >> 54) & 0x1F)
            sequence[sym] = q = sequence[sym] + 1 + ((bits >> 49) & 3)  # increasing, not contiguous
            price = cents / 100
            value = encode_event(
                Trade(
                    symbol=symbols[sym],
                    exchange=x,
                    trade_id=str(trade_id),
                    tape=tapes[sym],
                    price=price,
                    size=size,
                    conditions=conditions,
                    timestamp=t,
                    sequence=q,
                    trf_id=trf_id,
                    trf_timestamp=trf_time,
                )
            )
            key = keys[sym]
            if label is not TOO_LATE:
                remember((key, value))
            if with_aggs and label is TRADE:
                bar = seconds.get(sym)
                if bar is None:
                    bar = seconds[sym] = _SecondBar()
                bar.add(price, size, mask)
            return new_event(FeedEvent, (TRADES, key, value, label, clock))

        return trade

    def duplicate(self, clock: int) -> FeedEvent:
        """Re-send the exact bytes of a recent trade (or a new trade if there is none yet)."""
        if not self.recent:
            return self.trade(self.pick_symbol(), clock, clock, TRADE)
        key, value = self.recent[int(self.rng.random() * len(self.recent))]
        return FeedEvent(TRADES, key, value, DUPLICATE, clock)

    # -- quotes --

    def quote(self, sym: int, clock: int) -> FeedEvent:
        rand = self.rng.random
        cents = self.cents[sym]
        spread = max(1, int(cents * 0.0005))
        bid = max(1, cents - int(rand() * (spread + 1)))
        ask = bid + 1 + int(rand() * spread)
        value = encode_event(
            Quote(
                symbol=self.symbols[sym],
                bid_exchange=self.quote_exchanges[int(rand() * len(self.quote_exchanges))],
                bid_price=bid / 100,
                bid_size=100 * ROUND_LOTS[int(rand() * len(ROUND_LOTS))],
                ask_exchange=self.quote_exchanges[int(rand() * len(self.quote_exchanges))],
                ask_price=ask / 100,
                ask_size=100 * ROUND_LOTS[int(rand() * len(ROUND_LOTS))],
                timestamp=clock,
                sequence=self.next_sequence(sym),
                tape=self.tape[sym],
            )
        )
        return FeedEvent(QUOTES, self.keys[sym], value, QUOTE, clock)

    # -- per-second aggregates --

    def close_second(self, clock: int) -> Iterator[FeedEvent]:
        """Emit `A` for the second that just ended (symbols in first-trade order)."""
        start = self.second_start
        for sym, bar in self.seconds.items():
            if bar.open is None or bar.high is None or bar.low is None or bar.close is None:
                continue  # no trade that may set prices (e.g. only odd lots): Polygon sends none
            yield FeedEvent(SECOND_AGGS, self.keys[sym], self.second_agg(sym, bar, start), SECOND_AGG, clock)
        self.seconds.clear()
        self.second_start = clock // 1000 * 1000

    def second_agg(self, sym: int, bar: _SecondBar, start: int) -> bytes:
        day = self.day.get(sym)
        if day is None:
            day = self.day[sym] = [bar.open, 0, 0.0]  # type: ignore[list-item]
        day[1] += bar.volume
        day[2] += bar.notional
        return encode_event(
            SecondAgg(
                symbol=self.symbols[sym],
                volume=bar.volume,
                day_volume=int(day[1]),
                day_open=day[0],
                vwap=bar.notional / bar.volume,  # unrounded (Polygon: 4 decimals) so sums stay exact
                open=bar.open,  # type: ignore[arg-type]
                close=bar.close,  # type: ignore[arg-type]
                high=bar.high,  # type: ignore[arg-type]
                low=bar.low,  # type: ignore[arg-type]
                day_vwap=day[2] / day[1],
                average_size=bar.volume / bar.trades,  # unrounded: volume / z gives the trade count back
                start=start,
                end=start + 1000,
            )
        )

    # -- malformed records --

    def malformed(self, sym: int, clock: int) -> FeedEvent:
        """A record the flow must dead-letter: broken JSON, wrong types, missing fields, ..."""
        rand = self.rng.random
        good = {
            "ev": "T",
            "sym": self.symbols[sym],
            "x": self.exchanges[int(rand() * 100)],
            "i": str(1_000_000_000 + int(rand() * 1_000_000_000)),
            "z": self.tape[sym],
            "p": max(self.cents[sym], 1) / 100,
            "s": 100,
            "t": clock,
            "q": self.sequence[sym],
        }
        kind = MALFORMATIONS[int(rand() * len(MALFORMATIONS))]
        return FeedEvent(TRADES, self.keys[sym], kind(good, rand), MALFORMED, clock)


def _base_price_cents(rng: random.Random) -> int:
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
    lambda g, r: _with(g, p=0.0 if r() < 0.5 else -float(g["p"])),  # type: ignore[arg-type]  # price <= 0
    lambda g, r: _with(g, s=-100),  # negative size
    lambda g, r: _with(g, ev=("X", "TT", "trade")[int(r() * 3)]),  # unknown event type
    lambda g, r: _without(g, "ev"),  # no event type
    lambda g, r: orjson.dumps([g]),  # a frame (array) where one event object is expected
)


# --- CLI: publish to Kafka ---------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m connectors.synthetic",
        description="Publish a synthetic Polygon feed to Kafka (topics and bootstrap from Settings/env).",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--symbols", type=int, default=4000)
    p.add_argument("--rate", type=float, default=2000.0, help="primary events per second of event time")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--count", type=int, help="primary events to send (default: until Ctrl-C)")
    stop.add_argument("--seconds", type=float, help="seconds of event time to send")
    p.add_argument("--start-ms", type=int, default=DEFAULT_START_MS, help="first event time (not with --realtime)")
    p.add_argument("--realtime", action="store_true", help="pace to the wall clock and stamp wall-clock times")
    p.add_argument("--duplicate-ratio", type=float, default=0.002)
    p.add_argument("--out-of-order-ratio", type=float, default=0.01)
    p.add_argument("--late-ratio", type=float, default=0.001)
    p.add_argument("--too-late-ratio", type=float, default=0.0)
    p.add_argument("--malformed-ratio", type=float, default=0.0)
    p.add_argument("--quotes", type=float, default=0.0, metavar="RATIO", help="fraction of events that are quotes")
    p.add_argument("--second-aggs", action="store_true", help="also publish per-second `A` aggregates")
    p.add_argument(
        "--condition-mix",
        choices=("realistic", "regular"),
        default="realistic",
        help="regular = only trades that update every bar field (A-built bars then equal trade-built bars)",
    )
    p.add_argument("--create-topics", action="store_true", help="create missing topics (Settings.topic_partitions)")
    p.add_argument("--no-idempotence", action="store_true", help="for brokers without idempotent producers")
    p.add_argument("--progress-s", type=float, default=2.0, help="seconds between progress lines")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace, start_ms: int) -> FeedConfig:
    return FeedConfig(
        seed=args.seed,
        symbols=args.symbols,
        rate=args.rate,
        start_ms=start_ms,
        count=args.count,
        seconds=args.seconds,
        duplicate_ratio=args.duplicate_ratio,
        out_of_order_ratio=args.out_of_order_ratio,
        late_ratio=args.late_ratio,
        too_late_ratio=args.too_late_ratio,
        malformed_ratio=args.malformed_ratio,
        quote_ratio=args.quotes,
        second_aggs=args.second_aggs,
        condition_mix=args.condition_mix,
    )


def producer_config(bootstrap: str, idempotent: bool) -> dict[str, object]:
    """Throughput settings: small linger, big lz4 batches; idempotent acks=all unless disabled."""
    return {
        "bootstrap.servers": bootstrap,
        "linger.ms": 10,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "enable.idempotence": idempotent,
        "acks": "all" if idempotent else "1",
        "delivery.report.only.error": True,  # a Python callback per record would halve throughput
    }


def check_kafka(bootstrap: str, topics: list[str], create: bool, partitions: int) -> None:
    """Fail fast (SystemExit with a clear message) if the broker or topics are missing."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})  # one clear message, no retry spam
    try:
        existing = set(admin.list_topics(timeout=5).topics)
    except KafkaException as e:
        raise SystemExit(f"Kafka unreachable at KAFKA_BOOTSTRAP_SERVERS={bootstrap!r}: {e}") from None
    missing = [t for t in topics if t not in existing]
    if not missing:
        return
    if not create:
        raise SystemExit(f"missing Kafka topics {missing} at {bootstrap}; create them or pass --create-topics")
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing])
    for topic, future in futures.items():
        try:
            future.result(timeout=10)
        except KafkaException as e:
            raise SystemExit(f"could not create topic {topic!r}: {e}") from None
    print(f"created topics {missing} ({partitions} partitions)", file=sys.stderr)


class _Delivery:
    """Delivery-report callback; with `delivery.report.only.error` it only sees failures."""

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: str | None = None
        self.fatal: str | None = None  # e.g. a broker that refuses idempotent producers

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = str(err)

    def on_client_error(self, err: KafkaError) -> None:
        if err.fatal() and self.fatal is None:
            self.fatal = str(err)


def publish(
    feed: Iterator[FeedEvent], producer: Producer, delivery: _Delivery, topics: dict[str, str], args: argparse.Namespace
) -> int:
    """Produce every event; returns the process exit code. Ctrl-C or SIGTERM stop cleanly."""
    sent = dict.fromkeys(LABELS, 0)
    started = last_report = time.monotonic()
    produce, poll, realtime, primary, n = producer.produce, producer.poll, args.realtime, 0, 0
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when a script started us with SIGINT ignored
    try:
        for topic_kind, key, value, label, clock in feed:
            if realtime:
                if label is not SECOND_AGG:
                    _pace(started, primary, args.rate)
                    primary += 1
                elif clock > (now_ms := _wall_ms()):  # the last second's aggregates, at the very end
                    time.sleep((clock - now_ms) / 1000)
            try:
                produce(topics[topic_kind], value, key)
            except BufferError:
                _produce_when_room(producer, topics[topic_kind], key, value)
            sent[label] += 1
            n += 1
            if realtime or not n & 0x3FF:  # flat out: every 1024 records serve callbacks, maybe report
                poll(0)
                if delivery.fatal:
                    print(f"fatal producer error: {delivery.fatal} (try --no-idempotence)", file=sys.stderr)
                    break
                now = time.monotonic()
                if now - last_report >= args.progress_s:
                    last_report = now
                    total = sum(sent.values())
                    print(
                        f"sent {total:,} ({total / (now - started):,.0f}/s) in flight {len(producer):,} "
                        f"failed {delivery.failed:,}",
                        file=sys.stderr,
                        flush=True,
                    )
    except KeyboardInterrupt:
        print("interrupted, flushing", file=sys.stderr)
    unflushed = producer.flush(30)
    elapsed = time.monotonic() - started
    total = sum(sent.values())
    labels = " ".join(f"{label}={count:,}" for label, count in sent.items() if count)
    print(
        f"done: {total:,} events in {elapsed:.2f}s = {total / max(elapsed, 1e-9):,.0f} events/s; {labels}; "
        f"acked {total - delivery.failed - unflushed:,} failed {delivery.failed:,} unflushed {unflushed:,}"
        + (f"; first error: {delivery.first_error}" if delivery.first_error else ""),
        flush=True,
    )
    return 0 if delivery.failed == 0 and unflushed == 0 and not delivery.fatal else 1


def make_producer(bootstrap: str, idempotent: bool) -> tuple[Producer, _Delivery]:
    """A producer and the callback that counts its delivery failures."""
    from confluent_kafka import Producer

    delivery = _Delivery()
    callbacks = {"on_delivery": delivery, "error_cb": delivery.on_client_error}
    return Producer(producer_config(bootstrap, idempotent) | callbacks), delivery


def _produce_when_room(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    """The local queue is full: serve delivery reports until the record fits."""
    while True:
        producer.poll(0.05)
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            continue


def _pace(started: float, primary: int, rate: float) -> None:
    """Sleep until this primary event is due on the wall clock."""
    ahead = started + primary / rate - time.monotonic()
    if ahead > 0.001:
        time.sleep(ahead)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def main(argv: list[str] | None = None) -> int:
    from confluent_kafka import KafkaException

    from flows.settings import Settings

    args = parse_args(argv)
    settings = Settings()
    topics = {TRADES: settings.topic_trades, QUOTES: settings.topic_quotes, SECOND_AGGS: settings.topic_second_aggs}
    try:
        config = config_from_args(args, _wall_ms() if args.realtime else args.start_ms)
    except ValueError as e:
        raise SystemExit(f"bad options: {e}") from None
    needed = [topics[TRADES]] + [topics[QUOTES]] * (config.quote_ratio > 0) + [topics[SECOND_AGGS]] * config.second_aggs
    check_kafka(settings.kafka_bootstrap_servers, needed, args.create_topics, settings.topic_partitions)
    try:
        producer, delivery = make_producer(settings.kafka_bootstrap_servers, not args.no_idempotence)
    except KafkaException as e:
        raise SystemExit(f"cannot create Kafka producer: {e}") from None
    feed = iter(SyntheticFeed(config, _wall_ms if args.realtime else None))
    print(
        f"publishing to {settings.kafka_bootstrap_servers} {sorted(set(needed))} "
        f"({'real time' if args.realtime else 'as fast as possible'}), idempotence={not args.no_idempotence}",
        file=sys.stderr,
    )
    return publish(feed, producer, delivery, topics, args)


if __name__ == "__main__":
    sys.exit(main())
