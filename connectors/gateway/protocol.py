"""The gateway's JSON protocol: what a client may send, what the server answers, and the close codes.

Client messages are validated in one msgspec call; a bad one gets an `error` reply naming the
problem, never a silent drop.

>>> decode_client(b'{"type":"subscribe","symbols":["aapl"],"kinds":["live"]}')
Subscribe(symbols=['AAPL'], kinds=['live'], min_confidence=None, positions={})
>>> decode_client(b'{"type":"subscribe","symbols":"AAPL"}')
Traceback (most recent call last):
...
connectors.gateway.protocol.BadMessage: Expected `array`, got `str` - at `$.symbols`
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.events import KINDS as EVENT_KINDS

PROTOCOL_VERSION = 1

# What a client can subscribe to, per symbol. `live`: forming bars; `bar`: final bars and their
# revisions; the rest are the detection records of schemas/events.py by their `kind` tag.
KINDS: tuple[str, ...] = ("live", "bar", *EVENT_KINDS)
BAR_KINDS = frozenset({"live", "bar"})

# Tickers: letters, digits, dot, dash (BRK.B, BF-B); `*` = every symbol the token allows.
SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,19}$")
ALL = "*"

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
Offset = Annotated[int, Meta(ge=0)]


class Position(msgspec.Struct, forbid_unknown_fields=True):
    """A channel position as carried by every message: resume after `offset` of `epoch`."""

    epoch: str
    offset: Offset


class Subscribe(msgspec.Struct, tag="subscribe", forbid_unknown_fields=True):
    """Add symbols (and optionally set the kinds and minimum confidence) to the subscription.

    `positions`: channel -> last position the client saw (from an earlier connection); the
    gateway sends what was missed, or a `reset` for a channel whose history is gone.
    """

    symbols: list[str] = []
    kinds: list[str] | None = None
    min_confidence: Confidence | None = None
    positions: dict[str, Position] = {}


class Unsubscribe(msgspec.Struct, tag="unsubscribe", forbid_unknown_fields=True):
    """Remove symbols and/or kinds."""

    symbols: list[str] = []
    kinds: list[str] = []


class Ping(msgspec.Struct, tag="ping", forbid_unknown_fields=True):
    """Application-level keep-alive for clients (browsers) that cannot send WebSocket pings."""

    id: int | str | None = None


ClientMessage = Subscribe | Unsubscribe | Ping


class BadMessage(ValueError):
    """A client message that does not follow the protocol; the text is sent back to the client."""


_decoder = msgspec.json.Decoder(ClientMessage)
MAX_SYMBOLS_PER_MESSAGE = 1000


def decode_client(raw: bytes | str) -> ClientMessage:
    """Parse and validate one client message; symbols are upper-cased."""
    try:
        message = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadMessage(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if isinstance(message, Ping):
        return message
    if len(message.symbols) > MAX_SYMBOLS_PER_MESSAGE:
        raise BadMessage(f"at most {MAX_SYMBOLS_PER_MESSAGE} symbols per message")
    message.symbols = [check_symbol(s) for s in message.symbols]
    kinds = message.kinds or []
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise BadMessage(f"unknown kind(s) {', '.join(unknown)}; expected some of {', '.join(KINDS)}")
    return message


def check_symbol(symbol: str) -> str:
    """The symbol upper-cased, or BadMessage.

    >>> check_symbol("brk.b")
    'BRK.B'
    """
    value = symbol.strip().upper()
    if value != ALL and not SYMBOL_RE.match(value):
        raise BadMessage(f"invalid symbol {symbol!r}: 1-20 letters, digits, '.' or '-'")
    return value


_encoder = msgspec.json.Encoder()


def encode(message: dict) -> bytes:
    """A server message (welcome, subscribed, error, reset, pong) as JSON."""
    return _encoder.encode(message)


def error(code: str, text: str) -> bytes:
    return encode({"type": "error", "code": code, "message": text})
