"""Python source parsed for the tests that read the project's own code (layers, deployment files).

CPython 3.11.7 builds an AST with one recursion counter shared by every thread, and a garbage
collection inside the build can hand the GIL to another thread that is building one too (or to a
finalizer that does): the build then ends in "SystemError: AST constructor recursion depth
mismatch" (python/cpython#106905, fixed in 3.11.8). It failed a structure test once in CI here.
With the collector paused for the parse, nothing inside it lets another thread in.
"""

from __future__ import annotations

import ast
import gc
from pathlib import Path


def parse(path: Path) -> ast.Module:
    """`path`'s module, parsed with the garbage collector paused (see the module docstring)."""
    text = path.read_text()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(text, str(path))
    finally:
        if enabled:
            gc.enable()
