"""A flow process's logging and ops server (`/healthz`, `/readyz`, `/metrics`), started by `build_flow`.

`build_flow()` runs in every process of a Bytewax cluster before the dataflow starts, so each
process serves its own endpoints. On one host the processes would collide on one port, so a
process listens on its flow's base port plus its Bytewax process id (`-i`/`--process-id`,
`BYTEWAX_PROCESS_ID`, or the StatefulSet pod ordinal Bytewax itself reads from
`BYTEWAX_POD_NAME`); with `OPS_PORT_PER_PROCESS=false` (one process per pod) every process uses
the base port. Bytewax's own API server (`BYTEWAX_DATAFLOW_API_ENABLED`, port
`BYTEWAX_DATAFLOW_API_PORT`, default 3030) binds one port per process too: when it is enabled,
a process with an id gets that port plus its id in the same way, so a cluster on one host
never binds it twice.

>>> process_id(["-m", "bytewax.run", "flows.ohlcv:build_flow()", "-i", "2", "-a", "x;y;z"], {})
2
>>> process_id(["flows.ohlcv:build_flow()", "--process-id=1"], {}), process_id([], {"BYTEWAX_PROCESS_ID": "3"})
(1, 3)
>>> process_id([], {"BYTEWAX_POD_NAME": "bars-4", "BYTEWAX_STATEFULSET_NAME": "bars"}), process_id([], {})
(4, None)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Literal

from connectors.monitoring.logs import configure_logging
from connectors.monitoring.server import CannotServe, OpsServer
from flows.settings import Settings

log = logging.getLogger("tickstock.monitoring")

Flow = Literal["ohlcv", "detection"]
BYTEWAX_API_PORT = 3030  # Bytewax 0.21's default for BYTEWAX_DATAFLOW_API_PORT (src/webserver/mod.rs)
_servers: dict[tuple[str, int], OpsServer] = {}  # one per address in a process (tests build flows repeatedly)


def process_id(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int | None:
    """This process's Bytewax process id, as `python -m bytewax.run` determines it; None outside a cluster."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("-i", "--process-id", type=int)
    try:
        known, _ = parser.parse_known_args(list(argv))
    except SystemExit:  # -i without a number: bytewax.run itself reports that
        known = argparse.Namespace(process_id=None)
    if known.process_id is not None:
        return int(known.process_id)
    if env.get("BYTEWAX_PROCESS_ID", "").strip().isdigit():
        return int(env["BYTEWAX_PROCESS_ID"])
    pod, statefulset = env.get("BYTEWAX_POD_NAME"), env.get("BYTEWAX_STATEFULSET_NAME")
    if pod and statefulset and pod.startswith(statefulset + "-") and pod[len(statefulset) + 1 :].isdigit():
        return int(pod[len(statefulset) + 1 :])
    return None


def ops_port(base: int, pid: int | None, per_process: bool) -> int:
    """The port this process serves on: the base, plus the process id when processes share a host.

    >>> ops_port(9500, 2, True), ops_port(9500, 2, False), ops_port(9500, None, True), ops_port(0, 3, True)
    (9502, 9500, 9500, 0)
    """
    if base == 0 or pid is None or not per_process:
        return base
    return base + pid


def spread_bytewax_api_port(pid: int | None, per_process: bool, env: MutableMapping[str, str] | None = None) -> int | None:
    """With Bytewax's API server enabled, give this process its own port; returns the port it will bind.

    >>> env = {"BYTEWAX_DATAFLOW_API_ENABLED": "true"}
    >>> spread_bytewax_api_port(1, True, env), env["BYTEWAX_DATAFLOW_API_PORT"]
    (3031, '3031')
    >>> spread_bytewax_api_port(1, True, {}) is None   # not enabled: nothing binds
    True
    """
    env = os.environ if env is None else env
    if "BYTEWAX_DATAFLOW_API_ENABLED" not in env:
        return None
    raw = env.get("BYTEWAX_DATAFLOW_API_PORT", str(BYTEWAX_API_PORT)).strip()
    if not raw.isdigit() or not 0 < int(raw) <= 65535:
        raise SystemExit(f"BYTEWAX_DATAFLOW_API_PORT={raw[:20]!r}: must be a port number (1-65535)")
    port = ops_port(int(raw), pid, per_process)
    if port > 65535:
        raise SystemExit(f"BYTEWAX_DATAFLOW_API_PORT={raw} + process id {pid} is over 65535")
    env["BYTEWAX_DATAFLOW_API_PORT"] = str(port)  # read by Bytewax's Rust side when the dataflow starts
    return port


def start_monitoring(settings: Settings, flow: Flow) -> OpsServer | None:
    """Logging as LOG_LEVEL / LOG_FORMAT say, then this process's ops server (None when its port is 0).

    A port that cannot be bound ends the program with exit code 2 and the variable to change.
    """
    service = f"{flow}_flow"
    configure_logging(settings, service)
    pid = process_id()
    spread_bytewax_api_port(pid, settings.ops_port_per_process)
    variable = "BAR_FLOW_OPS_PORT" if flow == "ohlcv" else "DETECTION_FLOW_OPS_PORT"
    base = settings.bar_flow_ops_port if flow == "ohlcv" else settings.detection_flow_ops_port
    port = ops_port(base, pid, settings.ops_port_per_process)
    if port == 0:
        return None
    if port > 65535:
        print(f"{service}: {variable}={base} + process id {pid} is over 65535", file=sys.stderr)
        raise SystemExit(2)
    running = _servers.get((settings.ops_host, port))
    if running is not None:
        return running
    try:
        server = OpsServer(settings.ops_host, port, service=service, variable=variable, stall_s=settings.liveness_stall_s)
    except CannotServe as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _servers[(settings.ops_host, port)] = server.start()
    return server
