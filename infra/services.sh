#!/usr/bin/env bash
# PostgreSQL and Redis for local development, tests and the demo.
#
#   infra/services.sh [start]   make sure both answer; use running ones, else install/start them
#   infra/services.sh stop      stop only what this script started (listed in .run/started-services)
#
# Uses servers that already answer. Otherwise, for a loopback DATABASE_URL / REDIS_URL, installs
# Debian's `postgresql` / `redis-server` when missing (needs root) and starts them without systemd
# (containers). A non-loopback URL that does not answer is an error: we never manage remote servers.
#
# LOCAL DEVELOPMENT ONLY: when this script installs or initialises the PostgreSQL cluster, it
# trusts every TCP connection from 127.0.0.1 and ::1 (no password), so `postgres@127.0.0.1` works
# as in DATABASE_URL's default. Do not use this set-up on a shared or production host.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR="$ROOT/.run"
STARTED="$RUN_DIR/started-services"
PY=${PYTHON:-$ROOT/.venv/bin/python}
DATABASE_URL=${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/tickstock}
TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/tickstock_test}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
TRUST_MARK="# tickstock-streams local development: trust loopback TCP (added by infra/services.sh)"

say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# host and port of a URL, e.g. "127.0.0.1 5432"
endpoint() {
    "$PY" -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or sys.argv[2])' "$1" "$2"
}
is_loopback() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 ]]; }
# shellcheck disable=SC2016 # $1/$2 expand in the inner bash
port_open() { timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null; }
# PostgreSQL's SSLRequest gets a one-byte S or N before any authentication: a real protocol answer,
# unlike a bare TCP connect (which proxies and other servers also accept).
pg_answers() {
    # shellcheck disable=SC2016
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "\x00\x00\x00\x08\x04\xd2\x16\x2f" >&3 &&
        IFS= read -r -n 1 reply <&3 && [[ $reply == [SN] ]]' _ "$1" "$2" 2>/dev/null
}
# Any RESP reply (+PONG, -NOAUTH ...) means a Redis answers, password or not.
redis_answers() {
    # shellcheck disable=SC2016
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "PING\r\n" >&3 && IFS= read -r reply <&3 && [[ $reply == [+-]* ]]' \
        _ "$1" "$2" 2>/dev/null
}
record() { mkdir -p "$RUN_DIR"; grep -qxF "$1" "$STARTED" 2>/dev/null || printf '%s\n' "$1" >>"$STARTED"; }

APT_UPDATED=
apt_install() {
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "$1 is not installed and only root on Debian/Ubuntu can install it here: install it (sudo apt-get install $*), or point the URL at a running server"
    fi
    if [[ -z $APT_UPDATED ]]; then
        say "services: apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    say "services: installing $* (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_cluster_running() { pg_ctlcluster "$1" main status >/dev/null 2>&1; }

# Trust loopback TCP for the cluster we installed/initialised (see the header: local development only).
pg_trust_loopback() {
    local hba="/etc/postgresql/$1/main/pg_hba.conf"
    grep -qxF "$TRUST_MARK" "$hba" && return 0
    say "services: postgresql: trusting 127.0.0.1 and ::1 TCP connections in $hba (local development set-up)"
    local tmp
    tmp=$(mktemp)
    printf '%s\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n\n' "$TRUST_MARK" | cat - "$hba" >"$tmp"
    cat "$tmp" >"$hba" # keeps the file's owner and mode
    rm -f "$tmp"
}

ensure_postgres() {
    local host port
    read -r host port < <(endpoint "$DATABASE_URL" 5432)
    if pg_answers "$host" "$port"; then
        say "services: postgresql: answering at $host:$port (already running)"
        return 0
    fi
    is_loopback "$host" ||
        die "PostgreSQL at $host:$port (DATABASE_URL) is unreachable; start it or fix DATABASE_URL (remote servers are not managed here)"

    local initialised=
    if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
        apt_install postgresql
        initialised=1
    fi
    local version
    version=$(find /etc/postgresql -mindepth 2 -maxdepth 2 -name main -printf '%P\n' 2>/dev/null | cut -d/ -f1 | sort -V | tail -n1)
    if [[ -z $version ]]; then
        version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)
        say "services: postgresql: creating cluster $version/main"
        pg_createcluster "$version" main >/dev/null
        initialised=1
    fi
    if [[ -n $initialised ]]; then
        pg_trust_loopback "$version"
    fi
    if pg_cluster_running "$version"; then
        [[ -n $initialised ]] || die "PostgreSQL $version/main runs but not on $host:$port; fix DATABASE_URL or the cluster's port"
        pg_ctlcluster --skip-systemctl-redirect "$version" main reload # the package's post-install started it
    else
        say "services: postgresql: starting cluster $version/main"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
            die "PostgreSQL $version/main did not start; see /var/log/postgresql/postgresql-$version-main.log"
    fi
    record "postgresql $version main"
    for _ in $(seq 50); do pg_answers "$host" "$port" && break; sleep 0.2; done
    pg_answers "$host" "$port" ||
        die "PostgreSQL $version/main runs but does not answer on $host:$port; check port/listen_addresses in /etc/postgresql/$version/main/postgresql.conf"
    say "services: postgresql: answering at $host:$port (started by us; 'infra/services.sh stop' stops it)"
}

ensure_redis() {
    local host port
    read -r host port < <(endpoint "$REDIS_URL" 6379)
    if redis_answers "$host" "$port"; then
        say "services: redis: answering at $host:$port (already running)"
        return 0
    fi
    is_loopback "$host" ||
        die "Redis at $host:$port (REDIS_URL) is unreachable; start it or fix REDIS_URL (remote servers are not managed here)"
    command -v redis-server >/dev/null || apt_install redis-server
    # the package's post-install may have started its own instance on the default port
    local dir=/var/lib/redis log=/var/log/redis/tickstock.log
    if [[ $(id -u) -ne 0 ]]; then dir=$RUN_DIR/redis log=$RUN_DIR/redis.log; fi
    if ! redis_answers "$host" "$port"; then
        port_open "$host" "$port" && die "$host:$port is taken by something that is not Redis; free it or fix REDIS_URL"
        say "services: redis: starting redis-server on 127.0.0.1:$port (no persistence; log $log)"
        mkdir -p "$dir" "$(dirname "$log")"
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$port" --save '' --appendonly no \
            --dir "$dir" --logfile "$log" || die "redis-server did not start; see $log"
    fi
    for _ in $(seq 50); do redis_answers "$host" "$port" && break; sleep 0.1; done
    redis_answers "$host" "$port" || die "Redis does not answer on $host:$port; see $log"
    record "redis 127.0.0.1 $port"
    say "services: redis: answering at $host:$port (started by us; 'infra/services.sh stop' stops it)"
}

ensure_databases() {
    (cd "$ROOT" && "$PY" -m infra.databases "$DATABASE_URL" "$TEST_DATABASE_URL" | sed 's/^/services: /') ||
        die "cannot create the databases (see above)"
}

stop_started() {
    [[ -s $STARTED ]] || { say "services: nothing started by us to stop"; return 0; }
    local kind a b
    while read -r kind a b; do
        case $kind in
            postgresql)
                say "services: stopping PostgreSQL cluster $a/$b"
                pg_ctlcluster --skip-systemctl-redirect "$a" "$b" stop || true ;;
            redis)
                say "services: stopping Redis on $a:$b"
                redis-cli -h "$a" -p "$b" shutdown nosave >/dev/null 2>&1 || true ;;
        esac
    done <"$STARTED"
    rm -f "$STARTED"
}

case ${1:-start} in
    start)
        [[ -x $PY ]] || die "$PY not found: run 'make venv' first (or set PYTHON)"
        ensure_postgres
        ensure_redis
        ensure_databases ;;
    stop) stop_started ;;
    *) die "usage: infra/services.sh [start|stop]" ;;
esac
