"""Replay Polygon flat files (trades_v1, quotes_v1, minute_aggs_v1; gzipped CSV) into Kafka.

``python -m connectors.replay FILE... [--speed 10]``. Rows become the same event JSON the live
feed sends (`T`, `Q`, `AM`; ns timestamps -> ms), so the flow cannot tell a replay from a live
day: that is what makes history and live bars comparable. Files are parsed and encoded with
polars (vectorised, no Python per row); the files' events are merged and published in
event-time order (so per symbol too), as fast as possible or `--speed` times real time.

Mapping notes: a fractional `size` goes out as `s` = whole shares plus `ds` = the decimal text,
as the feed does; `conditions` "14,41" -> `c` [14,41] (omitted when empty); the flat file's
`correction` has no live-feed field and is not forwarded.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import polars as pl

from flows.settings import Settings

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


def kind_of(path: Path) -> Kind:
    """trades_v1/…, quotes_v1/…, minute_aggs_v1/… (Polygon's flat-file layout) or a name containing it."""
    for name in (path.name, *(p.name for p in path.parents)):
        for kind in ("minute_aggs", "quotes", "trades"):
            if kind in name:
                return kind  # type: ignore[return-value]
    raise ValueError(f"cannot tell the flat-file kind of {path}; pass --kind")


def read_flat_file(path: Path, kind: Kind) -> pl.DataFrame:
    return pl.read_csv(path, schema_overrides=SCHEMAS[kind])


def _json_list(col: str) -> pl.Expr:
    """'14,41' -> '[14,41]'; null/empty -> null (the field is then omitted)."""
    text = pl.col(col).str.replace_all(" ", "")
    return pl.when(text.str.len_chars() > 0).then(pl.concat_str(pl.lit("["), text, pl.lit("]")))


def _field(name: str, value: pl.Expr, quoted: bool = False) -> pl.Expr:
    """`,"name":value`, or "" when value is null (omitted, like the feed's optional fields)."""
    v = pl.concat_str(pl.lit('"'), value, pl.lit('"')) if quoted else value.cast(pl.String)
    return pl.concat_str(pl.lit(f',"{name}":'), v).fill_null("")


def _ms(col: str) -> pl.Expr:
    return pl.col(col) // 1_000_000


def _whole(col: str) -> pl.Expr:
    return pl.col(col).floor().cast(pl.Int64)


def _events(df: pl.DataFrame, kind: Kind) -> pl.DataFrame:
    """Columns `key`, `t` (event time, ms), `seq`, `value` (the event JSON in the feed's field order)."""
    if kind == "trades":
        fractional = pl.col("size") != pl.col("size").floor()
        parts = [
            pl.lit('{"ev":"T"'), _field("sym", pl.col("ticker"), True), _field("x", pl.col("exchange")),
            _field("i", pl.col("id"), True), _field("z", pl.col("tape")), _field("p", pl.col("price")),
            _field("s", _whole("size")), _field("c", _json_list("conditions")), _field("t", _ms("sip_timestamp")),
            _field("q", pl.col("sequence_number")), _field("trfi", pl.col("trf_id")),
            _field("trft", _ms("trf_timestamp")),
            _field("ds", pl.when(fractional).then(pl.col("size").cast(pl.String)), True), pl.lit("}"),
        ]  # fmt: skip
        t, seq = _ms("sip_timestamp"), pl.col("sequence_number")
    elif kind == "quotes":
        parts = [
            pl.lit('{"ev":"Q"'), _field("sym", pl.col("ticker"), True), _field("bx", pl.col("bid_exchange")),
            _field("bp", pl.col("bid_price")), _field("bs", _whole("bid_size")), _field("ax", pl.col("ask_exchange")),
            _field("ap", pl.col("ask_price")), _field("as", _whole("ask_size")),
            _field("c", pl.col("conditions").str.split(",").list.first().str.strip_chars().cast(pl.Int64, strict=False)),
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
        key=pl.col("ticker"), t=t, seq=seq, value=pl.concat_str(parts)
    ).sort("t", "seq", maintain_order=True)


def flat_file_events(path: Path, kind: Kind | None = None) -> pl.DataFrame:
    """A flat file as feed events sorted by event time: columns key, t, seq, value."""
    kind = kind or kind_of(path)
    return _events(read_flat_file(path, kind), kind)


def merged_events(paths: list[Path], kind: Kind | None = None) -> pl.DataFrame:
    """Every file's events in one event-time order, with the `kind` each came from.

    The files are interleaved by event time, not published one after another, so a day's
    trades and quotes reach Kafka as they happened. Ties keep the order of the files given,
    then each file's own (event time, sequence) order, so every symbol stays in order.
    """
    parts = [flat_file_events(path, k).with_columns(kind=pl.lit(k)) for path in paths for k in [kind or kind_of(path)]]
    if not parts:
        raise ValueError("no flat files given")
    return pl.concat(parts).sort("t", maintain_order=True) if len(parts) > 1 else parts[0]


def _paced(events: pl.DataFrame, speed: float | None) -> Iterator[tuple[str, str, str, int]]:
    started, first = time.monotonic(), None
    for kind, key, value, t in events.select("kind", "key", "value", "t").iter_rows():
        if speed:
            first = t if first is None else first
            ahead = started + (t - first) / 1000 / speed - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
        yield kind, key, value, t


def replay(
    paths: list[Path], speed: float | None = None, kind: Kind | None = None, settings: Settings | None = None
) -> int:
    """Publish the files' events merged in event-time order (idempotent producer, key = symbol); returns how many."""
    from connectors.synthetic import _produce_when_room, make_producer

    s = settings or Settings()
    topics = {"trades": s.topic_trades, "quotes": s.topic_quotes, "minute_aggs": s.topic_minute_aggs}
    producer, delivery = make_producer(s.kafka_bootstrap_servers, idempotent=True)
    n = 0
    for k, key, value, _t in _paced(merged_events(paths, kind), speed):
        try:
            producer.produce(topics[k], value, key)
        except BufferError:
            _produce_when_room(producer, topics[k], key.encode(), value.encode())
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60) or delivery.failed:
        raise SystemExit(f"replay: {delivery.failed} events not delivered ({delivery.first_error})")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.replay", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--speed", type=float, default=None, help="times real time (default: as fast as possible)")
    parser.add_argument("--kind", choices=list(SCHEMAS), default=None, help="default: from the file name")
    args = parser.parse_args(argv)
    started = time.monotonic()
    n = replay(args.files, args.speed, args.kind)
    elapsed = time.monotonic() - started
    print(f"replayed {n} events in {elapsed:.1f} s ({n / max(elapsed, 1e-9):,.0f} events/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
