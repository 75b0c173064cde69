#!/usr/bin/env bash
# Create .venv with Python >= 3.11 and install the project with its test extras.
#
# Uses $PYTHON if set, else the first of python3.11, python3.12, python3.13, python3 that is
# >= 3.11. On Debian, `python3 -m venv` needs the python3-venv package: as root this script
# installs it (apt-get) when venv creation fails for that reason. Called by `make venv`,
# which re-runs it when pyproject.toml changes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"

say() { printf 'venv: %s\n' "$*"; }
die() { printf 'error: venv: %s\n' "$*" >&2; exit 1; }
recent_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
as_root_with_apt() { [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; }
apt_install() {
    say "installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pick_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null && recent_enough "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# A .venv whose interpreter is gone (moved checkout, removed pyenv version) is rebuilt.
if [[ -e $VENV ]] && ! recent_enough "$VENV/bin/python"; then
    [[ -f $VENV/pyvenv.cfg ]] || die "$VENV exists but is not a virtualenv; move it away"
    say "rebuilding $VENV (its interpreter is missing or older than 3.11)"
    rm -rf "$VENV"
fi

if [[ ! -e $VENV ]]; then
    if ! python=$(pick_python); then
        as_root_with_apt || die "no Python >= 3.11 found; install one (Debian: apt-get install python3 python3-venv) or set PYTHON"
        apt_install python3 python3-venv
        python=$(pick_python) || die "no Python >= 3.11 even after installing Debian's python3"
    fi
    say "creating $VENV with $python ($("$python" -c 'import platform; print(platform.python_version())'))"
    errors=$(mktemp)
    trap 'rm -f "$errors"' EXIT
    if ! "$python" -m venv "$VENV" >"$errors" 2>&1; then # Debian prints the ensurepip hint on stdout
        rm -rf "$VENV" # a half-made one has no pip
        grep -q ensurepip "$errors" || { cat "$errors" >&2; die "python -m venv failed"; }
        as_root_with_apt || die "$python cannot create virtualenvs: install Debian's python3-venv (sudo apt-get install python3-venv)"
        apt_install python3-venv
        "$python" -m venv "$VENV" || die "python -m venv still fails after installing python3-venv"
    fi
fi

say "installing the project and its test extras (pip install -e '.[test]')"
cd "$ROOT"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --quiet -e '.[test]'
