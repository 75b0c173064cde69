"""What a valid symbol is: one definition for the flows, the gateway, REST and the analyst API.

Polygon spells US-equity tickers the CQS way: an upper-case root, `.` before a class, warrant
or unit suffix (BRK.A, ABC.WS, XYZ.U) and lower-case suffix letters for preferreds, rights and
when-issued shares (BACpL, GLOr, POSTw). A symbol is therefore 1-20 characters: an upper-case
letter or digit, then letters of either case, digits, `.` or `-`. Nothing else: no spaces,
slashes, colons (the Redis channel separators), wildcards or control characters, so every
symbol the bar flow accepts is also a safe Redis channel suffix, a COPY text field and a URL
query value, and the gateway and REST can serve it.

>>> is_symbol("BRK.A"), is_symbol("BACpL"), is_symbol("TEST/WS"), is_symbol("aapl")
(True, True, False, False)
>>> normalise(" aapl "), normalise("BACpL")
('AAPL', 'BACpL')
>>> normalise("A B")
Traceback (most recent call last):
...
schemas.symbols.InvalidSymbol: invalid symbol 'A B': 1-20 characters, an upper-case letter or digit first, then letters, digits, '.' or '-'
"""

from __future__ import annotations

import re

MAX_SYMBOL_LENGTH = 20
SYMBOL_PATTERN = r"[A-Z0-9][A-Za-z0-9.\-]{0,19}"
_match = re.compile(SYMBOL_PATTERN).fullmatch
RULE = "1-20 characters, an upper-case letter or digit first, then letters, digits, '.' or '-'"


class InvalidSymbol(ValueError):
    """Not a symbol by the rule above; the message says what a symbol looks like."""


def is_symbol(value: str) -> bool:
    """Whether `value` is a symbol exactly as Polygon spells it (no normalisation)."""
    return _match(value) is not None


def normalise(text: str) -> str:
    """A symbol as a person may type it: surrounding spaces dropped; all lower case is upper-cased.

    Only an all-lower-case entry is upper-cased (`aapl` -> `AAPL`): mixed case is meaningful
    (`BACpL`, a preferred, is not `BACPL`). Raises `InvalidSymbol`.
    """
    value = text.strip()
    if value and not any(c.isupper() for c in value):
        value = value.upper()
    if _match(value) is None:
        raise InvalidSymbol(f"invalid symbol {text[:40]!r}: {RULE}")
    return value
