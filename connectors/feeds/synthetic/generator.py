"""The synthetic Polygon stocks feed: realistic trades plus the anomalies the flow must survive.

The generator is pure and deterministic (same config => byte-identical events), so tests and
benchmarks can replay exactly the same stream, and it knows nothing about Kafka: it yields
`FeedEvent`s (topic kind, key, value, label) that the program (`python -m
connectors.feeds.synthetic`) publishes. Values are Polygon wire JSON of one event, encoded with
`schemas.polygon`; the timing is `connectors.feeds.synthetic.config`'s, the market model
`connectors.feeds.synthetic.market`'s.

Per-second `A` aggregates summarise the on-time trades (label "trade") of each symbol-second with
the consolidated update rules, and are emitted once the feed clock has left that second. A second
whose trades cannot set all four prices (say, only odd lots) gets no `A`: the wire format has no
way to carry volume without prices.

>>> first = next(iter(SyntheticFeed(FeedConfig(count=1, symbols=10))))
>>> first.topic_kind, first.label, first.clock_ms == DEFAULT_START_MS
('trades', 'trade', True)
"""

from __future__ import annotations

import itertools
import random
from bisect import bisect
from collections import deque
from collections.abc import Callable, Iterator

from connectors.feeds.synthetic.config import (
    DEFAULT_START_MS,
    DUPLICATE,
    DUPLICATE_WINDOW,
    LATE,
    LATE_MS,
    MALFORMED,
    OUT_OF_ORDER,
    OUT_OF_ORDER_MS,
    QUOTE,
    QUOTES,
    SECOND_AGG,
    SECOND_AGGS,
    TOO_LATE,
    TOO_LATE_MS,
    TRADE,
    TRADES,
    FeedConfig,
    FeedEvent,
)
from connectors.feeds.synthetic.market import (
    EXCHANGE_SHARE,
    MALFORMATIONS,
    MIXED,
    NO_CONDITIONS,
    ODD,
    PROFILES,
    ROUND,
    ROUND_LOTS,
    TRF_EXCHANGE,
    base_price_cents,
    make_symbols,
    popularity_cum_weights,
    quantile_table,
    walk_steps,
)
from schemas.conditions import ALL, HIGH_LOW, OPEN_CLOSE, VOLUME, ConditionRules
from schemas.polygon import Quote, SecondAgg, Trade, encode_event

__all__ = ["DEFAULT_START_MS", "FeedConfig", "FeedEvent", "SyntheticFeed", "generate"]


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
    return iter(SyntheticFeed(FeedConfig(**config), clock))  # type: ignore[arg-type]  # FeedConfig checks names and values


class _FeedRun:
    """Mutable state of one pass over the feed (prices, sequences, trade ids, recent trades)."""

    def __init__(self, config: FeedConfig, rules: ConditionRules, clock: Callable[[], int] | None) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng = random.Random(config.seed)
        self.symbols = make_symbols(config.symbols, rng)
        self.keys = [s.encode() for s in self.symbols]
        self.cum_popularity = popularity_cum_weights(config.symbols)
        self.base_cents = [base_price_cents(rng) for _ in self.symbols]
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
            for p, mask in zip(self.profiles, self.profile_masks, strict=True)
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
            ohlc = (bar.open, bar.high, bar.low, bar.close)
            yield FeedEvent(SECOND_AGGS, self.keys[sym], self.second_agg(sym, bar, ohlc, start), SECOND_AGG, clock)
        self.seconds.clear()
        self.second_start = clock // 1000 * 1000

    def second_agg(self, sym: int, bar: _SecondBar, ohlc: tuple[float, float, float, float], start: int) -> bytes:
        """The `A` of one symbol-second; `ohlc` are the bar's prices, all set (else it has no `A`)."""
        open_, high, low, close = ohlc
        day = self.day.get(sym)
        if day is None:
            day = self.day[sym] = [open_, 0, 0.0]
        day[1] += bar.volume
        day[2] += bar.notional
        return encode_event(
            SecondAgg(
                symbol=self.symbols[sym],
                volume=bar.volume,
                day_volume=int(day[1]),
                day_open=day[0],
                vwap=bar.notional / bar.volume,  # unrounded (Polygon: 4 decimals) so sums stay exact
                open=open_,
                close=close,
                high=high,
                low=low,
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
