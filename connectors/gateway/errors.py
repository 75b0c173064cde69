"""How the gateway fails: the errors it raises, the Redis failures it retries, and how a failure is logged.

- `GatewayUnavailable`: a dependency is unreachable at start; the message names it and the fix.
  `CannotListen` is the same for the listening address, which is a setting to change. Library
  code raises these; only `python -m connectors.gateway` (`__main__.main`) turns them into an
  exit code.
- `Unavailable`: Redis failed on a client's behalf after retries; the client gets an
  `unavailable` error and nothing of its request is half-applied.
- `REDIS_ERRORS`: every failure redis-py raises (down, LOADING, OOM, READONLY, MISCONF, ...):
  the gateway's own loops retry them with backoff.

>>> brief(ConnectionError("refused\\nmore lines"))
'ConnectionError: refused'
"""

from __future__ import annotations

import redis

from connectors.unavailable import ServiceUnavailable


class GatewayUnavailable(ServiceUnavailable):
    """A dependency is unreachable at start: the message names it and the fix."""

    service = "the gateway's Redis or PostgreSQL"


class CannotListen(GatewayUnavailable):
    """The address cannot be bound (in use, not ours): the message names the settings to change."""


class Unavailable(Exception):
    """Redis failed on a client's behalf after retries; the client is told, nothing half-applied."""


REDIS_ERRORS = (
    redis.RedisError,
    OSError,
)  # every Redis failure redis-py raises (ConnectionError, ResponseError: OOM, READONLY, MISCONF, LOADING, ...)


def brief(exc: BaseException) -> str:
    """An exception for a log line: its type and first line, bounded (no traceback, no URL with a password)."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
