"""Watchlists on the gateway, pure: a list's symbols against a grant, and what one session follows.

REST (rest.py) checks every list a user stores with `granted_symbols` (each symbol as
schemas/symbols.py normalises it, duplicates dropped, every one granted by the token) and shows
only the granted part of a stored list (`visible`: a token with narrower grants than the one
that wrote the list never reads the rest).

A WebSocket session (session.py) may follow watchlists by name (`subscribe` with `watchlist`).
`Following` is what one session follows: the symbols it subscribed by name (`direct`) and, per
followed list, the revision and symbols last applied. A change notice (schemas/watchlists.py)
newer than what the session holds replaces that list's symbols; the session's subscription is
then `direct` plus every followed list, within its grant and its symbol cap (`wanted`).

>>> from connectors.gateway.auth import Grant
>>> grant = Grant("alice", frozenset({"AAPL", "MSFT"}), frozenset({"bar"}), None)
>>> granted_symbols(["aapl", "MSFT", "AAPL"], grant)
['AAPL', 'MSFT']
>>> granted_symbols(["AAPL", "NVDA"], grant)
Traceback (most recent call last):
...
connectors.gateway.watchlists.ListRefused: symbol(s) NVDA not allowed by your token
>>> visible(["AAPL", "NVDA", "MSFT"], grant)
(['AAPL', 'MSFT'], 1)
>>> f = Following()
>>> f.direct.add("MSFT")
>>> f.follow("tech")
>>> f.apply("tech", 5, ["AAPL", "MSFT"]), f.apply("tech", 4, ["IBM"]), f.wanted(grant, cap=10)
(True, False, (['MSFT', 'AAPL'], []))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from connectors.gateway.auth import Grant
from connectors.gateway.protocol import ALL, safe_text
from schemas.symbols import InvalidSymbol, normalise


class NoSuchWatchlist(Exception):
    """A subscribe names a watchlist the user does not have."""


class ListRefused(Exception):
    """A list that cannot be stored as sent: `status` 400 (malformed) or 403 (not granted), with the reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _shown(symbols: Sequence[str], limit: int = 20) -> str:
    return ", ".join(symbols[:limit]) + (f" (and {len(symbols) - limit} more)" if len(symbols) > limit else "")


def granted_symbols(raw: Iterable[str], grant: Grant) -> list[str]:
    """`raw` normalised, first occurrences in order; ListRefused names a malformed or ungranted symbol."""
    out: dict[str, None] = {}
    for text in raw:
        try:
            out[normalise(text)] = None
        except InvalidSymbol as exc:
            raise ListRefused(400, safe_text(str(exc))) from None
    symbols = list(out)
    forbidden = grant.forbidden_symbols(symbols)
    if forbidden:
        raise ListRefused(403, f"symbol(s) {_shown(forbidden)} not allowed by your token")
    return symbols


def visible(symbols: Sequence[str], grant: Grant) -> tuple[list[str], int]:
    """The symbols of a stored list this grant may see, and how many it may not."""
    if ALL in grant.symbols:
        return list(symbols), 0
    shown = [s for s in symbols if s in grant.symbols]
    return shown, len(symbols) - len(shown)


@dataclass(frozen=True)
class Listed:
    """A watchlist as read (from PostgreSQL, or from the newest notice)."""

    name: str
    revision: int
    symbols: tuple[str, ...]


@dataclass
class Followed:
    revision: int
    symbols: tuple[str, ...]


@dataclass
class Following:
    """What one session follows: symbols subscribed by name, and watchlists by name (their last applied state)."""

    direct: set[str] = field(default_factory=set)
    lists: dict[str, Followed] = field(default_factory=dict)

    def follow(self, name: str) -> None:
        """Start following `name` (nothing applied yet: any notice or read is newer)."""
        self.lists.setdefault(name, Followed(0, ()))

    def apply(self, name: str, revision: int, symbols: Sequence[str]) -> bool:
        """Take `symbols` as list `name` if it is followed and `revision` is newer; whether it was."""
        held = self.lists.get(name)
        if held is None or revision <= held.revision:
            return False
        self.lists[name] = Followed(revision, tuple(symbols))
        return True

    def wanted(self, grant: Grant, cap: int) -> tuple[list[str], list[str]]:
        """(symbols to follow: direct first, then each list's in order; symbols left out: not granted or over `cap`)."""
        out: dict[str, None] = dict.fromkeys(sorted(self.direct))
        left_out: dict[str, None] = {}
        for followed in self.lists.values():
            for symbol in followed.symbols:
                if symbol in out:
                    continue
                if not grant.allows_symbol(symbol) or len(out) >= cap:
                    left_out[symbol] = None
                else:
                    out[symbol] = None
        return list(out), list(left_out)
