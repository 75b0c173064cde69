"""`python -m connectors.feeds.bridge`: the live bridge (see `connectors.feeds.bridge.program`)."""

from __future__ import annotations

import sys

from connectors.feeds.bridge.program import Exit, main

try:
    sys.exit(main())
except Exit as exc:
    print(exc, file=sys.stderr)
    sys.exit(exc.code)
