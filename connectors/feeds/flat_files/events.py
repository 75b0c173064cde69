"""A flat file as feed events: the rows that pass the checks, encoded as the live feed's JSON.

Rows become the same event JSON the live feed sends (`T`, `Q`, `AM`; ns timestamps -> ms), so
the flow cannot tell a replay from a live day: that is what makes history and live bars
comparable. Encoding is vectorised (polars, no Python per row), and the events come out in
event-time order. Mapping notes: a fractional `size` goes out as `s` = whole shares plus `ds` =
the decimal text, as the feed does; `conditions` "14,41" -> `c` [14,41] (omitted when empty);
the flat file's `correction` has no live-feed field and is not forwarded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final, NamedTuple

import polars as pl

from connectors.feeds.flat_files.checks import SYMBOL_REGEX, checks_for, file_day
from connectors.feeds.flat_files.kinds import Kind, kind_of
from connectors.feeds.flat_files.read import ROW, read_rows

CHECK: Final = "\x00check"  # the index of the first check a row fails (null: none); no CSV header can clash


class FlatFile(NamedTuple):
    """A file's events (key, t, seq, value; event-time order) and its refused rows
    (row, kind, reason, key, value)."""

    events: pl.DataFrame
    refused: pl.DataFrame


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
    return df.select(key=pl.col("ticker"), t=t, seq=seq, value=pl.concat_str(parts), row=pl.col(ROW)).sort(
        "t", "seq", maintain_order=True
    )


def flat_file(path: Path, kind: Kind | None = None, now_ms: int | None = None) -> FlatFile:
    """A flat file as feed events sorted by event time, and the rows that cannot be events."""
    kind = kind or kind_of(path)
    rows, ragged = read_rows(path, kind)
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    raw_columns = [c for c in rows.columns if c != ROW]
    checks = checks_for(kind, {c: t for c, t in rows.schema.items() if c != ROW}, now_ms, file_day(path))
    # which check a row fails first (null: none), cheap for every row; reasons only for bad rows
    first = pl.coalesce([pl.when(cond).then(pl.lit(i, dtype=pl.UInt16)) for i, (cond, _, _) in enumerate(checks.checks)])
    typed = {f"{col}\x00typed": expr for col, expr in checks.typed.items()}
    judged = rows.lazy().with_columns(**typed, **{CHECK: first}).collect()
    good = judged.filter(pl.col(CHECK).is_null()).select(ROW, *(pl.col(f"{col}\x00typed").alias(col) for col in checks.typed))
    which = pl.col(CHECK)
    refused = judged.filter(which.is_not_null()).select(
        row=ROW,
        kind=pl.coalesce([pl.when(which == i).then(pl.lit(k)) for i, (_, _, k) in enumerate(checks.checks)]),
        reason=pl.coalesce([pl.when(which == i).then(why) for i, (_, why, _) in enumerate(checks.checks)]),
        key=pl.when(pl.col("ticker").str.contains(SYMBOL_REGEX)).then(pl.col("ticker")),
        value=pl.struct(raw_columns).struct.json_encode(),
    )  # fmt: skip
    return FlatFile(_events(good, kind), pl.concat([ragged, refused.cast(ragged.schema)]).sort("row"))


def flat_file_events(path: Path, kind: Kind | None = None) -> pl.DataFrame:
    """A flat file as feed events sorted by event time: columns key, t, seq, value (bad rows left out)."""
    return flat_file(path, kind).events


def merge(files: list[tuple[Kind, FlatFile]]) -> pl.DataFrame:
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
    return merge([(k, flat_file(path, k)) for path in paths for k in [kind or kind_of(path)]])
