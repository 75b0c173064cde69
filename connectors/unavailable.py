"""The one error for a service that cannot be used: each client names its service and the fix.

Library code raises it (subclasses per service, so a caller can tell them apart); a program's
`main()` turns it into a message and an exit code, and a sink waits for the service with backoff.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceUnavailable(RuntimeError):
    """A service cannot be reached, or is not set up (no topic, not migrated); the message says how to fix it."""

    service: ClassVar[str] = "a service"
