"""The gateway's JSON protocol: what a client may send, what the server answers, and the close codes.

Client messages are validated in one msgspec call; a bad one gets an `error` reply naming the
problem, never a silent drop.

>>> decode_client(b'{"type":"subscribe","symbols":["aapl"],"kinds":["live"]}')
Subscribe(symbols=['AAPL'], kinds=['live'], timeframes=None, min_confidence=None, positions={}, watchlist=None)
>>> decode_client(b'{"type":"subscribe","symbols":"AAPL"}')
Traceback (most recent call last):
...
connectors.gateway.protocol.BadMessage: Expected `array`, got `str` - at `$.symbols`

Every size is bounded in the types (symbols per message, position entries, string lengths,
integers within int64), so a message is refused in the decoder before it costs any work, with
the reason.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.events import KINDS as EVENT_KINDS
from schemas.symbols import InvalidSymbol, normalise
from schemas.timeframes import TIMEFRAMES
from schemas.watchlists import MAX_NAME_LENGTH, NAME_PATTERN

PROTOCOL_VERSION = 1

# What a client can subscribe to, per symbol. `live`: forming bars; `bar`: final bars and their
# revisions (both of the timeframes subscribed); `price`: the last trade price (schemas/prices.py);
# the rest are the detection records of schemas/events.py by their `kind` tag.
KINDS: tuple[str, ...] = ("live", "bar", "price", *EVENT_KINDS)
BAR_KINDS = frozenset({"live", "bar"})
# The timeframes a client may follow `live` and `bar` of (1m unless it asks for others).
TIMEFRAME_NAMES: tuple[str, ...] = tuple(TIMEFRAMES)
DEFAULT_TIMEFRAMES: tuple[str, ...] = ("1m",)

# Symbols are schemas/symbols.py's (one definition); `*` = every symbol the token allows.
ALL = "*"
INT64_MAX = 2**63 - 1
MAX_SYMBOLS_PER_MESSAGE = 1000
MAX_CHANNEL_LENGTH = 200
MAX_EPOCH_LENGTH = 64
MAX_PING_ID_LENGTH = 128

# Close codes (RFC 6455 leaves 4000-4999 to applications).
CLOSE_GOING_AWAY = 1001  # the gateway is shutting down: reconnect (elsewhere) and resume
CLOSE_UNAUTHORIZED = 4001  # the token expired during the session: get a new one, reconnect, resume
CLOSE_MISBEHAVING = 4002  # too many invalid messages in a short time
CLOSE_SLOW_CONSUMER = 4008  # the client did not read fast enough; its queue overflowed
CLOSE_CODES: dict[int, str] = {
    CLOSE_GOING_AWAY: "gateway shutting down",
    CLOSE_UNAUTHORIZED: "token expired",
    CLOSE_MISBEHAVING: "too many invalid messages",
    CLOSE_SLOW_CONSUMER: "slow consumer",
}

Confidence = Annotated[float, Meta(ge=0.0, le=1.0)]
Offset = Annotated[int, Meta(ge=0, le=INT64_MAX)]
Symbols = Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=MAX_SYMBOLS_PER_MESSAGE)]
Kinds = Annotated[list[Annotated[str, Meta(max_length=32)]], Meta(max_length=len(KINDS) * 2)]
Timeframes = Annotated[list[Annotated[str, Meta(max_length=8)]], Meta(max_length=len(TIMEFRAME_NAMES) * 2)]
WatchlistName = Annotated[str, Meta(pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH)]  # schemas/watchlists.py


class Position(msgspec.Struct, forbid_unknown_fields=True):
    """A channel position as carried by every message: resume after `offset` of `epoch`."""

    epoch: Annotated[str, Meta(max_length=MAX_EPOCH_LENGTH)]
    offset: Offset


# a resume names at most the channels of each symbol of the message (live and final bars of every
# timeframe, events, prices), plus the indicators
CHANNELS_PER_SYMBOL = 2 * len(TIMEFRAME_NAMES) + 2
Positions = Annotated[
    dict[Annotated[str, Meta(max_length=MAX_CHANNEL_LENGTH)], Position],
    Meta(max_length=CHANNELS_PER_SYMBOL * MAX_SYMBOLS_PER_MESSAGE + 1),
]


class Subscribe(msgspec.Struct, tag="subscribe", forbid_unknown_fields=True):
    """Add symbols (and optionally set the kinds and minimum confidence) to the subscription.

    `positions`: channel -> last position the client saw (from an earlier connection); the
    gateway sends what was missed, or a `reset` for a channel whose history is gone.
    `timeframes` (optional) replaces the timeframes whose `live` and `bar` messages are sent.
    `watchlist`: also follow the symbols of the user's server-side watchlist of that name, live:
    when the list changes (on any device), the subscription changes and a `watchlist` message says so.
    """

    symbols: Symbols = []
    kinds: Kinds | None = None
    timeframes: Timeframes | None = None
    min_confidence: Confidence | None = None
    positions: Positions = {}
    watchlist: WatchlistName | None = None


class Unsubscribe(msgspec.Struct, tag="unsubscribe", forbid_unknown_fields=True):
    """Remove symbols and/or kinds, and/or stop following a watchlist (its symbols go unless followed otherwise)."""

    symbols: Symbols = []
    kinds: Kinds = []
    watchlist: WatchlistName | None = None


class Ping(msgspec.Struct, tag="ping", forbid_unknown_fields=True):
    """Application-level keep-alive for clients (browsers) that cannot send WebSocket pings."""

    id: Annotated[int, Meta(ge=-INT64_MAX - 1, le=INT64_MAX)] | Annotated[str, Meta(max_length=MAX_PING_ID_LENGTH)] | None = None


ClientMessage = Subscribe | Unsubscribe | Ping


BINARY_FRAME = "binary frame: the protocol is JSON in text frames"


class BadMessage(ValueError):
    """A client message that does not follow the protocol; the text is sent back to the client."""


_decoder = msgspec.json.Decoder(ClientMessage)


def decode_client(raw: bytes | str) -> ClientMessage:
    """Parse and validate one client message; symbols normalised.

    Raises BadMessage, and nothing else, whatever `raw` is. (The app refuses binary frames
    before this: `BINARY_FRAME`.)
    """
    try:
        message = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadMessage(safe_text(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not JSON: {safe_text(str(exc))}") from None
    except RecursionError:
        raise BadMessage("not JSON: nested too deeply") from None
    except UnicodeDecodeError:
        raise BadMessage("not JSON: invalid UTF-8") from None
    if isinstance(message, Ping):
        return message
    message.symbols = list(dict.fromkeys(check_symbol(s) for s in message.symbols))
    kinds = message.kinds or []
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise BadMessage(
            f"unknown kind(s) {', '.join(safe_text(k, 32) for k in unknown[:5])}; expected some of {', '.join(KINDS)}"
        )
    if message.kinds is not None:
        message.kinds = list(dict.fromkeys(message.kinds))
    if isinstance(message, Subscribe) and message.timeframes is not None:
        message.timeframes = check_timeframes(message.timeframes)
    if isinstance(message, Unsubscribe):
        message.kinds = list(dict.fromkeys(message.kinds))
    return message


def check_timeframes(timeframes: list[str]) -> list[str]:
    """Known timeframe names, deduplicated, at least one; BadMessage naming the unknown ones.

    >>> check_timeframes(["5m", "1m", "5m"])
    ['5m', '1m']
    """
    unknown = [t for t in timeframes if t not in TIMEFRAMES]
    if unknown:
        raise BadMessage(
            f"unknown timeframe(s) {', '.join(safe_text(t, 8) for t in unknown[:5])}; expected some of {', '.join(TIMEFRAME_NAMES)}"
        )
    if not timeframes:
        raise BadMessage(f"timeframes is empty; give at least one of {', '.join(TIMEFRAME_NAMES)} (or leave it out)")
    return list(dict.fromkeys(timeframes))


def check_symbol(symbol: str) -> str:
    """A symbol as schemas/symbols.py normalises it, or `*`; BadMessage otherwise.

    >>> check_symbol("brk.b"), check_symbol("BACpL"), check_symbol(" * ")
    ('BRK.B', 'BACpL', '*')
    """
    if symbol.strip() == ALL:
        return ALL
    try:
        return normalise(symbol)
    except InvalidSymbol as exc:
        raise BadMessage(safe_text(str(exc))) from None


def safe_text(text: str, limit: int = 300) -> str:
    """Client-controlled text for a reply: bounded, no control characters."""
    shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:limit])
    return shown + "..." if len(text) > limit else shown


_encoder = msgspec.json.Encoder()


def encode(message: dict) -> bytes:
    """A server message (welcome, subscribed, error, reset, pong) as JSON."""
    return _encoder.encode(message)


def error(code: str, text: str) -> bytes:
    return encode({"type": "error", "code": code, "message": text})
