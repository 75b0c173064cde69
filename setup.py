"""Build hooks: the bar book compiled with Cython, and the dashboard's chart library in the package.

Everything else about the package is in pyproject.toml.

`flows/bars.py` and `flows/book.py` are compiled to extension modules (their `.pxd` files declare the
C types): `make core` builds them in place for a checkout
(`python setup.py build_ext --inplace`, via infra/core.py), and a wheel carries them. The `.py`
sources stay importable without the build.

The gateway serves connectors/gateway/vendor/ under /vendor/: TradingView's lightweight-charts from npm, pinned by
infra/dashboard/package-lock.json, which infra/dashboard.sh installs (`npm ci`) and copies there
(never committed). A wheel built without it would serve a dashboard with no chart, so the build
runs that script (from a checkout; an sdist already carries the copy) and fails if the file is
still missing. An editable install (`make venv`) skips this: it serves the checkout's copy,
made by `make dashboard-assets`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from Cython.Build import cythonize
from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CHART_LIBRARY = ROOT / "connectors" / "gateway" / "vendor" / "lightweight-charts.standalone.production.js"
ASSETS_SCRIPT = ROOT / "infra" / "dashboard.sh"
# A module of flows/ with a .pxd beside it is compiled (the same rule as flows/__init__.py's check).
COMPILED = sorted(str(pxd.with_suffix(".py").relative_to(ROOT)) for pxd in (ROOT / "flows").glob("*.pxd"))


class BuildWithChartLibrary(build_py):
    def run(self) -> None:
        if not getattr(self, "editable_mode", False):
            if ASSETS_SCRIPT.exists():
                result = subprocess.run(["bash", str(ASSETS_SCRIPT)], check=False)
                if result.returncode != 0:
                    raise SystemExit(
                        f"error: {ASSETS_SCRIPT} failed (exit {result.returncode}): the wheel needs the chart library"
                    )
            if not CHART_LIBRARY.exists():
                raise SystemExit(f"error: {CHART_LIBRARY} is missing: run `make dashboard-assets` (npm ci) before building")
        super().run()


setup(
    cmdclass={"build_py": BuildWithChartLibrary},
    ext_modules=cythonize(COMPILED, build_dir="build/cython", quiet=True, compiler_directives={"language_level": 3}),
)
