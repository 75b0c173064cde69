"""What every settings class shares: how variables are read, the checks they reuse, and the one error.

Each client's settings live beside the client (`connectors/kafka/settings.py`, `postgres/`,
`redis/`); programs compose them (`flows/settings.py`, `connectors/gateway/settings.py`). Values
are bounded so no setting can overflow what uses it (timers, snapshots, int64), and a bad value
fails at start-up with a message naming the variable.
"""

from __future__ import annotations

import re
import sys
from typing import Annotated, TypeVar

from pydantic import AfterValidator, ValidationError
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

DAY_S = 86_400.0
CONFIG = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", allow_inf_nan=False, hide_input_in_errors=True)
"""Variables without prefix, any case; unknown variables ignored; NaN and infinity refused; an error's text
never repeats the input (it may be a password or a whole URL with one)."""


def matching(pattern: str, what: str) -> AfterValidator:
    """A check that the whole value matches `pattern`, failing with `what` (the rule in words)."""
    match = re.compile(pattern).fullmatch

    def check(value: str) -> str:
        if match(value) is None:
            raise PydanticCustomError("pattern", what)
        return value

    return AfterValidator(check)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]


class SettingsError(ValueError):
    """A setting is invalid; the message names each bad variable and what is wrong with it."""


def describe(exc: ValidationError, prefix: str = "") -> str:
    """A pydantic error as `VARIABLE: problem; ...` (the input is cut short: it may be huge or a secret)."""
    problems = []
    for error in exc.errors():
        where = "__".join(str(p) for p in error["loc"] if not isinstance(p, int))
        # A check of several variables (no location) names them in its message.
        problems.append(f"{prefix}{where.upper()}: {error['msg']}" if where else f"{prefix}{error['msg']}")
    return "; ".join(problems)


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S]) -> S:
    """`cls` read from the environment, or `SettingsError` saying what is wrong."""
    try:
        return cls()
    except ValidationError as exc:
        raise SettingsError(f"invalid settings: {describe(exc)}") from None


def load_or_exit(cls: type[S], component: str) -> S:
    """`load()` for a program's `main()`: a bad setting ends it with the message and exit code 2, no traceback."""
    try:
        return load(cls)
    except SettingsError as exc:
        print(f"{component}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
