"""How the flows' partitioned sinks spread their writes over the workers of a cluster.

Bytewax builds each partition of a `FixedPartitionedSink` on one worker (balancing the
partitions over the workers that list them) and routes every item there by its key. A sink
with one partition therefore writes on one worker of the whole cluster; one with a partition
per input partition writes on as many workers as read input.

Items are keyed by symbol (bars, events) or by source partition (dead letters), so all records
of a symbol go through one sink partition, in the order their (single) producing worker
emitted them: a bar's revisions reach PostgreSQL, Redis and the bars topic in order.

The partitions a worker holds share one writer (`PerWorker`): connections and threads grow with
the workers, not with the partitions.

The names must only ever grow. A sink partition's (empty) snapshot is in the recovery store
under its name, and Bytewax 0.21 refuses to resume (a panic: "Key ... is not in this worker's
routing map") when a stored partition is no longer listed. Hence the first name is the one the
single-partition sinks always had, and more partitions add `NAME#1`, `NAME#2`, ...: a flow
whose input gained partitions lists a superset, and a store written before this change resumes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from bytewax.outputs import StatefulSinkPartition

X = TypeVar("X")
MAX_PARTS = 1024  # more sink partitions than this would only cost connections
MAX_LANES = 16  # writers per worker: each holds a database session and a Redis client


def part_names(name: str, count: int) -> list[str]:
    """`count` sink partition names for the sink `name`; a prefix of the list for any larger count."""
    if not 1 <= count <= MAX_PARTS:
        raise ValueError(f"{name}: sink partitions must be 1-{MAX_PARTS}, not {count}")
    return [name] + [f"{name}#{i}" for i in range(1, count)]


class Writer(Protocol[X]):
    """What a sink partition writes through: `write_batch`, `snapshot` (wait until written), `close`."""

    def write_batch(self, items: list[X]) -> None: ...

    def snapshot(self) -> None: ...

    def close(self) -> None: ...


class PerWorker(Generic[X]):
    """`lanes` writers per worker for all the sink partitions that worker holds.

    Many sink partitions (one per input partition, 64 on a large topic) must not mean as many
    database sessions, Redis clients, producers and threads: the partitions a worker holds share
    the writers that worker opened first (workers are threads of the process; Bytewax builds,
    writes, snapshots and closes a partition on its worker's thread), the k-th partition built
    the writer of lane k mod `lanes`. A symbol's records still go through one queue, in order (a
    partition keeps its lane), and a partition's snapshot waits for its writer, which holds
    every record that partition was given.

    Why more than one lane: at a minute boundary every symbol's final bar is written at once,
    and one writer's transaction runs on one core of the database; two lanes write disjoint
    symbols side by side, as two workers' writers would.
    """

    def __init__(self, open_writer: Callable[[], Writer[X]], lanes: int = 1) -> None:
        if not 1 <= lanes <= MAX_LANES:
            raise ValueError(f"writers per worker must be 1-{MAX_LANES}, not {lanes}")
        self._open_writer = open_writer
        self._lanes = lanes
        self._lock = threading.Lock()
        self._built: dict[int, int] = {}  # worker thread -> partitions it built
        self._held: dict[tuple[int, int], tuple[Writer[X], int]] = {}  # (worker, lane) -> (writer, partitions holding it)

    def partition(self) -> SharedPartition[X]:
        worker = threading.get_ident()
        with self._lock:
            built = self._built.get(worker, 0)
            self._built[worker] = built + 1
            lane = (worker, built % self._lanes)
            writer, holders = self._held.get(lane, (None, 0))
            if writer is None:
                writer = self._open_writer()  # connects here: a missing server fails the start
            self._held[lane] = (writer, holders + 1)
        return SharedPartition(writer, lambda: self._release(lane))

    def _release(self, lane: tuple[int, int]) -> None:
        with self._lock:
            writer, holders = self._held[lane]
            if holders > 1:
                self._held[lane] = (writer, holders - 1)
                return
            del self._held[lane]
        writer.close()


class SharedPartition(StatefulSinkPartition[X, None], Generic[X]):
    """A sink partition writing through its worker's shared writer (see `PerWorker`)."""

    def __init__(self, writer: Writer[X], release: Callable[[], None]) -> None:
        self._writer = writer
        self._release = release

    def write_batch(self, items: list[X]) -> None:
        self._writer.write_batch(items)

    def snapshot(self) -> None:
        self._writer.snapshot()

    def close(self) -> None:
        self._release()
