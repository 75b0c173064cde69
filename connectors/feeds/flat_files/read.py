"""Reading a flat file: every row as text with its number, or a FlatFileError naming the file.

A flat file is outside input: it may be missing, truncated or corrupt gzip, have no header, lack
a required column, or hold rows polars refuses as a whole (more fields than the header, an
unbalanced quote). The first four make the file unreadable (`FlatFileError`); the last is read
line by line, the bad lines refused (with their row number) and the rest kept. A row with fewer
fields than the header reads as if the missing trailing fields were empty.
"""

from __future__ import annotations

import csv
import functools
import gzip
import zlib
from pathlib import Path
from typing import Final

import polars as pl

from connectors.feeds.flat_files.kinds import REQUIRED, SCHEMAS, FlatFileError, Kind

ROW: Final = "\x00row"  # the row number column (1 = the first after the header): no CSV header can clash
GZIP_MAGIC = b"\x1f\x8b"
_READ_ERRORS = (pl.exceptions.PolarsError, pl.exceptions.PanicException)  # a panic is a BaseException


def read_flat_file(path: Path, kind: Kind) -> pl.DataFrame:
    """The file with typed columns, as it is (for tools that compare it, e.g. the bar check).

    Strict: any value that does not parse is a FlatFileError; `flat_file` is the reader that
    sorts good rows from bad ones.
    """
    try:
        df = pl.read_csv(path, schema_overrides=SCHEMAS[kind])
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise FlatFileError(path, f"cannot read it: {_first_line(exc)}") from None
    missing = [c for c in REQUIRED[kind] if c not in df.columns]
    if missing:
        raise FlatFileError(path, f"required column(s) {', '.join(missing)} missing: is it a {kind} file?")
    return df


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _decompressed(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FlatFileError(path, f"cannot open it: {exc.strerror or exc}") from None
    if data[:2] != GZIP_MAGIC:
        return data  # not gzip: read as plain CSV (a header check follows)
    try:
        return gzip.decompress(data)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise FlatFileError(path, f"truncated or corrupt gzip ({exc})") from None


def read_rows(path: Path, kind: Kind) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every row as text (column `\\x00row` = its number, 1 = the first after the header), and the
    rows refused before any value is looked at (more fields than the header). FlatFileError if
    the file cannot be read at all."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as exc:
        raise FlatFileError(path, f"cannot open it: {exc.strerror or exc}") from None
    ragged = _no_rows()
    read = functools.partial(pl.read_csv, path, infer_schema=False, encoding="utf8-lossy", row_index_name=ROW,
                             row_index_offset=1)  # polars decompresses gzip itself, faster than here  # fmt: skip
    try:
        try:  # fast: numbers parsed as the file is read; any value that does not parse -> as text
            rows = read(schema_overrides=SCHEMAS[kind])
        except _READ_ERRORS as exc:
            if isinstance(exc, pl.exceptions.NoDataError):
                raise
            rows = read()
    except pl.exceptions.NoDataError:
        raise FlatFileError(path, "it is empty (no header)") from None
    except OSError as exc:
        what = "truncated or corrupt gzip" if magic == GZIP_MAGIC else "cannot read it"
        raise FlatFileError(path, f"{what} ({_first_line(exc)})") from None
    except _READ_ERRORS:
        data = _decompressed(path)
        if not data.strip():
            raise FlatFileError(path, "it is empty (no header)") from None
        rows, ragged = _read_line_by_line(path, data)
    columns = [c for c in rows.columns if c != ROW]
    missing = [c for c in REQUIRED[kind] if c not in columns]
    if missing:
        shown = ", ".join(c[:30] for c in columns[:20])
        raise FlatFileError(path, f"no column {', '.join(missing)} for {kind} (its header: {shown})")
    return rows, ragged


def _no_rows() -> pl.DataFrame:
    schema = {"row": pl.UInt32, "kind": pl.String, "reason": pl.String, "key": pl.String, "value": pl.String}
    return pl.DataFrame(schema=schema)


def _read_line_by_line(path: Path, data: bytes) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The slow way, for a file polars refuses as a whole (a row with more fields than the
    header, an unbalanced quote): each line on its own, bad ones refused, the rest kept."""
    lines = data.decode("utf-8", "replace").splitlines()
    try:
        header = next(csv.reader(lines[:1]), [])
    except csv.Error as exc:
        raise FlatFileError(path, f"unreadable header: {exc}") from None
    names = [h or f"column_{i}" for i, h in enumerate(header)]
    good: dict[str, list[str | None]] = {name: [] for name in names}
    numbers: list[int] = []
    bad_rows, bad_reasons, bad_values = [], [], []
    for number, line in enumerate(lines[1:], start=1):
        try:
            fields = next(csv.reader([line]), [])
        except csv.Error as exc:  # e.g. a field beyond the csv module's size limit
            bad_rows.append(number)
            bad_reasons.append(f"unreadable row: {exc}")
            bad_values.append(line)
            continue
        if len(fields) > len(names):
            bad_rows.append(number)
            bad_reasons.append(f"the row has {len(fields)} fields, the header {len(names)}")
            bad_values.append(line)
            continue
        numbers.append(number)
        fields += [""] * (len(names) - len(fields))
        for name, value in zip(names, fields, strict=True):
            good[name].append(value or None)
    rows = pl.DataFrame({ROW: pl.Series(numbers, dtype=pl.UInt32), **{n: pl.Series(v, dtype=pl.String) for n, v in good.items()}})
    ragged = pl.DataFrame({"row": pl.Series(bad_rows, dtype=pl.UInt32), "kind": ["malformed"] * len(bad_rows),
                           "reason": bad_reasons, "key": pl.Series([None] * len(bad_rows), dtype=pl.String),
                           "value": bad_values})  # fmt: skip
    return rows, ragged
