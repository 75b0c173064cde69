#!/usr/bin/env bash
# The dashboard's browser libraries (lightweight-charts) from npm, pinned by infra/dashboard/package-lock.json,
# into infra/dashboard/node_modules, then the file the page loads (the standalone build) and its licence into
# connectors/gateway/vendor/: the gateway serves that folder under /vendor/ and the wheel ships it (setup.py
# runs this script when building). Neither folder is committed.
#
# Needs npm: as root on Debian it installs Debian's `npm` when missing. Re-runs `npm ci` only when the
# lock file changed since the last install; the copy is made every time (it is one file).
set -euo pipefail

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/dashboard" && pwd)
STAMP="$DIR/node_modules/.tickstock-installed"
LIBRARY="$DIR/node_modules/lightweight-charts"
VENDOR="$DIR/../../connectors/gateway/vendor"

vendor() {
    [[ -f $LIBRARY/dist/lightweight-charts.standalone.production.js ]] \
        || die "$LIBRARY/dist has no lightweight-charts.standalone.production.js: remove $DIR/node_modules and re-run"
    mkdir -p "$VENDOR"
    cp "$LIBRARY/dist/lightweight-charts.standalone.production.js" "$VENDOR/"
    cp "$LIBRARY/LICENSE" "$VENDOR/lightweight-charts.LICENSE"
}

say() { printf 'dashboard: %s\n' "$*"; }
die() { printf 'error: dashboard: %s\n' "$*" >&2; exit 1; }

if [[ -f $STAMP && $STAMP -nt $DIR/package-lock.json ]]; then
    vendor
    exit 0
fi
if ! command -v npm >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing Debian's npm (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends npm >/dev/null
    else
        die "npm is not installed: install Node.js/npm (Debian: sudo apt-get install npm) for the dashboard's chart library"
    fi
fi
say "npm ci in $DIR"
(cd "$DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
touch "$STAMP"
vendor
