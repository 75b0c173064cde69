"""The examples in the domain modules' docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "flows.conditions", "flows.bars", "schemas.polygon", "schemas.events", "schemas.channels", "schemas.status",
        "connectors.synthetic", "schemas.symbols", "connectors.dead_letter", "flows.event_time",
        "flows.detect.settings", "flows.detect.sessions", "flows.detect.series", "flows.detect.indicators",
        "flows.detect.patterns", "flows.detect.trend", "flows.detect.surge", "flows.detect.highlow",
        "flows.detect.bar_detector",
        "connectors.gateway.protocol", "connectors.gateway.fanout", "connectors.gateway.auth",
        "connectors.gateway.metrics", "connectors.gateway.rest",
    ],
)  # fmt: skip
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
