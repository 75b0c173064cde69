#!/usr/bin/env bash
# The embedded TimescaleDB's Node.js packages (PGlite with TimescaleDB compiled in) from npm, pinned by
# infra/timescale/package-lock.json, into infra/timescale/node_modules (never committed). The server
# itself is infra/timescale/server.mjs, started and stopped by `python -m infra.embedded_timescale`.
#
# Needs Node.js >= 18 and npm: as root on Debian it installs Debian's `npm` (which brings `nodejs`)
# when npm is missing. Re-runs `npm ci` only when the lock file changed since the last install.
set -euo pipefail

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/timescale" && pwd)
STAMP="$DIR/node_modules/.tickstock-installed"

say() { printf 'timescale: %s\n' "$*"; }
die() { printf 'error: timescale: %s\n' "$*" >&2; exit 1; }

if [[ -f $STAMP && $STAMP -nt $DIR/package-lock.json ]]; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing Debian's npm (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends npm >/dev/null
    else
        die "npm is not installed: install Node.js/npm (Debian: sudo apt-get install npm) for the embedded TimescaleDB"
    fi
fi
major=$(node -p 'process.versions.node.split(".")[0]')
[[ $major -ge 18 ]] || die "Node.js $(node --version) is too old for PGlite: 18 or newer is needed"
say "npm ci in $DIR"
(cd "$DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
touch "$STAMP"
