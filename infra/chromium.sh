#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser test: Debian's `chromium`, installed as root when missing.
#
# Not root, or not Debian: says so and goes on; the browser test then skips with that reason.
set -euo pipefail

say() { printf 'chromium: %s\n' "$*"; }

if command -v chromium >/dev/null; then
    exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian's chromium (apt-get; once per machine)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null
else
    say "not installed and cannot install it here (needs root on Debian: apt-get install chromium); the browser test will skip"
fi
