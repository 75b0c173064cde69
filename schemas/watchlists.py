"""A user's server-side watchlists: their bounds, and the change notice every gateway follows.

A watchlist is a named, ordered list of symbols belonging to one user (the token's `sub`); a
user also has one symbol universe. They live in PostgreSQL (migration 0008), are changed over
the gateway's REST, and every change is announced on `tickstock.dashboard.watchlist`
(`Channels.watchlist`) as a `WatchlistChange`, so every gateway process moves the WebSocket
subscriptions that follow that list, on every device of that user.

The bounds keep one user's storage and one notice small whatever a client sends: at most
`MAX_WATCHLISTS` lists per user, `MAX_WATCHLIST_SYMBOLS` symbols per list, `MAX_UNIVERSE_SYMBOLS`
in a universe, and names by `NAME_PATTERN` (URL- and channel-safe: no spaces, slashes or colons).

>>> check_name("tech-2026"), is_name("a/b"), is_name("")
('tech-2026', False, False)
>>> change = WatchlistChange(user="alice", name="tech", symbols=["AAPL"], revision=7)
>>> decode_change(encode_change(change)) == change
True
>>> decode_change(b'{"version":1,"user":"alice","name":"a b","symbols":[],"revision":1,"deleted":false}')  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
msgspec.ValidationError: Expected `str` matching regex ... - at `$.name`
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.symbols import MAX_SYMBOL_LENGTH

WATCHLIST_SCHEMA_VERSION = 1
MAX_NAME_LENGTH = 64
# also in infra/migrations/0008_watchlists.up.sql; `(?!\n)`: Python's `$` (msgspec's, FastAPI's) also matches before a final newline
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(?!\n)$"
NAME_RULE = "1-64 characters: a letter or digit first, then letters, digits, '_', '.' or '-'"
MAX_WATCHLISTS = 50  # per user
MAX_WATCHLIST_SYMBOLS = 500  # per list; also in the migration's CHECK
MAX_UNIVERSE_SYMBOLS = 5000  # per user; also in the migration's CHECK
MAX_USER_LENGTH = 256  # the token's `sub` (connectors/gateway/auth.py)

_name = re.compile(NAME_PATTERN).match

Name = Annotated[str, Meta(pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH)]
User = Annotated[str, Meta(min_length=1, max_length=MAX_USER_LENGTH)]
Symbol = Annotated[str, Meta(min_length=1, max_length=MAX_SYMBOL_LENGTH)]


class InvalidName(ValueError):
    """Not a watchlist name by `NAME_RULE`; the message says what a name looks like."""


def is_name(value: str) -> bool:
    return len(value) <= MAX_NAME_LENGTH and _name(value) is not None


def check_name(value: str) -> str:
    """`value` if it is a valid watchlist name, else InvalidName naming the rule."""
    if not is_name(value):
        raise InvalidName(f"invalid watchlist name {value[:80]!r}: {NAME_RULE}")
    return value


class WatchlistChange(msgspec.Struct, kw_only=True):
    """One change of one user's watchlist, as announced on `tickstock.dashboard.watchlist`.

    `symbols`: the whole list after the change (empty when `deleted`). `revision` grows with
    every change of any list (one database sequence), so of two notices for the same list the
    higher revision is the newer, also across a delete and a re-create. Published through the
    channel history (connectors/redis/history.py), so it also carries `offset` and `epoch`.
    """

    version: int = WATCHLIST_SCHEMA_VERSION
    user: User
    name: Name
    symbols: Annotated[list[Symbol], Meta(max_length=MAX_WATCHLIST_SYMBOLS)]
    revision: Annotated[int, Meta(ge=1, le=2**63 - 1)]
    deleted: bool = False


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(WatchlistChange)


def encode_change(change: WatchlistChange) -> bytes:
    return _encoder.encode(change)


def decode_change(raw: bytes | str) -> WatchlistChange:
    """A notice from Redis; msgspec.ValidationError / DecodeError when it is not one."""
    return _decoder.decode(raw)
