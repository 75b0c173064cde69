"""`make core`: compile the bar book (`flows/bars.py`, `flows/book.py`) with Cython, in place.

The trade loop is the bar flow's CPU per tick; compiled, with the C types its `.pxd` files and
`cython.locals` declare, it runs 1.32 x faster than the same source run as Python (issue 13;
`python -m bench.book` measures it; callgrind: 13,060 instructions per tick against 17,935).
The build is setuptools' (`setup.py build_ext --inplace`: Cython writes its C under build/cython,
gcc links a `.so` beside each source), which rebuilds only what changed, so this runs before
every `make demo`, `make test` and `make bench`.

A C compiler and the interpreter's headers are needed: as root on Debian, the missing ones are
installed (gcc; python3-dev for Debian's own Python). `flows/__init__.py` refuses a build that is
older than its sources; deleting the `.so` files runs the Python sources instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    print(f"core: {message}", flush=True)


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"error: core: {' '.join(packages)} missing; install it (Debian: apt-get install {' '.join(packages)})")
    say(f"installing {' '.join(packages)} (apt-get)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True, env=env)


def ensure_toolchain() -> None:
    """gcc and Python.h, installed on Debian when missing (root)."""
    compiler = (sysconfig.get_config_var("CC") or "gcc").split()[0]  # what setuptools will call
    if shutil.which(compiler) is None:
        _apt_install("gcc", "libc6-dev")
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.exists():
        _apt_install(f"python{sys.version_info.major}.{sys.version_info.minor}-dev")
        if not header.exists():
            raise SystemExit(f"error: core: {header} is still missing: this interpreter's headers are not Debian's package")


def main() -> int:
    ensure_toolchain()
    started = time.perf_counter()
    build = subprocess.run(
        [sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if build.returncode != 0:
        sys.stderr.write(build.stdout[-4000:] + build.stderr[-4000:])
        raise SystemExit(f"error: core: compiling the bar book failed (exit {build.returncode})")
    built = sorted(p.name for p in (ROOT / "flows").glob("*.so"))
    say(f"{', '.join(built)} up to date ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
