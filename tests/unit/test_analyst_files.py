"""The analyst command line's pure parts on generated frames: files written whole (export.py), a candlestick
chart whose pixels show the candles, the volume bars and the event markers (chart.py), and the arguments
the command refuses before it touches a database (cli.py: exit 2, one precise line)."""

from __future__ import annotations

import io
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.image import imread
from polars.testing import assert_frame_equal

from connectors.analyst import chart
from connectors.analyst.cli import DEFAULT_MAX_ROWS, main
from connectors.analyst.export import ExportError, output_format, write_atomically, write_frame
from connectors.postgres.analyst import SESSION_SCHEMA

T0 = datetime(2024, 3, 8, 14, 30, tzinfo=UTC)
NOWHERE = "postgresql://nobody@127.0.0.1:1/none"  # refusals happen before any connection


def bar_frame(n: int = 40, *, all_up: bool = False) -> pl.DataFrame:
    """`n` session bars: rising and falling ones (even/odd), bar 5 volume-only, bar 10 with 10x volume."""
    rows = []
    for i in range(n):
        o = 100 + 3 * math.sin(i / 4)
        c = o + (0.8 if all_up or i % 2 == 0 else -0.8)
        if i == 5:
            rows.append(
                ("AAPL", T0 + timedelta(days=i), None, None, None, None, 300, None, 2, date(2024, 3, 8) + timedelta(days=i))
            )
            continue
        volume = 10_000 if i == 10 else 1_000
        rows.append(("AAPL", T0 + timedelta(days=i), o, max(o, c) + 0.5, min(o, c) - 0.5, c, volume, (o + c) / 2, 9,
                     date(2024, 3, 8) + timedelta(days=i)))  # fmt: skip
    return pl.DataFrame(rows, schema=SESSION_SCHEMA, orient="row")


def event_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "timestamp": [T0 + timedelta(days=20, hours=1), T0 + timedelta(days=30)],
            "kind": ["trend", "pattern"],
            "direction": ["up", "down"],
            "price": [None, 101.0],
        },
        schema={"timestamp": pl.Datetime("us", "UTC"), "kind": pl.String, "direction": pl.String, "price": pl.Float64},
    )


def pixels(figure) -> np.ndarray:
    out = io.BytesIO()
    chart.write_png(figure, out)
    assert out.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    return (imread(io.BytesIO(out.getvalue()))[:, :, :3] * 255).round().astype(int)


def count(area: np.ndarray, colour: str) -> int:
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(area - rgb).sum(axis=2) <= 6).sum())


def pane(image: np.ndarray, axes) -> np.ndarray:
    """The pixels inside an axes (image rows run top-down, figure coordinates bottom-up)."""
    h, w = image.shape[:2]
    box = axes.get_position()
    return image[round((1 - box.y1) * h) + 2 : round((1 - box.y0) * h) - 2, round(box.x0 * w) + 2 : round(box.x1 * w) - 2]


def test_export_round_trips_csv_and_parquet(tmp_path: Path) -> None:
    frame = bar_frame()
    for name in ("bars.csv", "bars.parquet"):
        path = tmp_path / name
        assert write_frame(frame, path, output_format(path)) == path.stat().st_size > 0
        back = (
            pl.read_parquet(path)
            if name.endswith("parquet")
            else pl.read_csv(path, try_parse_dates=True, schema_overrides=frame.schema)
        )
        assert_frame_equal(back, frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.csv", "bars.parquet"]  # no staged file left


def test_export_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot tell the format"):
        output_format(tmp_path / "bars.xlsx")
    with pytest.raises(ExportError, match="is a directory"):
        write_frame(bar_frame(), tmp_path, "csv")
    with pytest.raises(ExportError, match="does not exist"):
        write_frame(bar_frame(), tmp_path / "missing" / "bars.csv", "csv")
    with pytest.raises(ExportError, match="cannot write in '/proc'"):  # even root cannot create files there
        write_frame(bar_frame(), Path("/proc/bars.csv"), "csv")

    def broken(out) -> None:
        out.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(ExportError, match="No space left"):
        write_atomically(tmp_path / "bars.csv", broken)
    assert list(tmp_path.iterdir()) == []  # neither a partial file nor the staged one


def test_chart_shows_candles_volume_bars_and_event_markers() -> None:
    figure = chart.candlestick_figure(bar_frame(), event_frame(), title="AAPL 1d regular")
    prices, volumes = figure.axes
    image = pixels(figure)
    assert image.shape == (chart.SIZE_PX[1], chart.SIZE_PX[0], 3)
    top, bottom = pane(image, prices), pane(image, volumes)
    for area in (top, bottom):  # rising and falling candles above, their volume bars below
        assert count(area, chart.UP) > 200 and count(area, chart.DOWN) > 200
    assert count(bottom, chart.NO_PRICE) > 20 and count(top, chart.NO_PRICE) == 0  # volume-only bar: no candle
    assert count(top, chart.MARK_UP) > 20 and count(top, chart.MARK_DOWN) > 20
    assert count(bottom, chart.MARK_UP) == 0
    # the 10x volume bar (rising, slot 10) is the tallest green column of the volume pane
    green = (np.abs(bottom - np.array([0x26, 0xA6, 0x9A])).sum(axis=2) <= 6).sum(axis=0)
    columns = np.flatnonzero(green)
    tallest = columns[green[columns].argmax()]
    x_of = volumes.transData.transform([(10, 0)])[0][0] - volumes.get_position().x0 * image.shape[1] - 2
    assert abs(tallest - x_of) < 15 and green.max() > 5 * np.median(green[columns])


def test_chart_of_rising_bars_has_no_falling_colour() -> None:
    image = pixels(chart.candlestick_figure(bar_frame(all_up=True)))
    assert count(image, chart.DOWN) == 0 and count(image, chart.UP) > 500


def test_chart_refuses_what_it_cannot_draw() -> None:
    with pytest.raises(chart.ChartError, match="no bars"):
        chart.candlestick_figure(bar_frame().clear())
    with pytest.raises(chart.ChartError, match="lack column"):
        chart.candlestick_figure(bar_frame().drop("close"))
    with pytest.raises(chart.ChartError, match="2 symbols"):
        chart.candlestick_figure(pl.concat([bar_frame(), bar_frame().with_columns(symbol=pl.lit("MSFT"))]))


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["bars", "--symbols", "AAPL,A B", "--start", "2024-03-08", "--end", "2024-03-09"], "invalid symbol 'A B'"),
        (["bars", "--symbols", ",", "--start", "2024-03-08", "--end", "2024-03-09"], "no symbols given"),
        (["bars", "--symbols", "AAPL", "--start", "2024-03-09", "--end", "2024-03-08"], "must be before --end"),
        (["bars", "--symbols", "AAPL", "--start", "yesterday", "--end", "2024-03-08"], "--start 'yesterday' is not a time"),
        (["bars", "--symbols", "AAPL", "--start", "1990-01-01", "--end", "2024-03-08"], "range too large: up to 17978400 rows"),
        (["bars", "--symbols", "AAPL", "--start", "2024-03-08", "--end", "2024-03-09", "--timeframe", "2m"], "unknown timeframe '2m'"),
        (["bars", "--symbols", "AAPL", "--start", "2024-03-08", "--end", "2024-03-09", "--session", "regular"], "use --timeframe 1d, not 1m"),
        (["bars", "--symbols", "AAPL", "--start", "2024-03-08", "--end", "2024-03-09", "--timeframe", "1d", "--session", "night"], "unknown session 'night'"),
        (["indicators", "--symbols", "AAPL", "--start", "2024-03-08", "--end", "2024-03-09", "--timeframe", "1w"], "unknown timeframe"),
        (["events", "--symbols", "AAPL", "--start", "2024-03-08", "--end", "2024-03-09", "--min-confidence", "2"], "between 0 and 1"),
        (["events", "--symbols", "AAPL", "--start", "2024-03-08", "--end", "2024-03-09", "--max-rows", "0"], "at least 1"),
        (["plot", "--symbol", "AAPL", "--start", "2024-03-01", "--end", "2024-03-09"], "range too large: up to 11520 rows"),
    ],
)  # fmt: skip
def test_cli_refuses_hostile_arguments_before_connecting(argv: list[str], says: str, tmp_path: Path, capsys) -> None:
    out = "chart.png" if argv[0] == "plot" else "out.csv"
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--out", str(tmp_path / out), "--database-url", NOWHERE])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tickstock-analyst: error: ") and says in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("missing/out.csv", "does not exist"),
        (".", "is a directory"),
        ("out.xlsx", "cannot tell the format"),
        ("chart.jpg", "PNG"),
    ],
)
def test_cli_refuses_outputs_it_cannot_write(out: str, says: str, tmp_path: Path, capsys) -> None:
    command = "plot" if out.startswith("chart") else "bars"
    who = ["--symbol", "AAPL"] if command == "plot" else ["--symbols", "AAPL"]
    with pytest.raises(SystemExit) as exited:
        main(
            [
                command,
                *who,
                "--start",
                "2024-03-08",
                "--end",
                "2024-03-09",
                "--out",
                str(tmp_path / out),
                "--database-url",
                NOWHERE,
            ]
        )
    assert exited.value.code == 2 and says in capsys.readouterr().err


def test_cli_says_when_postgresql_cannot_be_used(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bars", "--symbols", "AAPL", "--start", "2024-03-08", "--end", "2024-03-09", "--out", str(tmp_path / "b.csv"),
              "--database-url", NOWHERE])  # fmt: skip
    assert exited.value.code == 1 and "PostgreSQL cannot be used" in capsys.readouterr().err
    assert DEFAULT_MAX_ROWS >= 1_000_000


def test_the_pure_parts_know_nothing_of_sql() -> None:
    """export.py and chart.py take DataFrames; only cli.py (composition) reaches the database."""
    import ast

    from tests.support.source import parse

    root = Path(__file__).resolve().parents[2] / "connectors" / "analyst"
    for name in ("export.py", "chart.py"):
        tree = parse(root / name)
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in imported if m.split(".")[0] in ("psycopg", "psycopg_pool", "connectors", "flows")}, name
