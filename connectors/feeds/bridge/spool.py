"""The bridge's spool: what Kafka had not taken when the bridge stopped, produced first next start.

A stop (SIGTERM, a fatal feed status, a permanent Kafka error) waits at most
BRIDGE_STOP_TIMEOUT_S for Kafka to acknowledge what the bridge read; the records still in
flight then are written here instead of being dropped. A file is written whole under a
temporary name, fsynced and renamed, so it exists complete or not at all. The next start
produces the files (oldest first) before it reads the feed, and deletes them only once Kafka
acknowledged every record they hold (or, if it is stopped again first, once what is still in
flight is in a new file). So nothing read is lost; a record that was in flight to the broker
when the bridge stopped may be written twice (the flows count a repeated trade once).

One bridge per directory: `lock()` takes an exclusive lock, so two bridges never produce the
same spool twice.

Format: the line `tickstock-bridge-spool 1`, then per record a 4-byte big-endian length and a
msgpack array [topic, key, value, headers]. A file that does not read to the end (damaged on
disk) keeps the records before the damage and is renamed `*.unreadable` for a person to look at.

>>> import tempfile
>>> spool = Spool(Path(tempfile.mkdtemp()))
>>> path = spool.write([("stocks.trades", b"AAPL", b'{"ev":"T"}', None), ("dlq", None, b"x", [("dlq.kind", b"malformed")])])
>>> [list(spool.read(p)) for p in spool.pending()]
[[('stocks.trades', b'AAPL', b'{"ev":"T"}', None), ('dlq', None, b'x', [('dlq.kind', b'malformed')])]]
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import msgspec

log = logging.getLogger("tickstock.bridge")

MAGIC = b"tickstock-bridge-spool 1\n"
SUFFIX = ".spool"
_LENGTH = struct.Struct(">I")
MAX_RECORD_BYTES = 64 * 1024 * 1024  # far above any record the producer takes; beyond it the file is damaged

Record = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]  # topic, key, value, headers
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]).decode


class SpoolError(Exception):
    """The spool directory cannot be used (not writable, locked by another bridge)."""


class Spool:
    """A directory of spool files, used by one bridge at a time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock: IO[bytes] | None = None

    def lock(self) -> None:
        """Create the directory if needed and take it for this process; SpoolError if impossible."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle = open(self.directory / ".lock", "ab")  # noqa: SIM115 - held for the process's life
        except OSError as exc:
            raise SpoolError(f"cannot use BRIDGE_SPOOL_DIR={str(self.directory)!r}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise SpoolError(
                f"BRIDGE_SPOOL_DIR={str(self.directory)!r} is in use by another bridge; give each bridge its own"
            ) from None
        self._lock = handle

    def pending(self) -> list[Path]:
        """Spool files left by earlier runs, oldest first."""
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def write(self, records: Iterable[Record]) -> Path | None:
        """Write the records to a new file (atomically); None when there were none."""
        name = f"{time.time_ns():020d}-{os.getpid()}"
        tmp = self.directory / f"{name}.tmp"
        count = 0
        with open(tmp, "wb") as out:
            out.write(MAGIC)
            for record in records:
                blob = _encode(record)
                out.write(_LENGTH.pack(len(blob)))
                out.write(blob)
                count += 1
            out.flush()
            os.fsync(out.fileno())
        if not count:
            tmp.unlink()
            return None
        path = tmp.with_suffix(SUFFIX)
        tmp.rename(path)
        _fsync_directory(self.directory)
        return path

    def read(self, path: Path) -> Iterator[Record]:
        """The records of one file, in the order written. A damaged file yields what precedes the
        damage, is renamed `*.unreadable` and logged; it never raises for its content."""
        try:
            with open(path, "rb") as src:
                if src.read(len(MAGIC)) != MAGIC:
                    raise _Damaged("it does not start like a spool file")
                n = 0
                while header := src.read(_LENGTH.size):
                    if len(header) < _LENGTH.size:
                        raise _Damaged(f"it ends inside record {n + 1}")
                    (size,) = _LENGTH.unpack(header)
                    if size > MAX_RECORD_BYTES:
                        raise _Damaged(f"record {n + 1} claims {size} bytes")
                    blob = src.read(size)
                    if len(blob) < size:
                        raise _Damaged(f"it ends inside record {n + 1}")
                    try:
                        record = _decode(blob)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        raise _Damaged(f"record {n + 1} does not decode ({exc})") from None
                    n += 1
                    yield record
        except _Damaged as exc:
            aside = path.with_suffix(".unreadable")
            path.rename(aside)
            log.error("spool file %s is damaged (%s); kept the records before it, moved the file to %s",
                      path, exc, aside)  # fmt: skip

    def remove(self, paths: Iterable[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        _fsync_directory(self.directory)


class _Damaged(Exception):
    pass


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
