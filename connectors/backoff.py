"""Capped exponential backoff with jitter: the one rule for every retry (sinks, the bridge, the gateway)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from connectors.monitoring.metrics import RETRIES
from connectors.monitoring.readiness import READINESS

T = TypeVar("T")


def backoff_s(attempt: int, initial: float, maximum: float, rng: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with jitter: initial * 2**attempt, at most `maximum`, times 0.5-1.

    The exponent is capped before it is computed, so any attempt count (a weekend of failures,
    a million) gives a finite delay: `2**attempt` alone overflows a float after 1,023 attempts.

    >>> backoff_s(0, 0.5, 30, rng=lambda: 1.0), backoff_s(3, 0.5, 30, rng=lambda: 0.0), backoff_s(10**9, 0.5, 30, rng=lambda: 1.0)
    (0.5, 2.0, 30.0)
    """
    exponent = min(max(attempt, 0), 64)  # 2**64 * any initial >= 0.001 exceeds any maximum
    return min(maximum, initial * 2.0**exponent) * (0.5 + rng() / 2)


def with_backoff(
    action: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    what: str,
    log: logging.Logger,
    max_backoff_s: float = 30.0,
    on_retry: Callable[[], None] | None = None,
    give_up_on: tuple[type[BaseException], ...] = (),
    dependency: str | None = None,
) -> T:
    """Run `action` until it succeeds, sleeping `backoff_s(attempt, 0.1, max_backoff_s)` between tries.

    Blocking is the point: the dataflow stops taking input while its sink's server is
    down, so nothing accepted is lost and nothing is skipped. `give_up_on` are the failures
    (among `retry_on`'s subclasses) that no retry can fix, e.g. a value the database refuses:
    they are raised at once for the caller to handle.

    With `dependency` ("postgresql", "redis") each retry is counted
    (`tickstock_dependency_retries_total`) and the process is not ready (/readyz) from the
    first failure until the action succeeds or gives up.
    """
    attempt = 0
    failing: int | None = None
    try:
        while True:
            try:
                return action()
            except give_up_on:
                raise
            except retry_on as exc:
                delay = backoff_s(attempt, 0.1, max_backoff_s)
                attempt += 1
                level = logging.WARNING if attempt < 5 else logging.ERROR
                log.log(level, "%s failed (attempt %d): %s: %s; retrying in %.1f s",
                        what, attempt, type(exc).__name__, exc, delay)  # fmt: skip
                if dependency is not None:
                    RETRIES.labels(dependency).inc()
                    if failing is None:
                        failing = READINESS.failing(dependency, f"{what}: {type(exc).__name__}: {exc}")
                time.sleep(delay)
                if on_retry is not None:
                    on_retry()
    finally:
        if failing is not None:
            READINESS.recovered(failing)


def within(
    action: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    wait_s: float,
    refused: Callable[[BaseException], BaseException],
    what: str,
    log: logging.Logger,
    dependency: str | None = None,
) -> T:
    """Run `action` until it succeeds, for at most `wait_s`, then raise `refused(last failure)`.

    For starting up: a client whose server is restarting rides the restart out (a warning per try,
    counted as a retry of `dependency`), while a wrong address still ends the start with the fix
    instead of hanging it forever (with_backoff, for work already accepted, never gives up).
    """
    deadline, attempt = time.monotonic() + wait_s, 0
    while True:
        try:
            return action()
        except retry_on as exc:
            pause = backoff_s(attempt, 0.1, 5.0)
            if time.monotonic() + pause > deadline:
                raise refused(exc) from exc
            log.warning("%s does not answer (%s); trying again in %.1f s", what, str(exc).strip(), pause)
            if dependency is not None:
                RETRIES.labels(dependency).inc()
            time.sleep(pause)
            attempt += 1
