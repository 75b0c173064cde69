"""The moving parts of a live chaos run: the paced feed, the flows as processes, proxies, a Redis recorder.

Everything here drives the programs from outside, as an operator would: the flows are
`python -m bytewax.run ...` processes configured by environment variables, outages are TCP
proxies (`tests.support.proxy.KafkaProxy`, which forwards any TCP protocol) in front of the broker,
PostgreSQL or Redis, and what reached Redis is read back by a subscriber that catches up from the
channel history after it reconnects, like a dashboard.

Slightly over 400 lines: four small independent classes a scenario composes; none would be
clearer in a file of its own.
"""

from __future__ import annotations

import bisect
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis

from connectors.kafka.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
BAR_FLOW = "flows.ohlcv:build_flow()"
DETECTION_FLOW = "flows.detection:build_flow()"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_of(url: str, default: int) -> int:
    return urlsplit(url).port or default


def with_port(url: str, port: int) -> str:
    """`url` with its host:port replaced by 127.0.0.1:`port` (user and path kept)."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, parts.query, parts.fragment))


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


# ---- the feed ----------------------------------------------------------------------------------


@dataclass
class Record:
    """One record the feeder publishes: where, what, why (label) and what should become of it."""

    topic: str
    key: bytes | None
    value: bytes | None
    label: str  # the synthetic feed's label, or "poison:<class>"
    clock_ms: int  # event clock it belongs to (feed records), or the feed clock when injected (poison)
    expect: tuple[str, ...] | None = None  # dead-letter kinds it may get, the preferred first; None: none
    any_outcome: bool = False  # poison whose only requirement is that nothing crashes
    due_s: float = 0.0  # wall seconds after the feed's start
    partition: int | None = None  # from the delivery report
    offset: int | None = None
    error: str | None = None
    produced_at: float = 0.0


class Feeder(threading.Thread):
    """Publishes `records` paced to the wall clock (each at its `due_s`), recording where each landed."""

    def __init__(self, kafka: KafkaSettings, records: list[Record]) -> None:
        super().__init__(name="feeder", daemon=True)
        from connectors.kafka import clients

        self.records = records
        self.producer = clients.producer(kafka, {
            "enable.idempotence": True, "acks": "all", "linger.ms": 5,
            "message.timeout.ms": 0,  # retry until the broker is back, however long an outage lasts
            "message.max.bytes": 2_000_000,
            "log_level": 0,  # an outage is the point here: no line per failed connect
        })  # fmt: skip
        self.started_at = 0.0
        self.produced = 0
        self.finished = threading.Event()
        self.unflushed = 0
        self.failure: str | None = None

    def run(self) -> None:
        try:
            self._publish()
        except Exception as exc:  # noqa: BLE001 - reported by the scenario, never swallowed
            self.failure = f"{type(exc).__name__}: {exc}"
        finally:
            self.finished.set()

    def _publish(self) -> None:
        self.started_at = time.monotonic()
        for record in self.records:
            ahead = self.started_at + record.due_s - time.monotonic()
            if ahead > 0.002:
                time.sleep(ahead)
            record.produced_at = time.monotonic()

            def delivered(err: Any, msg: Any, record: Record = record) -> None:
                if err is not None:
                    record.error = str(err)
                else:
                    record.partition, record.offset = msg.partition(), msg.offset()

            while True:
                try:
                    self.producer.produce(record.topic, record.value, record.key, on_delivery=delivered)
                    break
                except BufferError:
                    self.producer.poll(0.05)
            self.produced += 1
            self.producer.poll(0)
        self.unflushed = self.producer.flush(300)

    def produced_before(self, monotonic_at: float) -> int:
        """How many records had been handed to the producer by `monotonic_at`."""
        return bisect.bisect_right([r.produced_at for r in self.records[: self.produced]], monotonic_at)


# ---- the flows ---------------------------------------------------------------------------------


@dataclass
class Crash:
    flow: str
    at_s: float  # seconds after the scenario started
    returncode: int | None
    reason: str
    log: str


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Fatal|Unavailable)(?::|$)")
_FILE_LINE = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')


class FlowProcess:
    """One flow as an operator runs it: its own recovery store, restarted from it after a kill or a crash."""

    def __init__(self, name: str, import_str: str, env: dict[str, str], workdir: Path, snapshot_s: float,
                 recovery: bool = True) -> None:  # fmt: skip
        self.name = name
        self.import_str = import_str
        self.env = env
        self.workdir = workdir
        self.recovery_dir = workdir / f"{name}-recovery"
        self.snapshot_s = snapshot_s
        self.recovery = recovery
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.expected_exit = False
        self.lock = threading.RLock()
        self.logs: list[Path] = []

    def init_recovery(self) -> None:
        self.recovery_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(self.recovery_dir), "1"], check=True, env=self.env,
                       cwd=ROOT, capture_output=True)  # fmt: skip

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "bytewax.run", self.import_str]
        if self.recovery:
            command += ["-r", str(self.recovery_dir), "-s", str(self.snapshot_s), "-b", "0"]
        return command

    def start(self) -> None:
        with self.lock:
            self.starts += 1
            log = self.workdir / f"{self.name}-{self.starts}.log"
            self.logs.append(log)
            with log.open("wb") as out:
                self.proc = subprocess.Popen(self.command(), env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            self.expected_exit = False

    def kill9(self) -> None:
        with self.lock:
            self.expected_exit = True
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(30)

    def stop(self) -> None:
        """End a tailing flow (it never ends on its own): SIGINT, then SIGKILL."""
        with self.lock:
            self.expected_exit = True
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)

    def restart_if_dead(self) -> bool:
        """Start again unless someone else did (or stopped it on purpose) meanwhile."""
        with self.lock:
            if self.exited_on_its_own():
                self.start()
                return True
            return False

    def exited_on_its_own(self) -> bool:
        with self.lock:
            return self.proc is not None and not self.expected_exit and self.proc.poll() is not None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def last_log(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""


def crash_reason(log: str) -> str:
    r"""Why a flow died: the first Python exception in its log (the root cause, not Bytewax's wrapper), and where.

    >>> crash_reason('Traceback (most recent call last):\n  File "/x/flows/book.py", line 125, in _apply\n'
    ...              '    trade = decode(raw)\nTypeError: bad\n\nbytewax.errors.BytewaxRuntimeError: wrapped')
    'TypeError: bad (flows/book.py:125 in _apply)'
    """
    lines = log.splitlines()
    where = ""
    for line in lines:
        found = _FILE_LINE.match(line)
        if found:
            path = found.group(1)
            marker = next((m for m in ("/flows/", "/connectors/", "/schemas/", "/bench/") if m in path), None)
            where = f"{path[path.index(marker) + 1 :]}:{found.group(2)} in {found.group(3)}" if marker else where
            continue
        if _EXC_LINE.match(line) and not line.startswith("bytewax.errors."):
            return f"{line.strip()[:300]}" + (f" ({where})" if where else "")
    wrapped = [line for line in lines if line.startswith("bytewax.errors.")]
    if wrapped:
        return wrapped[-1][:300]
    rest = [line.strip() for line in lines if line.strip()]
    return rest[-1][:300] if rest else "(no output)"


class Supervisor(threading.Thread):
    """Watches the flows: one that exits on its own is a crash; it is restarted (as systemd would), a few times."""

    def __init__(self, flows: list[FlowProcess], started: float, max_restarts: int = 4, restart_delay_s: float = 2.0) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.flows = flows
        self.started = started
        self.max_restarts = max_restarts
        self.restart_delay_s = restart_delay_s
        self.crashes: list[Crash] = []
        self.gave_up: set[str] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.25):
            for flow in self.flows:
                if flow.name in self.gave_up or not flow.exited_on_its_own():
                    continue
                log = flow.last_log()
                self.crashes.append(Crash(flow.name, round(time.monotonic() - self.started, 1), flow.proc.returncode,  # type: ignore[union-attr]
                                          crash_reason(log), str(flow.logs[-1])))  # fmt: skip
                if sum(c.flow == flow.name for c in self.crashes) > self.max_restarts:
                    self.gave_up.add(flow.name)
                    with flow.lock:
                        flow.expected_exit = True
                    continue
                if self._halt.wait(self.restart_delay_s):
                    return
                flow.restart_if_dead()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# ---- dependencies ------------------------------------------------------------------------------


# ---- what reached Redis ------------------------------------------------------------------------


@dataclass
class RecorderStats:
    connections: int = 0
    disconnects: int = 0
    catch_ups: int = 0
    caught_up_messages: int = 0
    resets: int = 0  # catch-ups the history could not serve (complete=False)
    errors: list[str] = field(default_factory=list)


class FinalBarRecorder(threading.Thread):
    """Every message on the all-symbols final-bar channel, through reconnects, with catch-up from its history."""

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(name="redis-recorder", daemon=True)
        self.url = url
        self.channel = channel
        self.messages: dict[tuple[str, int], bytes] = {}  # (epoch, offset) -> payload: catch-up and live overlap
        self.stats = RecorderStats()
        self._position: tuple[str, int] = ("", 0)
        self._halt = threading.Event()
        self.subscribed = threading.Event()
        self._away_until = 0.0  # monotonic: no reconnect before (a dashboard that comes back late)

    def stay_away_until(self, monotonic_at: float) -> None:
        """Once disconnected, reconnect no earlier than this: what was published meanwhile must come from the history."""
        self._away_until = monotonic_at

    def run(self) -> None:
        from connectors.redis.history import History

        backoff = 0.2
        while not self._halt.is_set():
            client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self.stats.connections += 1
                if self.stats.connections > 1:
                    self._catch_up(History(client))
                self.subscribed.set()
                backoff = 0.2
                while not self._halt.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message["type"] == "message":
                        self._add(message["data"])
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self.stats.disconnects += 1
                if len(self.stats.errors) < 5:
                    self.stats.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                try:
                    pubsub.close()
                    client.close()
                except (redis.RedisError, OSError) as exc:
                    self.stats.errors.append(f"closing: {type(exc).__name__}: {exc}")
            self._halt.wait(max(backoff, self._away_until - time.monotonic()))
            backoff = min(backoff * 2, 2.0)

    def _catch_up(self, history: Any) -> None:
        epoch, offset = self._position
        if not epoch:  # lost before the first message: everything the channel's history holds
            epoch, offset = history.position(self.channel)[0], 0
            if not epoch:
                return  # nothing was published yet
        missed = history.since(self.channel, epoch, offset)
        self.stats.catch_ups += 1
        if not missed.complete:
            self.stats.resets += 1
            return
        for raw in missed.messages:
            self._add(raw)
            self.stats.caught_up_messages += 1

    def _add(self, raw: bytes) -> None:
        head = orjson.loads(raw)
        key = (str(head.get("epoch", "")), int(head.get("offset", 0)))
        self.messages[key] = raw
        if key[0] != self._position[0] or key[1] > self._position[1]:
            self._position = key

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def newest(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The newest revision seen per (symbol, minute), as a consumer keeps it."""
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for (_, _), raw in sorted(self.messages.items()):
            bar = orjson.loads(raw)
            key = (bar["symbol"], bar["timestamp"])
            if key not in out or out[key]["revision"] <= bar["revision"]:
                out[key] = bar
        return out


# ---- small helpers -----------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


def flow_env(settings: Any, **extra: str) -> dict[str, str]:
    env = os.environ | settings.as_env() | extra
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
