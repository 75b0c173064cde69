"""A Bytewax cluster of flow processes on this host (`-i`/`-a`, `-w`), and what a run leaves behind.

Each process gets its own copy of the settings as environment variables, the same recovery
directory (one host: every process sees every recovery partition, Bytewax picks one worker for
each) and, for the services that serve HTTP per process, nothing that would collide: Bytewax's
own dataflow API stays off.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import redis

from flows.settings import Settings
from tests.support.bars import ROOT
from tests.support.services import free_port, read_topic


def init_recovery(directory: Path, partitions: int, s: Settings) -> None:
    """`python -m bytewax.recovery DIR N`: the recovery partitions, once, before the first run."""
    directory.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(directory), str(partitions)],
                   check=True, env=os.environ | s.as_env(), cwd=ROOT)  # fmt: skip


class Cluster:
    """`processes` x `workers` of `flow`, started together; `wait()` for the end of input."""

    def __init__(self, flow: str, s: Settings, processes: int, workers: int = 1, recovery: Path | None = None) -> None:
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
        env = os.environ | s.as_env()
        env.pop("BYTEWAX_DATAFLOW_API_ENABLED", None)  # one port per host: it would collide
        command = [sys.executable, "-m", "bytewax.run", flow, "-w", str(workers)]
        if processes > 1:
            command += ["-a", addresses]
        if recovery is not None:
            command += ["-r", str(recovery), "-s", "1", "-b", "0"]
        ids = [["-i", str(i)] for i in range(processes)] if processes > 1 else [[]]
        self.processes = [
            subprocess.Popen([*command, *i], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in ids
        ]

    def wait(self, timeout_s: float = 300) -> None:
        """Every process ends by itself (the input ended) with exit code 0."""
        deadline = time.monotonic() + timeout_s
        for p in self.processes:
            try:
                _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("a cluster process did not finish in time") from None
            assert p.returncode == 0, err.decode()[-3000:]

    def kill_one_when(self, index: int, progress: Callable[[], bool], timeout_s: float = 120) -> int:
        """SIGKILL process `index` once `progress()` says so; return how many of the others then failed.

        A Bytewax cluster cannot go on without one of its processes: the others must stop by
        themselves within a minute (their connection to it breaks), which is checked here.
        """
        victim = self.processes[index]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and victim.poll() is None and not progress():
            time.sleep(0.05)
        assert victim.poll() is None, "the cluster finished before it could be killed; make the input bigger"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        failed = 0
        for p in self.processes:
            if p is victim:
                continue
            try:
                p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise AssertionError("a process went on without its peer for a minute") from None
            failed += p.returncode != 0
        return failed

    def kill(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def topic_by_key(s: Settings, topic: str) -> dict[bytes, list[bytes]]:
    """Every message of `topic` per key, in the order the key's partition holds them."""
    out: dict[bytes, list[tuple[int, bytes]]] = {}
    for m in read_topic(s, topic):
        out.setdefault(m.key(), []).append((m.offset(), m.value()))
    return {k: [v for _, v in sorted(msgs)] for k, msgs in out.items()}


# What the timers make (forming bars at most once a second, health every interval) depends on
# the wall clock; every other channel's history is the flow's output, record for record.
_TIMED = (".market.bars.live", ".market.prices", ".health.")  # throttled by the wall clock


def redis_history(url: str, namespace: str) -> dict[str, list[bytes]]:
    """The catch-up history of every channel of `namespace` that does not depend on timing, without offsets and epochs,
    per channel and timeframe (`channel@5m`): a symbol's detectors of different timeframes are state of different keys,
    which a cluster may place on different workers, so their records interleave on the symbol's channel in any order;
    each timeframe's records keep theirs."""
    client = redis.Redis.from_url(url)
    out: dict[str, list[bytes]] = {}
    for key in client.scan_iter(match=f"history:{namespace}[.:]*", count=1000):
        channel = key.decode().removeprefix("history:")
        if any(t in channel for t in _TIMED):
            continue
        for _id, fields in client.xrange(key):
            record = orjson.loads(fields[b"m"])
            record.pop("offset", None)
            record.pop("epoch", None)
            if channel.endswith(":errors"):
                record.pop("timestamp", None)  # when it was refused, by the wall clock
            out.setdefault(f"{channel}@{record.get('timeframe', '-')}", []).append(
                orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
            )
    client.close()
    return out


def first_occurrences(messages: list[bytes]) -> list[bytes]:
    """`messages` without repeats, each where it first appeared: what a restart's re-sent records add nothing to."""
    seen: set[bytes] = set()
    return [m for m in messages if not (m in seen or seen.add(m))]  # type: ignore[func-returns-value]


def as_multisets(channels: dict[str, list[bytes]]) -> dict[str, Counter[bytes]]:
    return {c: Counter(m) for c, m in channels.items()}
