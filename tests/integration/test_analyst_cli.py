"""`tickstock-analyst` on generated rows in the test database: every export reads back as the rows the analyst
API returns (CSV and Parquet, every command, a trading-session timeframe), the chart's PNG shows candles,
volume bars and event markers, and a refusal that needs the database (an unknown symbol) exits 2."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest
from matplotlib.image import imread
from polars.testing import assert_frame_equal

from connectors.analyst import chart
from connectors.analyst.cli import main
from connectors.postgres import analyst
from tests.support.services import TEST_DATABASE_URL

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START, END = "2024-03-08T14:30:00Z", "2024-03-08T17:00:00Z"
T0, T1 = datetime(2024, 3, 8, 14, 30, tzinfo=UTC), datetime(2024, 3, 8, 17, tzinfo=UTC)


@pytest.fixture
def rows(db: psycopg.Connection) -> psycopg.Connection:
    """150 minutes of two symbols (a wave: rising and falling 5-minute bars, some volume-only minutes),
    events, alerts and 5-minute indicator rows."""
    db.execute("INSERT INTO symbols VALUES ('AAPL'), ('MSFT')")
    db.execute(
        "INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades)"
        " SELECT s, TIMESTAMPTZ '2024-03-08 14:30+00' + m * INTERVAL '1 minute', p, p + 0.4, p - 0.4 - (m % 3) * 0.1,"
        "        p + 0.2 * sin(m), 100 + (m * 37) % 900, p, 1 + m % 7"
        " FROM unnest(ARRAY['AAPL', 'MSFT']) AS s, generate_series(0, 149) AS m,"
        "      LATERAL (SELECT round((100 + 3 * sin(m / 9.0))::numeric, 4)::float8 AS p) AS price"
    )
    db.execute("UPDATE ohlcv_1min SET open = NULL, high = NULL, low = NULL, close = NULL, vwap = NULL"
               " WHERE extract(minute FROM timestamp)::int % 17 = 0")  # fmt: skip
    db.execute(
        "INSERT INTO events (symbol, timestamp, id, kind, type, timeframe, direction, confidence, price, revision, params, detail)"
        " SELECT 'AAPL', TIMESTAMPTZ '2024-03-08 14:30+00' + m * INTERVAL '1 minute', 'e' || m, k, t, tf, d, 0.9, 101.5, 0,"
        "        '{}', '{\"note\": \"x\"}'"
        " FROM (VALUES (12, 'trend', 'trend_start', '5m', 'up'), (47, 'pattern', 'doji', '5m', 'down'),"
        "              (90, 'surge', 'volume_surge', '1m', 'up'), (100, 'highlow', 'session_high', NULL, 'up'))"
        "      AS e (m, k, t, tf, d)"
    )
    db.execute(
        "INSERT INTO indicator_values (symbol, timeframe, timestamp, sma, ema, rsi, revision)"
        " SELECT s, '5m', TIMESTAMPTZ '2024-03-08 14:30+00' + m * INTERVAL '5 minutes', 100 + m, 100 - m, 50 + m, 0"
        " FROM unnest(ARRAY['AAPL', 'MSFT']) AS s, generate_series(0, 29) AS m"
    )
    return db


def read(path: Path, schema: dict) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    return pl.read_csv(path, try_parse_dates=True, schema_overrides=schema)


def cli(*argv: str) -> None:
    assert main([*argv, "--database-url", TEST_DATABASE_URL]) == 0


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_exports_read_back_as_the_api_rows(rows: psycopg.Connection, tmp_path: Path, suffix: str, capsys) -> None:
    window = ("--start", START, "--end", END)
    expected = {
        "bars_5m": analyst.bars_on(rows, ["AAPL", "MSFT"], T0, T1, "5m"),
        "bars_1m": analyst.bars_on(rows, ["AAPL"], T0, T1),
        "days": analyst.bars_on(rows, ["AAPL", "MSFT"], T0.replace(hour=0), T1.replace(day=9, hour=0), "1d", session="regular"),
        "events": analyst.events_on(rows, ["AAPL"], T0, T1).filter(pl.col("timeframe") == "5m"),
        "indicators": analyst.indicators_on(rows, ["AAPL", "MSFT"], T0, T1, "5m"),
    }
    cli("bars", "--symbols", "aapl,MSFT", *window, "--timeframe", "5m", "--out", str(tmp_path / f"bars_5m{suffix}"))
    cli("bars", "--symbols", "AAPL", "--symbols", "AAPL", *window, "--out", str(tmp_path / f"bars_1m{suffix}"))
    cli("bars", "--symbols", "AAPL,MSFT", "--start", "2024-03-08", "--end", "2024-03-09", "--timeframe", "1d",
        "--session", "regular", "--out", str(tmp_path / f"days{suffix}"))  # fmt: skip
    cli("events", "--symbols", "AAPL", *window, "--timeframe", "5m", "--out", str(tmp_path / f"events{suffix}"))
    cli("indicators", "--symbols", "MSFT,AAPL", *window, "--timeframe", "5m", "--out", str(tmp_path / f"indicators{suffix}"))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("wrote 60 rows (") and f"to {tmp_path / f'bars_5m{suffix}'}" in printed[0]
    for name, frame in expected.items():
        assert frame.height > 0, name
        assert_frame_equal(read(tmp_path / f"{name}{suffix}", frame.schema), frame)
    assert expected["days"]["day"].to_list() == [datetime(2024, 3, 8).date()] * 2
    assert expected["events"]["id"].to_list() == ["e12", "e47"]


def test_plot_writes_candles_volume_and_markers(rows: psycopg.Connection, tmp_path: Path, capsys) -> None:
    out = tmp_path / "aapl.png"
    cli("plot", "--symbol", "AAPL", "--start", START, "--end", END, "--timeframe", "5m", "--out", str(out))
    assert "wrote a chart of 30 bars and 3 events" in capsys.readouterr().out  # the 5m ones and the session high
    image = (imread(out)[:, :, :3] * 255).round().astype(int)
    assert image.shape == (chart.SIZE_PX[1], chart.SIZE_PX[0], 3)

    def share(rows_: slice, colour: str) -> int:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(image[rows_] - rgb).sum(axis=2) <= 6).sum())

    upper, lower = slice(50, 420), slice(500, 620)  # the price pane and the volume pane (chart.py's layout)
    for pane in (upper, lower):
        assert share(pane, chart.UP) > 300 and share(pane, chart.DOWN) > 300
    assert share(upper, chart.MARK_UP) > 20 and share(upper, chart.MARK_DOWN) > 20


def test_an_unknown_symbol_exits_2_from_the_program(rows: psycopg.Connection, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "connectors.analyst.cli", "bars", "--symbols", "AAPL,ZZZZ", "--start", START, "--end", END,
         "--out", str(tmp_path / "b.csv"), "--database-url", TEST_DATABASE_URL],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == "tickstock-analyst: error: unknown symbol(s): ZZZZ (never seen by the pipeline)"
    assert list(tmp_path.iterdir()) == []
