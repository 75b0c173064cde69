# The TickStock Streams image: every program of the project (bridge, synthetic feed, replay, both flows,
# gateway, topics, migrations, bar check, backfill) from the built wheel, as a non-root user.
#
#   docker build -t tickstock-streams:0.1.0 .
#   docker run --rm tickstock-streams:0.1.0 tickstock-migrate --help
#
# No secrets are baked in: every setting is an environment variable at run time (README: Configuration,
# docs/operations.md). deploy/compose.yaml and deploy/k8s/ run this image; tests/unit/test_deploy_files.py
# checks that every command, path, port and variable used here exists in the project.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the wheel, with the dashboard's chart library from npm (setup.py runs infra/dashboard.sh) and the
# bar book compiled by Cython (gcc; the image has Python's headers) ---
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py ./
COPY schemas/ schemas/
COPY connectors/ connectors/
COPY flows/ flows/
COPY infra/ infra/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- run: the wheel and its pinned dependencies (binary wheels: librdkafka, TA-Lib and libpq come with them) ---
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install /tmp/wheels/*.whl && rm -rf /tmp/wheels
# One user for every program; the state directories are its own. The flows' recovery stores and the
# bridge's spool are volumes: they must outlive the container (a flow resumes from its recovery store,
# a stopped bridge leaves what Kafka did not take in its spool).
RUN groupadd --system --gid 10001 tickstock \
    && useradd --system --uid 10001 --gid tickstock --home-dir /var/lib/tickstock --shell /usr/sbin/nologin tickstock \
    && mkdir -p /var/lib/tickstock/recovery/bars /var/lib/tickstock/recovery/detection /var/lib/tickstock/bridge-spool \
    && chown -R tickstock:tickstock /var/lib/tickstock
USER 10001:10001
# An empty working directory: Bytewax's runner puts it first on sys.path, so nothing there can shadow the
# installed package.
WORKDIR /var/lib/tickstock
ENV HOME=/var/lib/tickstock \
    BRIDGE_SPOOL_DIR=/var/lib/tickstock/bridge-spool \
    GATEWAY_HOST=0.0.0.0 \
    OPS_HOST=0.0.0.0
VOLUME ["/var/lib/tickstock/recovery/bars", "/var/lib/tickstock/recovery/detection", "/var/lib/tickstock/bridge-spool"]
# gateway (WebSocket, REST, /healthz, /readyz, /metrics); ops servers of the bridge, the bar flow, the detection flow
EXPOSE 8765 9401 9500 9600
CMD ["tickstock-gateway"]
