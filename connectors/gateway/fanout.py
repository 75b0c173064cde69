"""In-process fan-out: one Redis message, parsed and encoded once, to every interested client.

Pure: no sockets, no Redis. The app feeds `Router.route` with what its single Redis
subscription receives and, every batching interval, takes each dirty subscriber's pending
messages (`Subscriber.take`) and writes them as one frame (`frame`).

Batching and replacement: a subscriber's unsent messages are a dict keyed by what a newer
message supersedes, so a newer message with the same key replaces the older unsent one:

- `live` (forming bar): one per symbol and timeframe; the newest forming bar is all a chart needs.
- `bar` (final bar or revision): one per symbol, timeframe and bar start; `indicator`: one per
  symbol and bar start; a revision replaces the unsent original.
- `price`: one per symbol (the last price is all a watchlist needs).
- events and alerts: one per event `id` (ids are stable, so a revised event replaces its
  unsent original); distinct events are never merged.

>>> channels = ChannelMap(Channels("ts"))
>>> router = Router()
>>> alice = Subscriber(kinds={"live"})
>>> router.subscribe(alice, ["AAPL"])
>>> for close in (1.0, 2.0):
...     _ = router.route(channels.parse("ts.market.bars.live.AAPL", b'{"offset":1,"epoch":"e","symbol":"AAPL","close":%.1f}' % close))
>>> [m.part for m in alice.take()]
[b'{"channel":"ts.market.bars.live.AAPL","data":{"offset":1,"epoch":"e","symbol":"AAPL","close":2.0}}']

Whatever arrives from Redis (any bytes, any channel name), `ChannelMap.parse` returns a Message
or None and never raises: it relays only a JSON object of at most `max_bytes` bytes in valid
UTF-8 (browsers close a connection on invalid UTF-8 in a text frame), on a channel whose
symbol is a valid symbol (schemas/symbols.py: so the channel name is safe to embed in a frame),
with routing fields of the right types and ranges (offset and timestamp within int64,
confidence in [0, 1]). What it drops is counted by reason in `ChannelMap.ignored`.

>>> channels.parse("ts.market.bars.live.AAPL", b'{"offset":99999999999999999999}') is None
True
>>> channels.parse('ts.market.bars.live.A"B', b'{"offset":1}') is None, dict(channels.ignored)
(True, {'bad routing fields': 1, 'invalid symbol in channel': 1})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Generic, TypeVar

import msgspec
from msgspec import Meta

from connectors.gateway.protocol import ALL, BAR_KINDS, DEFAULT_TIMEFRAMES, INT64_MAX, KINDS, MAX_EPOCH_LENGTH, TIMEFRAME_NAMES
from schemas.channels import Channels
from schemas.symbols import is_symbol

EVENT_CHANNEL_KINDS = frozenset(KINDS) - BAR_KINDS - {"indicator", "price"}
# `{TF}.` heads of the coarser timeframes' bar channels (`...ohlcv.5m.AAPL`); 1m has none
_COARSE = frozenset(t for t in TIMEFRAME_NAMES if t != "1m")
DEFAULT_MAX_BYTES = 256 * 1024


class _Envelope(msgspec.Struct):
    """The few fields routing needs; msgspec skips the rest of the payload without building it."""

    offset: Annotated[int, Meta(ge=0, le=INT64_MAX)] = 0
    epoch: Annotated[str, Meta(max_length=MAX_EPOCH_LENGTH)] = ""
    kind: Annotated[str, Meta(max_length=32)] = ""
    id: Annotated[str, Meta(max_length=256)] = ""
    timestamp: Annotated[int, Meta(ge=-INT64_MAX - 1, le=INT64_MAX)] = 0
    confidence: Annotated[float, Meta(ge=0.0, le=1.0)] = 1.0


_envelope = msgspec.json.Decoder(_Envelope)


class Message:
    """One Redis message, ready for every subscriber: routing fields and its encoded frame element."""

    __slots__ = ("channel", "symbol", "kind", "key", "confidence", "epoch", "offset", "part", "timeframe")

    def __init__(
        self,
        channel: str,
        symbol: str,
        kind: str,
        key: tuple,
        confidence: float,
        epoch: str,
        offset: int,
        part: bytes,
        timeframe: str = "",
    ) -> None:
        self.channel = channel
        self.timeframe = timeframe  # a bar's timeframe; "" for messages every timeframe filter takes
        self.epoch = epoch
        self.symbol = symbol
        self.kind = kind
        self.key = key
        self.confidence = confidence
        self.offset = offset
        self.part = part

    def __repr__(self) -> str:
        return f"Message({self.channel!r}, {self.kind}, offset={self.offset})"


class ChannelMap:
    """Which Redis channels the gateway listens to, and what a message on each one is.

    The gateway pattern-subscribes to the per-symbol channels (`...bars.live[.{TF}].{SYMBOL}`,
    `...ohlcv[.{TF}].{SYMBOL}`, `...events.by_symbol.{SYMBOL}`, `...prices.{SYMBOL}`) and to the
    indicator channel, so every message it relays carries the position of a channel a client can
    resume from. A bar channel's rest after the prefix is `{TF}.{SYMBOL}` when it starts with a
    coarser timeframe's name and a dot (`5m.AAPL`), else `{SYMBOL}` (1m): a symbol itself of that
    shape (`5m.X`) would be read as a timeframe channel. The patterns also match the coarser
    timeframes' all-symbol channels (`...ohlcv.5m`): their symbol is "", and they are not relayed.
    """

    def __init__(self, channels: Channels, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.channels = channels
        self.max_bytes = max_bytes
        self._live = channels.live_for("")
        self._final = channels.ohlcv_for("")
        self._events = channels.events_for("")
        self._prices = channels.prices_for("")
        self.indicators = channels.indicators
        self.ignored: Counter[str] = Counter()  # messages not relayed, by reason

    def patterns(self) -> list[str]:
        return [self._live + "*", self._final + "*", self._events + "*", self._prices + "*"]

    def exact(self) -> list[str]:
        return [self.indicators]

    def symbol_channels(self, symbol: str, kinds: Iterable[str], timeframes: Iterable[str] = DEFAULT_TIMEFRAMES) -> list[str]:
        """The channels carrying `kinds` of `symbol`, bars in `timeframes` (what a client resumes from)."""
        kinds = set(kinds)
        out = []
        for timeframe in timeframes:
            if "live" in kinds:
                out.append(self.channels.live_at_for(timeframe, symbol))
            if "bar" in kinds:
                out.append(self.channels.ohlcv_at_for(timeframe, symbol))
        if kinds & EVENT_CHANNEL_KINDS:
            out.append(self._events + symbol)
        if "price" in kinds:
            out.append(self._prices + symbol)
        return out

    def channel_symbol(self, channel: str) -> str | None:
        """The symbol a per-symbol channel belongs to; None for the indicator channel."""
        for prefix in (self._live, self._final):
            if channel.startswith(prefix):
                return _split(channel[len(prefix) :])[1]
        for prefix in (self._events, self._prices):
            if channel.startswith(prefix):
                return channel[len(prefix) :]
        return None

    def channel_timeframe(self, channel: str) -> str:
        """A bar channel's timeframe; "" for the other channels."""
        for prefix in (self._live, self._final):
            if channel.startswith(prefix):
                return _split(channel[len(prefix) :])[0]
        return ""

    def channel_kinds(self, channel: str) -> frozenset[str]:
        """The kinds a channel carries (what a client must follow to care about it)."""
        if channel.startswith(self._live):
            return frozenset({"live"})
        if channel.startswith(self._final):
            return frozenset({"bar"})
        if channel.startswith(self._events):
            return EVENT_CHANNEL_KINDS
        if channel.startswith(self._prices):
            return frozenset({"price"})
        if channel == self.indicators:
            return frozenset({"indicator"})
        return frozenset()

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] += 1

    def parse(self, channel: str, data: bytes) -> Message | None:
        """Classify and encode one Redis message; None if it is not for clients (or unreadable)."""
        if type(data) is not bytes:
            self._ignore("not bytes")
            return None
        if len(data) > self.max_bytes:
            self._ignore("too large (GATEWAY_MAX_RELAY_BYTES)")
            return None
        try:
            head = _envelope.decode(data)
        except msgspec.ValidationError:
            self._ignore("bad routing fields")
            return None
        except (msgspec.DecodeError, RecursionError, ValueError):  # ValueError: msgspec's UnicodeDecodeError
            self._ignore("not a JSON object")
            return None
        if not data.isascii():  # msgspec does not check the UTF-8 of strings it skips
            try:
                data.decode()
            except UnicodeDecodeError:
                self._ignore("invalid UTF-8")
                return None
        timeframe = ""
        if channel.startswith(self._live):
            timeframe, symbol = _split(channel[len(self._live) :])
            kind = "live"
            key: tuple = (symbol, "live", timeframe)
        elif channel.startswith(self._final):
            timeframe, symbol = _split(channel[len(self._final) :])
            kind = "bar"
            key = (symbol, "bar", timeframe, head.timestamp)
        elif channel.startswith(self._prices):
            symbol, kind = channel[len(self._prices) :], "price"
            key = (symbol, "price")
        elif channel.startswith(self._events):
            symbol, kind = channel[len(self._events) :], head.kind
            if kind not in EVENT_CHANNEL_KINDS:
                self._ignore("unknown event kind")
                return None
            key = (kind, head.id or head.offset)
        elif channel == self.indicators:
            found = _symbol_of(data)
            if found is None:
                self._ignore("no symbol in indicator message")
                return None
            symbol, kind, key = found, "indicator", (found, "indicator", head.timestamp)
        else:
            self._ignore("not a client channel")
            return None
        if not symbol:
            self._ignore("not a client channel")
            return None
        if not is_symbol(symbol):
            self._ignore("invalid symbol in channel")
            return None
        part = b'{"channel":"' + channel.encode() + b'","data":' + data + b"}"
        return Message(channel, symbol, kind, key, head.confidence, head.epoch, head.offset, part, timeframe)


def _split(rest: str) -> tuple[str, str]:
    """A bar channel's rest after its prefix as (timeframe, symbol); symbol "" for an all-symbol channel.

    >>> _split("5m.AAPL"), _split("AAPL"), _split("BRK.B"), _split("1h")
    (('5m', 'AAPL'), ('1m', 'AAPL'), ('1m', 'BRK.B'), ('1h', ''))
    """
    head, dot, tail = rest.partition(".")
    if dot and head in _COARSE:
        return head, tail
    if rest in _COARSE:
        return rest, ""
    return "1m", rest


class _Symbol(msgspec.Struct):
    symbol: Annotated[str, Meta(max_length=64)] = ""


_symbol_decoder = msgspec.json.Decoder(_Symbol)


def _symbol_of(data: bytes) -> str | None:
    try:
        return _symbol_decoder.decode(data).symbol or None
    except (msgspec.DecodeError, RecursionError, ValueError):
        return None


class Subscriber:
    """One client's filters (watchlist, kinds, timeframes, minimum confidence) and its unsent messages.

    `min_confidence` applies to detection records; bars have confidence 1. `timeframes` applies
    to bars (`live`, `bar`).
    """

    __slots__ = ("symbols", "kinds", "timeframes", "min_confidence", "pending", "replay", "floor", "__weakref__")

    def __init__(
        self, kinds: Iterable[str] = KINDS, min_confidence: float = 0.0, timeframes: Iterable[str] = DEFAULT_TIMEFRAMES
    ) -> None:
        self.symbols: set[str] = set()
        self.kinds: frozenset[str] = frozenset(kinds)
        self.timeframes: frozenset[str] = frozenset(timeframes)
        self.min_confidence = min_confidence
        self.pending: dict[tuple, Message] = {}
        self.replay: list[Message] = []  # missed messages from the history, sent before `pending`
        # channel -> offset already delivered by a catch-up: live copies at or below are dropped.
        # Bounded: entries go when a newer live message arrives or the symbol is unsubscribed.
        self.floor: dict[str, int] = {}

    def queued(self) -> int:
        """Messages waiting to be written (counted against GATEWAY_MAX_QUEUE)."""
        return len(self.pending) + len(self.replay)

    def take(self) -> list[Message]:
        """The unsent messages, oldest first, emptying the buffer."""
        pending = self.pending
        if self.replay:
            replay, self.replay = self.replay, []
        elif not pending:
            return []
        else:
            replay = []
        messages = list(pending.values())
        pending.clear()
        if self.floor:
            messages = self._above_floor(messages)
        return replay + messages if replay else messages

    def _above_floor(self, messages: list[Message]) -> list[Message]:
        floor = self.floor
        kept = []
        for m in messages:
            below = floor.get(m.channel)
            if below is None:
                kept.append(m)
            elif m.offset > below:
                del floor[m.channel]  # pub/sub is ordered: later live messages are all newer
                kept.append(m)
        return kept

    def catch_up(self, channel: str, offset: int, messages: list[Message]) -> None:
        """Queue missed messages of `channel` (oldest first), delivered up to `offset`."""
        self.floor[channel] = max(self.floor.get(channel, 0), offset)
        self.replay.extend(messages)


S = TypeVar("S", bound=Subscriber)


class Router(Generic[S]):
    """Symbol -> subscribers index; `route` puts a message into every matching subscriber's buffer.

    Generic in the subscriber type, so the gateway's router hands back its own sessions.
    """

    def __init__(self) -> None:
        self.by_symbol: dict[str, set[S]] = {}
        self.everything: set[S] = set()  # subscribed to `*`
        self.dirty: set[S] = set()
        self.replaced = 0  # unsent messages superseded by a newer one with the same key

    def subscribe(self, sub: S, symbols: Iterable[str]) -> None:
        for symbol in symbols:
            sub.symbols.add(symbol)
            if symbol == ALL:
                self.everything.add(sub)
            else:
                self.by_symbol.setdefault(symbol, set()).add(sub)

    def unsubscribe(self, sub: S, symbols: Iterable[str]) -> None:
        for symbol in symbols:
            sub.symbols.discard(symbol)
            if symbol == ALL:
                self.everything.discard(sub)
                continue
            subs = self.by_symbol.get(symbol)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.by_symbol[symbol]

    def remove(self, sub: S) -> None:
        self.unsubscribe(sub, list(sub.symbols))
        self.dirty.discard(sub)
        sub.pending.clear()
        sub.replay.clear()
        sub.floor.clear()

    def wants(self, symbol: str) -> bool:
        """Whether anyone follows `symbol`; "" (a coarser timeframe's all-symbol channel) never."""
        return symbol in self.by_symbol or (bool(self.everything) and symbol != "")

    @staticmethod
    def takes(sub: Subscriber, m: Message) -> bool:
        """Whether `sub`'s filters (not its watchlist) take `m`: what `route` checks, for catch-ups."""
        return m.kind in sub.kinds and m.confidence >= sub.min_confidence and (not m.timeframe or m.timeframe in sub.timeframes)

    def route(self, m: Message) -> int:
        """Buffer `m` for every subscriber whose filters take it; returns how many."""
        subs = self.by_symbol.get(m.symbol)
        if subs is None and not self.everything:
            return 0
        kind, conf, key, dirty, tf = m.kind, m.confidence, m.key, self.dirty, m.timeframe
        n = 0
        for group in (subs or (), self.everything):
            for sub in group:
                if kind in sub.kinds and conf >= sub.min_confidence and (not tf or tf in sub.timeframes):
                    pending = sub.pending
                    if key in pending:
                        self.replaced += 1
                    pending[key] = m
                    dirty.add(sub)
                    n += 1
        return n


def frame(messages: list[Message]) -> bytes:
    """One batch frame: `{"type":"batch","messages":[{"channel":..,"data":{..}}, ...]}`."""
    return b'{"type":"batch","messages":[' + b",".join([m.part for m in messages]) + b"]}"
