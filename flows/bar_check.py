"""Check our 1-minute bars against Polygon's own: match rates per field for one day.

    python -m flows.bar_check minute_aggs_v1/2026-11-02.csv.gz --trades trades_v1/2026-11-02.csv.gz
    python -m flows.bar_check minute_aggs_v1/2026-11-02.csv.gz --database-url postgresql://...

Our side is either the bars the flow's own bar book (`flows.book`, the same code the OHLCV
flow runs) builds from that day's `trades_v1` file, replayed in event-time order, or the bars
the flow stored in `ohlcv_1min` for the file's time range. Polygon's side is the day's
`minute_aggs_v1` file. Bars are paired on (symbol, minute start); for every field Polygon's
file has (open, high, low, close, volume, transactions -> trades, and vwap when a `vwap`/`vw`
column is present) the report gives how many paired bars agree, plus the bars only one side
has. Prices agree within `--tolerance` (absolute), VWAP within `--vwap-tolerance`, counts exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from connectors.feeds.flat_files import FlatFileError, flat_file_events, read_flat_file
from flows.book import BarBook
from schemas.conditions import ConditionRules

MINUTE_MS = 60_000
BAR_COLUMNS = {
    "symbol": pl.String, "timestamp": pl.Int64, "open": pl.Float64, "high": pl.Float64, "low": pl.Float64,
    "close": pl.Float64, "volume": pl.Float64, "vwap": pl.Float64, "trades": pl.Int64,
}  # fmt: skip
PRICE_FIELDS = ("open", "high", "low", "close")
CHUNK = 100_000  # trades per bar-book call: bounded lists, same bars however the input is cut


def polygon_bars(path: Path) -> pl.DataFrame:
    """A `minute_aggs_v1` file as bars (BAR_COLUMNS; vwap null unless the file has one)."""
    df = read_flat_file(path, "minute_aggs")
    vwap = next((c for c in ("vwap", "vw") if c in df.columns), None)
    return df.select(
        symbol=pl.col("ticker"),
        timestamp=pl.col("window_start") // 1_000_000,
        open="open", high="high", low="low", close="close", volume="volume",
        vwap=pl.col(vwap).cast(pl.Float64) if vwap else pl.lit(None, dtype=pl.Float64),
        trades="transactions",
    ).cast(BAR_COLUMNS)  # type: ignore[arg-type]  # fmt: skip


class BookResult:
    """Our bars from a trades file, and what the bar book refused (by kind) on the way."""

    def __init__(self, bars: pl.DataFrame, refused: dict[str, int]) -> None:
        self.bars = bars
        self.refused = refused


def book_bars(trades_path: Path) -> BookResult:
    """Replay a `trades_v1` file through the flow's bar book; every bar final at the end."""
    values = flat_file_events(trades_path, "trades")["value"]
    book = BarBook(ConditionRules.load())
    finals = []
    refused: dict[str, int] = {}
    for start in range(0, len(values), CHUNK):
        bars, rejects = book.apply(values.slice(start, CHUNK).to_list())  # msgspec decodes str too
        finals.extend(bars)
        for r in rejects:
            refused[r.kind] = refused.get(r.kind, 0) + 1
    finals.extend(book.close_all())
    latest = {(b.symbol, b.timestamp): b for b in finals}  # a revision replaces the earlier record
    rows = [(b.symbol, b.timestamp, b.open, b.high, b.low, b.close, b.volume, b.vwap, b.trades)
            for b in latest.values()]  # fmt: skip
    return BookResult(pl.DataFrame(rows, schema=BAR_COLUMNS, orient="row"), refused)


def stored_bars(database_url: str, start_ms: int, end_ms: int) -> pl.DataFrame:
    """The flow's bars in `ohlcv_1min` with start_ms <= minute start < end_ms."""
    import psycopg

    query = (
        "SELECT symbol, (extract(epoch FROM timestamp) * 1000)::bigint, open::float8, high::float8, low::float8,"
        " close::float8, volume::float8, vwap::float8, trades FROM ohlcv_1min"
        " WHERE timestamp >= to_timestamp(%(start)s / 1000.0) AND timestamp < to_timestamp(%(end)s / 1000.0)"
    )
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(query, {"start": start_ms, "end": end_ms}).fetchall()
    return pl.DataFrame(rows, schema=BAR_COLUMNS, orient="row")


def compare(
    ours: pl.DataFrame, theirs: pl.DataFrame, tolerance: float = 1e-6, vwap_tolerance: float = 1e-4, examples: int = 5
) -> dict[str, Any]:
    """Match rates per field over the bars both sides have, and the bars only one side has."""
    paired = ours.join(theirs, on=["symbol", "timestamp"], how="inner", suffix="_polygon")
    report: dict[str, Any] = {
        "bars_ours": ours.height,
        "bars_polygon": theirs.height,
        "bars_both": paired.height,
        "only_ours": _keys(ours.join(theirs, on=["symbol", "timestamp"], how="anti"), examples),
        "only_polygon": _keys(theirs.join(ours, on=["symbol", "timestamp"], how="anti"), examples),
        "fields": {},
    }
    for field in (*PRICE_FIELDS, "volume", "trades", "vwap"):
        theirs_col, ours_col = pl.col(f"{field}_polygon"), pl.col(field)
        compared = paired.filter(theirs_col.is_not_null())
        if compared.is_empty():
            continue  # Polygon's file does not have this field (flat files carry no vwap)
        limit = vwap_tolerance if field == "vwap" else tolerance if field in PRICE_FIELDS else 0.0
        same = ours_col.is_not_null() & ((ours_col - theirs_col).abs() <= limit)
        differ = compared.filter(~same).sort("symbol", "timestamp")
        shown = differ.select("symbol", "timestamp", field, f"{field}_polygon").head(examples)
        report["fields"][field] = {
            "compared": compared.height,
            "matched": compared.height - differ.height,
            "rate": (compared.height - differ.height) / compared.height,
            "mismatches": [{"symbol": s, "timestamp": t, "ours": o, "polygon": p} for s, t, o, p in shown.iter_rows()],
        }
    return report


def _keys(bars: pl.DataFrame, examples: int) -> dict[str, Any]:
    keys = bars.select("symbol", "timestamp").sort("symbol", "timestamp")
    return {"count": bars.height, "examples": [list(k) for k in keys.head(examples).rows()]}


def _minute(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def format_report(report: dict[str, Any]) -> str:
    """The report for people: counts, one line per field, the first mismatches (UTC minutes)."""
    lines = [
        f"bars: ours {report['bars_ours']:,}, Polygon's {report['bars_polygon']:,}, both {report['bars_both']:,}",
    ]
    for side, name in (("only_ours", "only ours"), ("only_polygon", "only Polygon's")):
        listed = ", ".join(f"{sym} {_minute(ts)}" for sym, ts in report[side]["examples"])
        lines.append(f"{name}: {report[side]['count']:,}" + (f" (e.g. {listed})" if listed else ""))
    if report.get("refused"):
        lines.append(f"trades the bar book refused: {report['refused']}")
    lines.append(f"{'field':<8} {'compared':>10} {'matched':>10} {'rate':>9}")
    for field, f in report["fields"].items():
        lines.append(f"{field:<8} {f['compared']:>10,} {f['matched']:>10,} {f['rate']:>9.4%}")
        lines.extend(
            f"         {m['symbol']} {_minute(m['timestamp'])}: ours {m['ours']}, Polygon's {m['polygon']}"
            for m in f["mismatches"]
        )
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.bar_check", description=__doc__.splitlines()[0])
    parser.add_argument("minute_aggs", type=Path, help="Polygon's minute_aggs_v1 file for the day")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--trades", type=Path, help="the day's trades_v1 file: build our bars with the flow's bar book")
    source.add_argument("--database-url", help="read the bars the flow stored in ohlcv_1min instead")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="absolute price tolerance (default 1e-6)")
    parser.add_argument("--vwap-tolerance", type=float, default=1e-4, help="absolute VWAP tolerance (default 1e-4)")
    parser.add_argument("--examples", type=int, default=5, help="mismatching bars listed per field")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--min-rate", type=float, default=None, help="exit 1 if any field's match rate is below this")
    args = parser.parse_args(list(argv) if argv is not None else None)
    for path in (args.minute_aggs, args.trades):
        if path is not None and not path.is_file():
            parser.error(f"no such file: {path}")
    refused: dict[str, int] = {}
    try:
        theirs = polygon_bars(args.minute_aggs)
        if args.trades is not None:
            result = book_bars(args.trades)
            ours, refused = result.bars, result.refused
    except FlatFileError as exc:
        print(f"bar_check: {exc}", file=sys.stderr)
        return 2
    if args.trades is None:
        start = int(theirs["timestamp"].min() or 0)  # type: ignore[arg-type]  # polars types min() as any scalar; epoch ms here
        end = int(theirs["timestamp"].max() or 0) + MINUTE_MS  # type: ignore[arg-type]  # the same
        ours = stored_bars(args.database_url, start, end)
    report = compare(ours, theirs, args.tolerance, args.vwap_tolerance, args.examples)
    report["refused"] = refused
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.min_rate is not None and any(f["rate"] < args.min_rate for f in report["fields"].values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
