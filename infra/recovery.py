"""The recovery partition of one flow process that has a volume of its own (a StatefulSet pod, a compose service).

`python -m bytewax.recovery DIR N` writes partitions `part-0` .. `part-{N-1}` into one directory:
right for processes that share one disk. Bytewax finds a cluster's partitions across all its
processes' directories, so a process with a volume of its own must hold its own partition and no
other; a copy of the same partition on two volumes would leave two diverging snapshots of one
partition behind after a restart. This keeps `part-{I}` of N for process I:

    python -m infra.recovery DIR --processes N [--process-id I]

I defaults to Bytewax's own rule: `BYTEWAX_PROCESS_ID`, else the pod ordinal (`BYTEWAX_POD_NAME`
minus `BYTEWAX_STATEFULSET_NAME-`), else 0. Idempotent: a directory that already holds exactly this
partition is left alone (a restarted process resumes from it). Exit codes: 0 done or nothing to do;
1 the directory holds other partitions (another process's, or a different process count: see
docs/operations.md, "A recovery directory is lost or does not match"); 2 a bad argument.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bytewax.recovery import init_db_dir

_PARTITION = re.compile(r"^part-(\d+)\.sqlite3$")


class RecoveryLayoutError(RuntimeError):
    """The directory holds partitions other than the one this process should have; the message says which."""


def process_id(env: Mapping[str, str]) -> int:
    """This process's Bytewax id, as `bytewax.run` works it out (0 for a single process)."""
    if env.get("BYTEWAX_PROCESS_ID"):
        return int(env["BYTEWAX_PROCESS_ID"])
    pod, statefulset = env.get("BYTEWAX_POD_NAME"), env.get("BYTEWAX_STATEFULSET_NAME")
    if pod and statefulset:
        ordinal = pod.removeprefix(f"{statefulset}-")
        if not ordinal.isdigit():
            raise ValueError(f"BYTEWAX_POD_NAME={pod!r} is not BYTEWAX_STATEFULSET_NAME={statefulset!r} + '-' + an ordinal")
        return int(ordinal)
    return 0


def partitions(directory: Path) -> list[int]:
    """The partition numbers in `directory`, in order."""
    return sorted(int(m[1]) for p in directory.iterdir() if (m := _PARTITION.match(p.name)))


def ensure_partition(directory: Path, processes: int, index: int) -> bool:
    """Put partition `index` of `processes` into `directory` unless it is there. True when it was created."""
    if not 0 <= index < processes:
        raise ValueError(f"process id {index} is outside 0..{processes - 1} (--processes {processes})")
    directory.mkdir(parents=True, exist_ok=True)
    held = partitions(directory)
    if held == [index]:
        return False
    if held:
        raise RecoveryLayoutError(
            f"{directory} holds recovery partition(s) {held}, not [{index}] of {processes}: it belongs to another "
            "process, or the process count changed. Move it aside to start this process without state "
            "(docs/operations.md), or give it back to the process it belongs to."
        )
    # Created beside the target (same file system), so the move is a rename: never a half-copied partition.
    scratch = Path(tempfile.mkdtemp(prefix=".init-", dir=directory))
    try:
        init_db_dir(scratch, processes)
        os.replace(scratch / f"part-{index}.sqlite3", directory / f"part-{index}.sqlite3")
    finally:
        shutil.rmtree(scratch)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.recovery", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="this process's recovery directory (its own volume)")
    parser.add_argument("--processes", type=int, required=True, help="processes in the flow's cluster (replicas)")
    parser.add_argument("--process-id", type=int, help="default: BYTEWAX_PROCESS_ID, else the pod ordinal, else 0")
    args = parser.parse_args(argv)
    try:
        if args.processes < 1:
            raise ValueError("--processes must be at least 1")
        index = args.process_id if args.process_id is not None else process_id(os.environ)
        created = ensure_partition(args.directory, args.processes, index)
    except ValueError as exc:
        print(f"error: recovery: {exc}", file=sys.stderr)
        return 2
    except (RecoveryLayoutError, OSError) as exc:
        print(f"error: recovery: {exc}", file=sys.stderr)
        return 1
    what = "created" if created else "already there; resuming from it"
    print(f"recovery: {args.directory}/part-{index}.sqlite3 (process {index} of {args.processes}): {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
