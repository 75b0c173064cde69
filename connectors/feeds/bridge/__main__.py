"""`python -m connectors.feeds.bridge`: the live bridge (see `connectors.feeds.bridge.program`)."""

from __future__ import annotations

import sys

from connectors.feeds.bridge.program import run

sys.exit(run())
