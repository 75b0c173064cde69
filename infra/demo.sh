#!/usr/bin/env bash
# The live demo: synthetic real-time feed -> Kafka -> bar flow -> PostgreSQL, Redis, bars topic -> detection flow
# -> PostgreSQL and Redis -> gateway and dashboard.
# With MASSIVE_API_KEY (or POLYGON_API_KEY) set, the feed is the live Massive/Polygon bridge instead.
#
# `make demo` runs the set-up targets first, then this. Ctrl-C (SIGINT) or SIGTERM stops what the
# demo runs and nothing else: the feed, the flow, the Tansu broker if our set-up started it
# (.run/tansu.pid) and the services our set-up started (.run/started-services).
#
#   SYNTHETIC_ARGS  feed options (default: --symbols 4000 --rate 2000 --realtime)
#   FLOW            Bytewax flow to run (default: "flows.ohlcv:build_flow()"); FLOW_ARGS: extra bytewax.run options
#   DETECTION_FLOW_ARGS  extra bytewax.run options of the detection flow (its own recovery directory, if any)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=.venv/bin/python
FEED_LOG=.run/synthetic.log
FLOW=${FLOW:-flows.ohlcv:build_flow()}
read -ra feed_args <<<"${SYNTHETIC_ARGS:---symbols 4000 --rate 2000 --realtime}"
read -ra flow_args <<<"${FLOW_ARGS:-}"
read -ra detection_args <<<"${DETECTION_FLOW_ARGS:-}"
mkdir -p .run

say() { printf 'demo: %s\n' "$*"; }

pids=()              # children in start order: the feed first, so it stops first
declare -A started=() # pid -> what it is
stopping=

# Stop one child's whole process group: SIGINT first (lets the flow finish its batch), then harder.
# shellcheck disable=SC2329 # called from stop_all
stop_group() {
    local pid=$1 signal
    for signal in INT TERM KILL; do
        kill -"$signal" -- "-$pid" 2>/dev/null || return 0
        for _ in $(seq 50); do
            kill -0 -- "-$pid" 2>/dev/null || return 0
            sleep 0.2
        done
    done
}

# shellcheck disable=SC2329 # called by the EXIT trap
stop_all() {
    [[ -n $stopping ]] && return 0
    stopping=1
    trap '' INT TERM # a second Ctrl-C must not cut the clean-up short (each step is bounded)
    local pid
    for pid in "${pids[@]}"; do
        if kill -0 -- "-$pid" 2>/dev/null; then
            say "stopping the ${started[$pid]} (pid $pid)"
            stop_group "$pid"
        fi
    done
    "$PY" -m infra.broker stop | sed 's/^/demo: /' || true
    bash infra/services.sh stop | sed 's/^/demo: /' || true
}
trap stop_all EXIT
trap 'echo; exit 130' INT # echo: the terminal's ^C has no newline
trap 'exit 143' TERM

read -r db_url redis_url final_channel live_channel events_pattern patterns_channel < <(
    "$PY" - <<'EOF'
from urllib.parse import urlsplit

from schemas.channels import Channels
from flows.settings import Settings
from infra.databases import public_url

s = Settings()
r = urlsplit(s.redis_url)  # printed without credentials (redis-cli reads REDISCLI_AUTH)
redis_url = f"{r.scheme}://{r.hostname}:{r.port or 6379}{r.path}"
channels = Channels(s.redis_namespace)
print(public_url(s.database_url), redis_url, channels.ohlcv, channels.live_for("*"), channels.events_for("*"),
      channels.patterns_streaming)
EOF
)

# Each child runs in its own process group, so the terminal's Ctrl-C reaches only us and we stop
# the children in order (feed first) and as a whole. A script's background jobs ignore SIGINT;
# the launcher restores it, so SIGINT gives the feed and the flow their graceful shutdown.
# (Not `set -m`: bash job control in a script proved unreliable under make and in containers.)
LAUNCH='import os, signal, sys; os.setpgid(0, 0); signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])'
start_child() { # description, command...
    local what=$1
    shift
    "$PY" -c "$LAUNCH" "$@" </dev/null &
    pids+=("$!")
    started[$!]=$what
}
if [[ -n ${MASSIVE_API_KEY:-}${POLYGON_API_KEY:-} ]]; then
    FEED_LOG=.run/bridge.log
    start_child "bridge" "$PY" -m connectors.feeds.bridge >>"$FEED_LOG" 2>&1
else
    start_child "synthetic feed" "$PY" -m connectors.feeds.synthetic "${feed_args[@]}" >>"$FEED_LOG" 2>&1
fi
# Bytewax stops on SIGINT with a Rust panic; keep that to one message instead of a backtrace.
RUST_BACKTRACE=0 start_child "flow" "$PY" -m bytewax.run "$FLOW" "${flow_args[@]}"
RUST_BACKTRACE=0 start_child "detection flow" "$PY" -m bytewax.run "flows.detection:build_flow()" "${detection_args[@]}"
# The gateway and its dashboard, without authentication: a local demo (GATEWAY_DEV_MODE, README: Gateway).
GATEWAY_LOG=.run/gateway.log
GATEWAY_DEV_MODE=true start_child "gateway" "$PY" -m connectors.gateway >>"$GATEWAY_LOG" 2>&1

if [[ $FEED_LOG == .run/bridge.log ]]; then
    say "feed: python -m connectors.feeds.bridge, live from Massive (log: $FEED_LOG)"
    say "bridge health: grep health $FEED_LOG | tail -1   (a line every ${BRIDGE_HEALTH_INTERVAL_S:-10} s)"
else
    say "feed: python -m connectors.feeds.synthetic ${feed_args[*]} (log: $FEED_LOG)"
fi
say "flows: python -m bytewax.run '$FLOW' ${flow_args[*]}  (bars, session highs/lows)"
say "       python -m bytewax.run 'flows.detection:build_flow()' ${detection_args[*]}  (indicators, patterns, trends, surges, alerts)"
say "latest bars:   psql '$db_url' -c 'SELECT * FROM ohlcv_1min ORDER BY timestamp DESC, symbol LIMIT 20'"
say "final bars:    redis-cli -u '$redis_url' subscribe $final_channel"
say "forming bars:  redis-cli -u '$redis_url' psubscribe '$live_channel'"
say "events:        psql '$db_url' -c 'SELECT kind, type, symbol, timestamp, confidence FROM events ORDER BY timestamp DESC LIMIT 20'"
say "               redis-cli -u '$redis_url' psubscribe '$events_pattern'    (or: subscribe $patterns_channel)"
say "indicators:    psql '$db_url' -c 'SELECT * FROM indicator_values ORDER BY timestamp DESC LIMIT 20'"
say "bars appear once a minute has closed (plus the close delay); the first within about 1.5 minutes;"
say "session highs/lows at once, patterns and surges with the first bars, RSI-based alerts after 15 minutes"
say "dashboard:     http://${GATEWAY_HOST:-127.0.0.1}:${GATEWAY_PORT:-8765}/dashboard/?timeframe=5m   (1m 5m 15m 1h 1d buttons; gateway log: $GATEWAY_LOG; development mode, no login)"
say "Ctrl-C stops the feed, the flows, the gateway and whatever our set-up started"

# Wait for either child; if one ends on its own, the demo is over.
status=0
wait -n "${pids[@]}" || status=$?
for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        hint=
        [[ ${started[$pid]} == gateway ]] && hint="; its output is in $GATEWAY_LOG"
        [[ ${started[$pid]} == *feed || ${started[$pid]} == bridge ]] && hint="; its output is in $FEED_LOG"
        say "the ${started[$pid]} exited on its own (status $status)$hint"
    fi
done
exit "$status"
