"""Background tasks that must not die: each runs under a supervisor that restarts it with backoff.

(And `detach`, for the one-shot tasks nobody waits for, such as a client's close handshake.)

The gateway's Redis reader, flusher and probe run for the gateway's lifetime. If one raises (or
returns, which for them is a failure too) it is logged, counted in `Stats.tasks` and restarted
after a capped, jittered delay; /healthz shows it as not running meanwhile. A task that ran a
good while before failing starts backing off anew.

>>> b = Backoff(first_s=0.5, cap_s=10.0)
>>> 0.25 <= b.next() <= 0.5, max(b.next() for _ in range(100)) <= 10.0
(True, True)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from connectors.backoff import backoff_s
from connectors.gateway.errors import brief
from connectors.gateway.metrics import Stats

log = logging.getLogger("tickstock.gateway")

RAN_LONG_S = 60.0  # a task that ran this long before failing restarts with the first delay again


class Backoff:
    """`connectors.backoff.backoff_s` with its attempt count, for the gateway's supervised tasks."""

    def __init__(self, first_s: float, cap_s: float) -> None:
        self.first_s, self.cap_s, self.attempts = first_s, cap_s, 0

    def next(self) -> float:
        delay = backoff_s(self.attempts, self.first_s, self.cap_s)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


_detached: set[asyncio.Future] = set()


def detach(awaitable: Awaitable[object]) -> None:
    """Run `awaitable` in the background, not waiting for it (a close handshake, say).

    The event loop keeps only a weak reference to a task: this keeps a strong one until it is done.
    """
    task = asyncio.ensure_future(awaitable)
    _detached.add(task)
    task.add_done_callback(_detached.discard)


class Supervisor:
    """The gateway's background tasks: started by name, restarted when they die, cancelled at stop."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.closing = False  # set at stop: nothing restarts any more
        self._tasks: list[asyncio.Task] = []

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run` as a background task for the gateway's lifetime, restarting it if it dies."""
        self._tasks.append(asyncio.create_task(self._supervise(name, run), name=name))

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        state = self.stats.task(name)
        backoff = Backoff(0.2, 10.0)
        while not self.closing:
            state.running = True
            started = time.monotonic()
            try:
                await run()
                if self.closing:
                    break
                raise RuntimeError("returned")  # these tasks run forever: returning is a failure too
            except asyncio.CancelledError:
                state.running = False
                raise
            except Exception as exc:  # supervision: any failure is logged, counted, restarted
                state.running = False
                state.restarts += 1
                state.last_error = type(exc).__name__
                state.last_error_at = time.time()
                if time.monotonic() - started > RAN_LONG_S:
                    backoff.reset()  # it ran a good while: a fresh failure, start backing off anew
                delay = backoff.next()
                log.error(
                    "background task %s died (%s: %s); restart %d in %.1f s",
                    name,
                    type(exc).__name__,
                    brief(exc),
                    state.restarts,
                    delay,
                    exc_info=exc,
                )
                await asyncio.sleep(delay)
        state.running = False

    async def cancel(self) -> None:
        """Stop every task (and any restart) and wait until they are gone."""
        self.closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
