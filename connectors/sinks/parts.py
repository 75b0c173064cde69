"""How the flows' partitioned sinks spread their writes over the workers of a cluster.

Bytewax builds each partition of a `FixedPartitionedSink` on one worker (balancing the
partitions over the workers that list them) and routes every item there by its key. A sink
with one partition therefore writes on one worker of the whole cluster; one with a partition
per input partition writes on as many workers as read input.

Items are keyed by symbol (bars, events) or by source partition (dead letters), so all records
of a symbol go through one sink partition, in the order their (single) producing worker
emitted them: a bar's revisions reach PostgreSQL, Redis and the bars topic in order.

The names must only ever grow. A sink partition's (empty) snapshot is in the recovery store
under its name, and Bytewax 0.21 refuses to resume (a panic: "Key ... is not in this worker's
routing map") when a stored partition is no longer listed. Hence the first name is the one the
single-partition sinks always had, and more partitions add `NAME#1`, `NAME#2`, ...: a flow
whose input gained partitions lists a superset, and a store written before this change resumes.
"""

from __future__ import annotations

MAX_PARTS = 1024  # more sink partitions than this would only cost connections


def part_names(name: str, count: int) -> list[str]:
    """`count` sink partition names for the sink `name`; a prefix of the list for any larger count."""
    if not 1 <= count <= MAX_PARTS:
        raise ValueError(f"{name}: sink partitions must be 1-{MAX_PARTS}, not {count}")
    return [name] + [f"{name}#{i}" for i in range(1, count)]
