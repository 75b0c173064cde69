"""Dependencies run one way: `schemas` <- `connectors` <- `flows`, with `infra` and the programs on top.

Read from the source (every import statement, also those inside functions), so an import that
runs the wrong way fails here before it can tangle the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.source import parse

ROOT = Path(__file__).resolve().parents[2]
# What each layer may import from the project; anything else of the project is a wrong-way import.
ALLOWED = {
    "schemas": {"schemas"},
    "connectors": {"schemas", "connectors"},
    "flows": {"schemas", "connectors", "flows"},
    "infra": {"schemas", "connectors", "flows", "infra"},
}
PROJECT = set(ALLOWED) | {"tests", "bench"}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _wrong_way(layer: str) -> list[str]:
    wrong = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top in PROJECT and top not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return wrong


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_import_runs_the_wrong_way(layer: str) -> None:
    assert _wrong_way(layer) == []


def test_the_check_sees_a_wrong_way_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from flows.settings import Settings\n")
    assert _imports(module) == [(2, "flows.settings")]
