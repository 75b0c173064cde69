"""Retry with capped exponential backoff, for sinks that must not drop what they accepted."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def with_backoff(
    action: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    what: str,
    log: logging.Logger,
    max_backoff_s: float = 30.0,
    on_retry: Callable[[], None] | None = None,
    give_up_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Run `action` until it succeeds, sleeping 0.1 s, 0.2 s, ... (capped, jittered) between tries.

    Blocking is the point: the dataflow stops taking input while its sink's server is
    down, so nothing accepted is lost and nothing is skipped. `give_up_on` are the failures
    (among `retry_on`'s subclasses) that no retry can fix, e.g. a value the database refuses:
    they are raised at once for the caller to handle.
    """
    delay = 0.1
    attempt = 0
    while True:
        try:
            return action()
        except give_up_on:
            raise
        except retry_on as exc:
            attempt += 1
            level = logging.WARNING if attempt < 5 else logging.ERROR
            log.log(level, "%s failed (attempt %d): %s: %s; retrying in %.1f s",
                    what, attempt, type(exc).__name__, exc, delay)  # fmt: skip
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, max_backoff_s)
            if on_retry is not None:
                on_retry()
