"""How long the bridge stays calm before its backoff starts over; the delays are `connectors.backoff.backoff_s`."""

from __future__ import annotations

from typing import Final

QUIET_S: Final = 30.0  # this long without a failure (beyond twice the backoff cap), backoff starts over
