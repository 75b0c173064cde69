"""A DataFrame into a CSV or Parquet file, written whole or not at all.

Pure of the database: it takes any polars DataFrame (bars, events, indicators). The file appears
under its name only once complete (written beside it, then renamed), so a failed or interrupted
export never leaves a truncated file that looks like a result. CSV times are RFC 3339 in UTC
(`2024-03-08T14:30:00.000000Z`), which `pl.read_csv(..., try_parse_dates=True)` reads back; Parquet
keeps every column's type.

>>> output_format(Path("bars.parquet")), output_format(Path("x.csv"), "parquet")
('parquet', 'parquet')
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Final, Literal

import polars as pl

Format = Literal["csv", "parquet"]
FORMATS: Final[dict[str, Format]] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class ExportError(ValueError):
    """The output cannot be written as asked (format, directory, permissions); the message says which."""


def output_format(path: Path, chosen: str | None = None) -> Format:
    """The format asked for, or the one the file name's suffix says; anything else is an `ExportError`."""
    if chosen is not None:
        if chosen not in ("csv", "parquet"):
            raise ExportError(f"unknown format {chosen!r}; expected csv or parquet")
        return "csv" if chosen == "csv" else "parquet"
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise ExportError(f"cannot tell the format of {str(path)[:200]!r}: name it .csv or .parquet, or give --format")
    return found


def check_writable(path: Path) -> None:
    """Refuse, before any work, a path that cannot become the output file."""
    shown = str(path)[:200]
    if path.is_dir():
        raise ExportError(f"{shown!r} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"directory {str(parent)[:200]!r} does not exist (or is not a directory)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"directory {str(parent)[:200]!r} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise ExportError(f"{shown!r} exists and is not writable")


def write_frame(frame: pl.DataFrame, path: Path, fmt: Format) -> int:
    """Write `frame` to `path` in `fmt`; returns the bytes written. Raises `ExportError` on an OS error."""

    def write(out: BinaryIO) -> None:
        if fmt == "csv":
            frame.write_csv(out, datetime_format="%Y-%m-%dT%H:%M:%S%.6fZ")
        else:
            frame.write_parquet(out)

    return write_atomically(path, write)


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> int:
    """Have `write` fill a file beside `path`, then rename it to `path`; returns the bytes written.
    Raises `ExportError` on an OS error, leaving neither a partial `path` nor the staged file."""
    check_writable(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, staged = tempfile.mkstemp(prefix=f".{path.name[:50]}.", suffix=".part", dir=parent)
    except OSError as exc:
        raise ExportError(f"cannot write in {str(parent)[:200]!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        os.replace(staged, path)
    except OSError as exc:
        Path(staged).unlink(missing_ok=True)
        raise ExportError(f"cannot write {str(path)[:200]!r}: {exc.strerror}") from None
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return path.stat().st_size
