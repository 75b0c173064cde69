"""`tickstock-analyst`: bars, events and indicator values into CSV or Parquet files, and a candlestick chart.

    tickstock-analyst bars --symbols AAPL,MSFT --start 2024-03-08 --end 2024-03-12 --timeframe 5m --out bars.parquet
    tickstock-analyst bars --symbols AAPL --start 2024-01-01 --end 2024-04-01 --timeframe 1d --session regular --out days.csv
    tickstock-analyst events --symbols AAPL --start 2024-03-08 --end 2024-03-09 --kind pattern --out events.csv
    tickstock-analyst indicators --symbols AAPL --start 2024-03-08 --end 2024-03-09 --timeframe 5m --out rsi.parquet
    tickstock-analyst plot --symbol AAPL --start 2024-03-08T14:30Z --end 2024-03-08T21:00Z --timeframe 5m --out aapl.png

Composition only: the arguments are checked here (before anything is queried or written), the rows come
from connectors/postgres/analyst.py, the files from export.py and chart.py. Exit status 0 when written;
2 for an argument that cannot be served (a malformed or unknown symbol, a reversed or too large range, an
unknown timeframe, session or kind, an unwritable output, nothing to draw), with one line saying what to
change; 1 when PostgreSQL cannot be used. Times are RFC 3339 (`2024-03-08T14:30:00Z`, `...-05:00`) or a
date (`2024-03-08`, midnight UTC); naive times are UTC. A range is [start, end) by bar start, as everywhere.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, NoReturn

import polars as pl
import psycopg
from pydantic import ValidationError

from connectors.analyst.export import ExportError, check_writable, output_format, write_atomically, write_frame
from connectors.postgres import analyst
from schemas.sessions import SESSIONS
from schemas.symbols import InvalidSymbol, normalise
from schemas.timeframes import TIMEFRAMES

PROG: Final = "tickstock-analyst"
MAX_SYMBOLS: Final = 5000
DEFAULT_MAX_ROWS: Final = 2_000_000  # ~150 MB of bars in memory; --max-rows for more
DAY_MS: Final = 86_400_000


class Refused(Exception):
    """An argument this command cannot serve: exit 2 with the message."""


def symbols_of(values: Sequence[str]) -> list[str]:
    """Comma-separated and repeated --symbols as one sorted, duplicate-free list of valid symbols."""
    names = [part for value in values for part in value.split(",")]
    if not any(n.strip() for n in names):
        raise Refused("no symbols given: --symbols AAPL,MSFT")
    if len(names) > MAX_SYMBOLS:
        raise Refused(f"{len(names)} symbols are more than {MAX_SYMBOLS}; split the export")
    try:
        return sorted({normalise(n) for n in names if n.strip()})
    except InvalidSymbol as exc:
        raise Refused(str(exc)) from None


def time_of(name: str, text: str) -> datetime:
    """An RFC 3339 time or a date as an aware UTC datetime."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise Refused(f"--{name} {text[:40]!r} is not a time: use 2024-03-08 or 2024-03-08T14:30:00Z") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def bar_ms(timeframe: str, session: str | None) -> int:
    """The length of one bar of the timeframe (or of a session's daily bars); refuses unknown names."""
    if timeframe not in TIMEFRAMES:
        raise Refused(f"unknown timeframe {timeframe[:20]!r}; expected one of {', '.join(TIMEFRAMES)}")
    if session is not None:
        if session not in SESSIONS:
            raise Refused(f"unknown session {session[:20]!r}; expected one of {', '.join(SESSIONS)}")
        if timeframe != "1d":
            raise Refused(f"session {session} has daily bars: use --timeframe 1d, not {timeframe}")
        return DAY_MS
    return TIMEFRAMES[timeframe].ms


def check_range(start: datetime, end: datetime, symbols: int, ms: int, max_rows: int) -> None:
    """Refuse a reversed range, and one that could hold more than `max_rows` rows (memory stays bounded)."""
    if start >= end:
        raise Refused(f"--start {start.isoformat()} must be before --end {end.isoformat()}")
    rows = symbols * -(-(end - start) // timedelta(milliseconds=ms))
    if rows > max_rows:
        raise Refused(
            f"range too large: up to {rows} rows ({symbols} symbol(s) x {(end - start) / timedelta(milliseconds=ms):.0f} bars)"
            f" > --max-rows {max_rows}; narrow it, use a coarser timeframe, or raise --max-rows"
        )


def _connect(database_url: str | None) -> psycopg.Connection:
    if database_url is None:
        from connectors.postgres.settings import PostgresSettings  # only when needed, as in the analyst API

        database_url = PostgresSettings().database_url
    return psycopg.connect(database_url, autocommit=True, connect_timeout=10)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export bars, events and indicator values (CSV or Parquet), or draw a candlestick chart (PNG).",
        epilog="Exit status: 0 written; 2 an argument refused (the message says which); 1 PostgreSQL unusable.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{bars,events,indicators,plot}")

    def command(name: str, help_: str, *, many: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_)
        if many:
            sub.add_argument("--symbols", action="append", required=True, metavar="A,B,...", help="repeatable")
        else:
            sub.add_argument("--symbol", required=True)
        sub.add_argument("--start", required=True, help="RFC 3339 time or date (UTC), inclusive")
        sub.add_argument("--end", required=True, help="RFC 3339 time or date (UTC), exclusive")
        sub.add_argument("--out", required=True, type=Path, help="output file" + (" (.png)" if name == "plot" else ""))
        sub.add_argument("--database-url", help="default: DATABASE_URL from the environment")
        sub.add_argument(
            "--max-rows", type=int, default=DEFAULT_MAX_ROWS, help=f"refuse larger ranges (default {DEFAULT_MAX_ROWS})"
        )
        if name != "plot":
            sub.add_argument("--format", choices=("csv", "parquet"), help="default: from --out's suffix")
        return sub

    bars = command("bars", "bars of any timeframe, or daily bars by US/Eastern trading session")
    bars.add_argument("--timeframe", default="1m", help=f"one of {', '.join(TIMEFRAMES)} (default 1m)")
    bars.add_argument("--session", help=f"with --timeframe 1d: {', '.join(SESSIONS)} (09:30-16:00 / 04:00-20:00 New York)")
    events = command("events", "detected events (high/low, trend, surge, pattern)")
    events.add_argument("--kind", action="append", help=f"repeatable; one of {', '.join(analyst.EVENT_KINDS)} (default all)")
    events.add_argument("--min-confidence", type=float, default=0.0)
    events.add_argument("--timeframe", help="only events decided on this timeframe (default every one)")
    indicators = command("indicators", "indicator values (SMA, EMA, RSI, MACD, Bollinger, ATR, VWAP)")
    indicators.add_argument("--timeframe", default="1m", help=f"one of {', '.join(TIMEFRAMES)} (default 1m)")
    plot = command("plot", "a candlestick PNG of one symbol with a volume pane and event markers", many=False)
    plot.add_argument("--timeframe", default="1m", help=f"one of {', '.join(TIMEFRAMES)} (default 1m)")
    plot.add_argument("--session", help=f"with --timeframe 1d: {', '.join(SESSIONS)}")
    plot.add_argument("--no-events", action="store_true", help="candles and volume only")
    return parser


def _export(args: argparse.Namespace, query: Callable[[psycopg.Connection], pl.DataFrame]) -> str:
    check_writable(args.out)
    fmt = output_format(args.out, args.format)
    with _connect(args.database_url) as conn:
        frame = query(conn)
    size = write_frame(frame, args.out, fmt)
    return f"wrote {frame.height} rows ({size} bytes, {fmt}) to {args.out}"


def run(args: argparse.Namespace) -> str:
    """Carry out the parsed command; returns what was written. Raises Refused, QueryError, ExportError
    (exit 2) or psycopg.Error (exit 1)."""
    if args.max_rows < 1:
        raise Refused(f"--max-rows {args.max_rows} must be at least 1")
    start, end = time_of("start", args.start), time_of("end", args.end)
    symbols = [normalise_one(args.symbol)] if args.command == "plot" else symbols_of(args.symbols)
    if args.command == "plot":
        from connectors.analyst.chart import MAX_BARS

        check_range(start, end, 1, bar_ms(args.timeframe, args.session), min(args.max_rows, MAX_BARS))
    elif args.command == "bars":
        check_range(start, end, len(symbols), bar_ms(args.timeframe, args.session), args.max_rows)
    elif args.command == "indicators":
        check_range(start, end, len(symbols), bar_ms(args.timeframe, None), args.max_rows)
    else:
        if args.timeframe is not None:
            bar_ms(args.timeframe, None)
        if not 0.0 <= args.min_confidence <= 1.0:
            raise Refused(f"--min-confidence {args.min_confidence} must be between 0 and 1")
        check_range(start, end, len(symbols), TIMEFRAMES["1m"].ms, args.max_rows)  # bounded as 1m bars would be

    if args.command == "bars":
        return _export(args, lambda c: analyst.bars_on(c, symbols, start, end, args.timeframe, session=args.session))
    if args.command == "indicators":
        return _export(args, lambda c: analyst.indicators_on(c, symbols, start, end, args.timeframe))
    if args.command == "events":

        def events(conn: psycopg.Connection) -> pl.DataFrame:
            found = analyst.events_on(conn, symbols, start, end, args.kind, min_confidence=args.min_confidence)
            return found if args.timeframe is None else found.filter(pl.col("timeframe") == args.timeframe)

        return _export(args, events)
    return _plot(args, symbols[0], start, end)


def normalise_one(text: str) -> str:
    try:
        return normalise(text)
    except InvalidSymbol as exc:
        raise Refused(str(exc)) from None


def _plot(args: argparse.Namespace, symbol: str, start: datetime, end: datetime) -> str:
    from connectors.analyst.chart import ChartError, candlestick_figure, write_png  # matplotlib only for this command

    if args.out.suffix.lower() != ".png":
        raise Refused(f"--out {str(args.out)[:200]!r}: a chart is a PNG, name it .png")
    check_writable(args.out)
    with _connect(args.database_url) as conn:
        bars = analyst.bars_on(conn, [symbol], start, end, args.timeframe, session=args.session)
        marks = None if args.no_events else chart_events(conn, symbol, start, end, "1d" if args.session else args.timeframe)
    if bars.height == 0:
        raise Refused(f"no {args.timeframe}{' ' + args.session if args.session else ''} bars of {symbol} in"
                      f" [{start.isoformat()}, {end.isoformat()}): nothing to draw")  # fmt: skip
    label = f"{symbol} {args.timeframe}" + (f" {args.session} session" if args.session else "") + " (UTC)"
    try:
        figure = candlestick_figure(bars, marks, title=label)
    except ChartError as exc:
        raise Refused(str(exc)) from None
    size = write_atomically(args.out, lambda out: write_png(figure, out))
    shown = 0 if marks is None else marks.height
    return f"wrote a chart of {bars.height} bars and {shown} events ({size} bytes) to {args.out}"


def chart_events(conn: psycopg.Connection, symbol: str, start: datetime, end: datetime, timeframe: str) -> pl.DataFrame:
    """Events and alerts of the chart's timeframe (or of none, as session highs/lows), for markers."""
    columns = ["timestamp", "kind", "type", "direction", "price", "timeframe"]
    found = analyst.events_on(conn, [symbol], start, end).select(columns)
    alerts = analyst.alerts_on(conn, [symbol], start, end).select(
        "timestamp", pl.lit("alert").alias("kind"), pl.col("rule").alias("type"), "direction",
        pl.lit(None, pl.Float64).alias("price"), "timeframe",
    )  # fmt: skip
    both = pl.concat([found, alerts])
    return both.filter(pl.col("timeframe").is_null() | (pl.col("timeframe") == timeframe)).sort("timestamp")


def fail(message: str, status: int) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # argparse's own errors: usage and exit 2
    try:
        print(run(args))
    except (Refused, analyst.QueryError, ExportError) as exc:
        fail(str(exc), 2)
    except ValidationError as exc:  # the environment's settings (DATABASE_URL)
        fail(f"settings: {str(exc).strip()[:300]}", 1)
    except psycopg.Error as exc:  # unreachable, refused, or a schema not migrated (0006 for sessions)
        fail(f"PostgreSQL cannot be used: {str(exc).strip()[:300]}", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
