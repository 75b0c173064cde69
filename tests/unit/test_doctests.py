"""The examples in the modules' docstrings run: every module under the packages that has one."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "connectors", "flows", "infra")
# The domain modules whose rules are stated as examples: found here, or the discovery is broken.
REQUIRED = {"schemas.conditions", "schemas.timeframes", "flows.bars", "flows.event_time", "flows.detect.indicators"}


def _modules_with_examples() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "node_modules" in path.parts or path.name == "__main__.py" or ">>> " not in path.read_text():
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


MODULES = _modules_with_examples()


def test_the_domain_modules_are_found():
    assert set(MODULES) >= REQUIRED


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
