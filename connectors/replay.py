"""Replay Polygon flat files (trades_v1, quotes_v1, minute_aggs_v1; gzipped CSV) into Kafka.

``python -m connectors.replay FILE... [--speed 10]``. Rows become the same event JSON the live
feed sends (`T`, `Q`, `AM`; ns timestamps -> ms), so the flow cannot tell a replay from a live
day: that is what makes history and live bars comparable. Files are parsed, checked and
encoded with polars (vectorised, no Python per row); the files' events are merged and
published in event-time order (so per symbol too), as fast as possible or `--speed` times real
time.

A flat file is outside input, so every value is checked before it becomes an event: a row that
cannot become a valid feed event (a field missing or not a number, NaN/inf, a price or size out
of range, an integer beyond int64, a time at or before 1970, after the wall clock or outside
the file's day, a ticker that is not a symbol, conditions that are not integers, more fields
than the header, an event too large for Kafka) goes to the dead-letter topic with the reason;
its headers name the file (`dlq.topic`) and the row (`dlq.offset`, 1 = the first row after the
header), and its value is the row's fields as JSON. The other rows are published, once. A
file that cannot be read at all (missing, truncated or corrupt gzip, no header, a required
column missing) is an error naming the file, exit code 2, before anything is published.

Mapping notes: a fractional `size` goes out as `s` = whole shares plus `ds` = the decimal text,
as the feed does; `conditions` "14,41" -> `c` [14,41] (omitted when empty); the flat file's
`correction` has no live-feed field and is not forwarded. A row with fewer fields than the
header reads as if the missing trailing fields were empty.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import math
import re
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import polars as pl
from msgspec import Meta

from flows.settings import Settings
from schemas.polygon import MAX_CODES, MAX_TRADE_ID, Code, Count, EpochMs, Price, Size, bounds
from schemas.symbols import RULE, SYMBOL_PATTERN

Kind = Literal["trades", "quotes", "minute_aggs"]

TRADES_SCHEMA = {
    "ticker": pl.String, "conditions": pl.String, "correction": pl.Int64, "exchange": pl.Int64, "id": pl.String,
    "participant_timestamp": pl.Int64, "price": pl.Float64, "sequence_number": pl.Int64, "sip_timestamp": pl.Int64,
    "size": pl.Float64, "tape": pl.Int64, "trf_id": pl.Int64, "trf_timestamp": pl.Int64,
}  # fmt: skip
QUOTES_SCHEMA = {
    "ticker": pl.String, "ask_exchange": pl.Int64, "ask_price": pl.Float64, "ask_size": pl.Float64,
    "bid_exchange": pl.Int64, "bid_price": pl.Float64, "bid_size": pl.Float64, "conditions": pl.String,
    "indicators": pl.String, "participant_timestamp": pl.Int64, "sequence_number": pl.Int64,
    "sip_timestamp": pl.Int64, "tape": pl.Int64, "trf_timestamp": pl.Int64,
}  # fmt: skip
MINUTE_SCHEMA = {
    "ticker": pl.String, "volume": pl.Float64, "open": pl.Float64, "close": pl.Float64, "high": pl.Float64,
    "low": pl.Float64, "window_start": pl.Int64, "transactions": pl.Int64,
}  # fmt: skip
SCHEMAS = {"trades": TRADES_SCHEMA, "quotes": QUOTES_SCHEMA, "minute_aggs": MINUTE_SCHEMA}

# What each kind needs to become a feed event; the other columns of its schema are optional
# (absent or empty: the field is omitted), and columns not in its schema are ignored.
REQUIRED: dict[Kind, tuple[str, ...]] = {
    "trades": ("ticker", "exchange", "id", "price", "size", "sip_timestamp"),
    "quotes": ("ticker", "bid_price", "ask_price", "sip_timestamp"),
    "minute_aggs": ("ticker", "volume", "open", "close", "high", "low", "window_start"),
}
NOT_FORWARDED = {"correction", "participant_timestamp", "transactions"}  # not checked either

_PRICE_LOW, _PRICE_HIGH = Price.__metadata__[0].gt, Price.__metadata__[0].lt  # the feed schema's bounds
_MAX_WHOLE = 2.0**63  # a size's whole part must fit int64
_INT64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]  # ns times: their range is checked in ms below
_MAX_SIZE = float(bounds(Size)[2]) + 1  # sizes (and minute volumes) as the feed schema bounds them
_MS_PER_DAY = 86_400_000
FUTURE_MARGIN_MS = _MS_PER_DAY  # a flat file holds history: nothing after the wall clock plus this
_CODES = r"^ *(0|[1-9]\d{0,8})( *, *(0|[1-9]\d{0,8}))* *$"  # condition / indicator codes, as JSON spells them
_SYMBOL = f"^(?:{SYMBOL_PATTERN})$"
_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_SHOWN = 40  # characters of a bad value quoted in its reason
GZIP_MAGIC = b"\x1f\x8b"
_ROW, _CHECK = "\x00row", "\x00check"  # internal columns: no CSV header can clash
_READ_ERRORS = (pl.exceptions.PolarsError, pl.exceptions.PanicException)  # a panic is a BaseException


class FlatFileError(Exception):
    """A flat file that cannot be read at all; the message names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


class FlatFile(NamedTuple):
    """A file's events (key, t, seq, value; event-time order) and its refused rows
    (row, kind, reason, key, value)."""

    events: pl.DataFrame
    refused: pl.DataFrame


def kind_of(path: Path) -> Kind:
    """trades_v1/…, quotes_v1/…, minute_aggs_v1/… (Polygon's flat-file layout) or a name containing it."""
    for name in (path.name, *(p.name for p in path.parents)):
        for kind in ("minute_aggs", "quotes", "trades"):
            if kind in name:
                return kind  # type: ignore[return-value]
    raise ValueError(f"cannot tell the flat-file kind of {path}; pass --kind")


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
    read = functools.partial(pl.read_csv, path, infer_schema=False, encoding="utf8-lossy", row_index_name=_ROW,
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
    columns = [c for c in rows.columns if c != _ROW]
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
    rows = pl.DataFrame({_ROW: pl.Series(numbers, dtype=pl.UInt32), **{n: pl.Series(v, dtype=pl.String) for n, v in good.items()}})
    ragged = pl.DataFrame({"row": pl.Series(bad_rows, dtype=pl.UInt32), "kind": ["malformed"] * len(bad_rows),
                           "reason": bad_reasons, "key": pl.Series([None] * len(bad_rows), dtype=pl.String),
                           "value": bad_values})  # fmt: skip
    return rows, ragged


# --- checks --------------------------------------------------------------------------------


def _shown(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.String).str.slice(0, _SHOWN)


def _why(template: str, col: str) -> pl.Expr:
    """`template` with `{}` replaced by the column's raw value (cut to _SHOWN characters)."""
    before, after = template.split("{}")
    return pl.concat_str(pl.lit(before), _shown(col), pl.lit(after))


class _Checks:
    """The typed columns of a kind and the checks on them, in the order reasons are given."""

    def __init__(self, schema: dict[str, pl.DataType]) -> None:
        self.columns = schema  # read as text, or already as the number they should be
        self.typed: dict[str, pl.Expr] = {}
        self.checks: list[tuple[pl.Expr, pl.Expr, str]] = []  # condition, reason, dead-letter kind

    def _present(self, col: str, dtype: pl.DataType) -> bool:
        if col not in self.columns:
            self.typed[col] = pl.lit(None, dtype=dtype)  # an optional column the file does not have
            return False
        return True

    def required(self, *cols: str) -> None:
        for col in cols:
            self.checks.append((pl.col(col).is_null(), pl.lit(f"{col} is missing"), "malformed"))

    def symbol(self, col: str) -> None:
        self.typed[col] = pl.col(col)
        self.checks.append((~pl.col(col).str.contains(_SYMBOL), _why(f"{col} '{{}}' is not a symbol ({RULE})", col), "malformed"))

    def text(self, col: str, max_chars: int) -> None:
        self.typed[col] = pl.col(col)
        self.checks.append((pl.col(col).str.contains("\ufffd", literal=True),
                            pl.lit(f"{col} is not valid UTF-8"), "malformed"))  # fmt: skip
        self.checks.append((pl.col(col).str.len_chars() > max_chars,
                            pl.lit(f"{col} is longer than {max_chars} characters"), "malformed"))  # fmt: skip

    def integer(self, col: str, kind: object = Count) -> pl.Expr:
        """An integer column within the feed schema's range for `kind` (an Annotated type of schemas.polygon)."""
        if not self._present(col, pl.Int64()):
            return self.typed[col]
        if self.columns[col] == pl.Int64:
            self.typed[col] = value = pl.col(col)
        else:
            value = pl.col(col).cast(pl.Int64, strict=False)
            self.typed[col] = value
            self.checks.append((pl.col(col).is_not_null() & value.is_null(),
                                _why(f"{col} '{{}}' is not an integer within int64", col), "malformed"))  # fmt: skip
        low, low_in, high, high_in = bounds(kind)
        outside = (value < low if low_in else value <= low) | (value > high if high_in else value >= high)
        self.checks.append((outside, _why(f"{col} '{{}}' is outside {low}..{high}", col), "malformed"))
        return value

    def number(self, col: str, low: float, high: float, what: str, low_open: bool = False) -> pl.Expr:
        if not self._present(col, pl.Float64()):
            return self.typed[col]
        if self.columns[col] == pl.Float64:
            value = pl.col(col)
        else:
            value = pl.col(col).cast(pl.Float64, strict=False)
            self.checks.append((pl.col(col).is_not_null() & value.is_null(),
                                _why(f"{col} '{{}}' is not a number", col), "malformed"))  # fmt: skip
        self.typed[col] = value
        too_low = value <= low if low_open else value < low
        self.checks += [
            (value.is_nan() | value.is_infinite(), _why(f"{col} '{{}}' is not a finite number", col), "malformed"),
            (too_low | (value >= high), _why(f"{col} '{{}}' is not {what}", col), "malformed"),
        ]
        return value

    def codes(self, col: str) -> None:
        if not self._present(col, pl.String()):
            return
        self.typed[col] = pl.col(col)
        self.checks.append((pl.col(col).is_not_null() & ~pl.col(col).str.contains(_CODES),
                            _why(f"{col} '{{}}' are not integer codes (digits, no leading zero, commas between)", col),
                            "malformed"))  # fmt: skip
        self.checks.append((pl.col(col).str.count_matches(",", literal=True) >= MAX_CODES,
                            pl.lit(f"{col}: more than {MAX_CODES} codes"), "malformed"))  # fmt: skip

    def time_ns(self, col: str, now_ms: int, day: tuple[int, int] | None) -> None:
        if not self._present(col, pl.Int64()):
            return
        value = self.integer(col, _INT64)
        ms = value // 1_000_000
        first, _, last, _ = bounds(EpochMs)
        self.checks.append(((ms < first) | (ms >= last),
                            _why(f"{col} '{{}}' is not a time in 2000-2099 (ns)", col), "malformed"))  # fmt: skip
        self.checks.append((ms > now_ms + FUTURE_MARGIN_MS,
                            _why(f"{col} '{{}}' is after the wall clock: a flat file holds history", col), "future"))  # fmt: skip
        if day is not None:
            start, end = day
            self.checks.append(((ms < start) | (ms >= end), _why(f"{col} '{{}}' is outside the file's day", col),
                                "malformed"))  # fmt: skip


def _file_day(path: Path) -> tuple[int, int] | None:
    """A Polygon flat file is one day (named YYYY-MM-DD): its rows fall from the day before to
    the day after (ms), whatever the time zone; None when the name has no date."""
    found = _DAY.search(path.name)
    if not found:
        return None
    try:
        day = datetime(int(found[1]), int(found[2]), int(found[3]), tzinfo=UTC)
    except ValueError:
        return None
    start = int(day.timestamp() * 1000)
    return start - _MS_PER_DAY, start + 2 * _MS_PER_DAY


def _checks(kind: Kind, schema: dict[str, pl.DataType], now_ms: int, day: tuple[int, int] | None) -> _Checks:
    c = _Checks(schema)
    c.required(*REQUIRED[kind])
    c.symbol("ticker")
    if kind == "trades":
        c.integer("exchange", Code)
        c.text("id", MAX_TRADE_ID)
        c.number("price", _PRICE_LOW, _PRICE_HIGH, f"a price ({_PRICE_LOW:g} < p < {_PRICE_HIGH:g})", low_open=True)
        c.number("size", 0, _MAX_SIZE, f"a size (0 <= s < {_MAX_SIZE:g})")
        c.codes("conditions")
        c.time_ns("sip_timestamp", now_ms, day)
        c.integer("tape", Code)
        c.integer("sequence_number", Count)
        c.integer("trf_id", Code)
        c.time_ns("trf_timestamp", now_ms, None)
    elif kind == "quotes":
        for col in ("bid_price", "ask_price"):
            c.number(col, 0, _PRICE_HIGH, f"a quote price (0 <= p < {_PRICE_HIGH:g})")
        for col in ("bid_size", "ask_size"):
            c.number(col, 0, _MAX_WHOLE, "a size (0 <= s < 2^63)")
        for col in ("bid_exchange", "ask_exchange", "tape"):
            c.integer(col, Code)
        c.integer("sequence_number", Count)
        c.codes("conditions")
        c.codes("indicators")
        c.time_ns("sip_timestamp", now_ms, day)
    else:
        c.number("volume", 0, _MAX_SIZE, f"a volume (0 <= v < {_MAX_SIZE:g})")
        for col in ("open", "close", "high", "low"):
            c.number(col, _PRICE_LOW, _PRICE_HIGH, f"a price ({_PRICE_LOW:g} < p < {_PRICE_HIGH:g})", low_open=True)
        c.time_ns("window_start", now_ms, day)
    return c


# --- encoding ------------------------------------------------------------------------------


def _json_list(col: str) -> pl.Expr:
    """'14, 41' -> '[14,41]'; null/empty -> null (the field is then omitted). Checked before: codes only."""
    text = pl.col(col).str.replace_all(" ", "", literal=True)
    return pl.when(text.str.len_chars() > 0).then(pl.concat_str(pl.lit("["), text, pl.lit("]")))


def _json_string(col: str) -> pl.Expr:
    """A text column as a JSON string literal, escaped (quotes, backslashes, control characters)."""
    return pl.struct(pl.col(col).alias("v")).struct.json_encode().str.strip_prefix('{"v":').str.strip_suffix("}")


def _field(name: str, value: pl.Expr, quoted: bool = False) -> pl.Expr:
    """`,"name":value`, or "" when value is null (omitted, like the feed's optional fields)."""
    v = pl.concat_str(pl.lit('"'), value, pl.lit('"')) if quoted else value.cast(pl.String)
    return pl.concat_str(pl.lit(f',"{name}":'), v).fill_null("")


def _ms(col: str) -> pl.Expr:
    return pl.col(col) // 1_000_000


def _whole(col: str) -> pl.Expr:
    return pl.col(col).floor().cast(pl.Int64, strict=False)


def _events(df: pl.DataFrame, kind: Kind) -> pl.DataFrame:
    """Columns `key`, `t` (event time, ms), `seq`, `value` (the event JSON in the feed's field order)."""
    if kind == "trades":
        fractional = pl.col("size") != pl.col("size").floor()
        parts = [
            pl.lit('{"ev":"T"'), _field("sym", pl.col("ticker"), True), _field("x", pl.col("exchange")),
            _field("i", _json_string("id")), _field("z", pl.col("tape")), _field("p", pl.col("price")),
            _field("s", _whole("size")), _field("c", _json_list("conditions")), _field("t", _ms("sip_timestamp")),
            _field("q", pl.col("sequence_number")), _field("trfi", pl.col("trf_id")),
            _field("trft", _ms("trf_timestamp")),
            _field("ds", pl.when(fractional).then(pl.col("size").cast(pl.String)), True), pl.lit("}"),
        ]  # fmt: skip
        t, seq = _ms("sip_timestamp"), pl.col("sequence_number")
    elif kind == "quotes":
        first_code = pl.col("conditions").str.split(",").list.first().str.strip_chars().cast(pl.Int64, strict=False)
        parts = [
            pl.lit('{"ev":"Q"'), _field("sym", pl.col("ticker"), True), _field("bx", pl.col("bid_exchange")),
            _field("bp", pl.col("bid_price")), _field("bs", _whole("bid_size")), _field("ax", pl.col("ask_exchange")),
            _field("ap", pl.col("ask_price")), _field("as", _whole("ask_size")), _field("c", first_code),
            _field("i", _json_list("indicators")), _field("t", _ms("sip_timestamp")),
            _field("q", pl.col("sequence_number")), _field("z", pl.col("tape")), pl.lit("}"),
        ]  # fmt: skip
        t, seq = _ms("sip_timestamp"), pl.col("sequence_number")
    else:
        start = _ms("window_start")
        parts = [
            pl.lit('{"ev":"AM"'), _field("sym", pl.col("ticker"), True), _field("v", _whole("volume")),
            _field("o", pl.col("open")), _field("c", pl.col("close")), _field("h", pl.col("high")),
            _field("l", pl.col("low")), _field("s", start), _field("e", start + 60_000), pl.lit("}"),
        ]  # fmt: skip
        t, seq = start + 60_000, pl.lit(0, dtype=pl.Int64)  # a minute bar exists once its minute ends
    return df.select(
        key=pl.col("ticker"), t=t, seq=seq, value=pl.concat_str(parts), row=pl.col(_ROW)
    ).sort("t", "seq", maintain_order=True)


def flat_file(path: Path, kind: Kind | None = None, now_ms: int | None = None) -> FlatFile:
    """A flat file as feed events sorted by event time, and the rows that cannot be events."""
    kind = kind or kind_of(path)
    rows, ragged = read_rows(path, kind)
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    raw_columns = [c for c in rows.columns if c != _ROW]
    checks = _checks(kind, {c: t for c, t in rows.schema.items() if c != _ROW}, now_ms, _file_day(path))
    # which check a row fails first (null: none), cheap for every row; reasons only for bad rows
    first = pl.coalesce([pl.when(cond).then(pl.lit(i, dtype=pl.UInt16)) for i, (cond, _, _) in enumerate(checks.checks)])
    typed = {f"{col}\x00typed": expr for col, expr in checks.typed.items()}
    judged = rows.lazy().with_columns(**typed, **{_CHECK: first}).collect()
    good = judged.filter(pl.col(_CHECK).is_null()).select(
        _ROW, *(pl.col(f"{col}\x00typed").alias(col) for col in checks.typed)
    )
    which = pl.col(_CHECK)
    refused = judged.filter(which.is_not_null()).select(
        row=_ROW,
        kind=pl.coalesce([pl.when(which == i).then(pl.lit(k)) for i, (_, _, k) in enumerate(checks.checks)]),
        reason=pl.coalesce([pl.when(which == i).then(why) for i, (_, why, _) in enumerate(checks.checks)]),
        key=pl.when(pl.col("ticker").str.contains(_SYMBOL)).then(pl.col("ticker")),
        value=pl.struct(raw_columns).struct.json_encode(),
    )  # fmt: skip
    return FlatFile(_events(good, kind), pl.concat([ragged, refused.cast(ragged.schema)]).sort("row"))


def flat_file_events(path: Path, kind: Kind | None = None) -> pl.DataFrame:
    """A flat file as feed events sorted by event time: columns key, t, seq, value (bad rows left out)."""
    return flat_file(path, kind).events


def _merge(files: list[tuple[Kind, FlatFile]]) -> pl.DataFrame:
    parts = [f.events.with_columns(kind=pl.lit(k), file=pl.lit(i, dtype=pl.UInt32)) for i, (k, f) in enumerate(files)]
    if not parts:
        raise ValueError("no flat files given")
    return pl.concat(parts).sort("t", maintain_order=True) if len(parts) > 1 else parts[0]


def merged_events(paths: list[Path], kind: Kind | None = None) -> pl.DataFrame:
    """Every file's events in one event-time order, with the `kind` each came from.

    The files are interleaved by event time, not published one after another, so a day's
    trades and quotes reach Kafka as they happened. Ties keep the order of the files given,
    then each file's own (event time, sequence) order, so every symbol stays in order.
    """
    return _merge([(k, flat_file(path, k)) for path in paths for k in [kind or kind_of(path)]])


def _paced(events: pl.DataFrame, speed: float | None) -> Iterator[tuple[str, str, str, int, int]]:
    started, first = time.monotonic(), None
    for kind, key, value, t, row, file in events.select("kind", "key", "value", "t", "row", "file").iter_rows():
        if speed:
            first = t if first is None else first
            ahead = started + (t - first) / 1000 / speed - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
        yield kind, key, value, row, file


def replay(
    paths: list[Path], speed: float | None = None, kind: Kind | None = None, settings: Settings | None = None,
    report: dict[str, object] | None = None,
) -> int:
    """Publish the files' events merged in event-time order (idempotent producer, key = symbol),
    and their refused rows to the dead-letter topic; returns how many events. Every file is read
    and checked before anything is published (FlatFileError otherwise). `report`, when given,
    receives the dead letters by kind."""
    from confluent_kafka import KafkaError, KafkaException

    from connectors.kafka.dead_letter import letter
    from connectors.kafka.producer import make_producer, produce_when_room

    s = settings or Settings()
    topics = {"trades": s.topic_trades, "quotes": s.topic_quotes, "minute_aggs": s.topic_minute_aggs}
    files = [(path, k, flat_file(path, k)) for path in paths for k in [kind or kind_of(path)]]
    producer, delivery = make_producer(s.kafka_bootstrap_servers, idempotent=True)
    dead: Counter[str] = Counter()

    def dead_letter(value: bytes, why: str, source: str, row: int | None, key: str | None, dead_kind: str) -> None:
        m = letter(value, kind=dead_kind, reason=why, topic=source, partition=None, offset=row,
                   key=key.encode() if key else None)  # fmt: skip
        while True:
            try:
                producer.produce(s.topic_dead_letter, m.value, m.key, headers=m.headers)
                break
            except BufferError:
                producer.poll(0.05)
        dead[dead_kind] += 1

    for path, _, f in files:
        for row, dead_kind, why, key, value in f.refused.iter_rows():
            dead_letter(value.encode(), why, str(path), row, key, dead_kind)
    n = 0
    for k, key, value, row, file in _paced(_merge([(k, f) for _, k, f in files]), speed):
        try:
            try:
                producer.produce(topics[k], value, key)
            except BufferError:
                produce_when_room(producer, topics[k], key.encode(), value.encode())
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise SystemExit(f"replay: Kafka refused an event for {topics[k]} ({err})") from None
            dead_letter(value.encode(), f"Kafka refused the event: {err.name()}: {err.str()}",
                        str(files[file][0]), row, key, "too_large")  # fmt: skip
            continue
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60) or delivery.failed:
        raise SystemExit(f"replay: {delivery.failed} events not delivered ({delivery.first_error})")
    if report is not None:
        report["dead_letters"] = dict(dead)
    return n


def _speed(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.replay", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--speed", type=_speed, default=None, help="times real time (default: as fast as possible)")
    parser.add_argument("--kind", choices=list(SCHEMAS), default=None, help="default: from the file name")
    args = parser.parse_args(argv)
    started = time.monotonic()
    report: dict[str, object] = {}
    try:
        n = replay(args.files, args.speed, args.kind, report=report)
    except (FlatFileError, ValueError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - started
    dead = report.get("dead_letters") or {}
    refused = f"; {sum(dead.values())} rows dead-lettered {dead}" if dead else ""  # type: ignore[union-attr]
    print(f"replayed {n} events in {elapsed:.1f} s ({n / max(elapsed, 1e-9):,.0f} events/s){refused}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
