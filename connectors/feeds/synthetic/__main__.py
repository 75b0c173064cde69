"""`python -m connectors.feeds.synthetic`: publish the synthetic feed (see `connectors.feeds.synthetic.program`)."""

from __future__ import annotations

import sys

from connectors.feeds.synthetic.program import main

sys.exit(main())
