"""The check of our bars against Polygon's minute bars, on generated fixture files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from bytewax.testing import run_main

from connectors.feeds.replay import replay
from flows import bar_check
from flows.ohlcv import build_flow
from flows.settings import Settings
from tests.support.fixtures import flat_files
from tests.support.fixtures.flat_files import DIFFERENCES_JSON, HERE, MINUTE_AGGS, TRADES
from tests.support.reference import reference_bars

FIELDS = ["open", "high", "low", "close", "volume", "trades"]  # what a minute_aggs_v1 file has


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = bar_check.main([str(HERE / MINUTE_AGGS), *args, "--json", "--examples", "100"])
    return code, json.loads(capsys.readouterr().out)


def planted() -> dict[str, list[list[Any]]]:
    return json.loads((HERE / DIFFERENCES_JSON).read_text())


def assert_finds_exactly_the_planted_differences(report: dict[str, Any]) -> None:
    differences = planted()
    assert report["only_ours"]["examples"] == differences["only_ours"]
    assert report["only_polygon"]["examples"] == differences["only_polygon"]
    both = report["bars_both"]
    assert both == report["bars_polygon"] - len(differences["only_polygon"]) > 30
    assert list(report["fields"]) == FIELDS  # flat files carry no vwap, so it is not compared
    for field, result in report["fields"].items():
        expected = differences.get(field, [])
        assert [[m["symbol"], m["timestamp"]] for m in result["mismatches"]] == expected, field
        assert (result["compared"], result["matched"]) == (both, both - len(expected)), field
        assert result["rate"] == pytest.approx((both - len(expected)) / both)


def test_the_committed_fixtures_are_what_the_generator_writes(tmp_path: Path) -> None:
    flat_files.write(tmp_path)
    for name in (TRADES, MINUTE_AGGS, DIFFERENCES_JSON):
        regenerate = f"{name} differs: python -m tests.support.fixtures.flat_files"
        assert (tmp_path / name).read_bytes() == (HERE / name).read_bytes(), regenerate


def test_fixture_trades_look_like_polygon_files() -> None:
    text = gzip.decompress((HERE / TRADES).read_bytes()).decode()
    assert '"14,41"' in text or '"14,37"' in text  # quoted multi-value conditions
    trades = pl.read_csv(HERE / TRADES)
    assert (trades["size"] != trades["size"].floor()).any()  # fractional sizes
    assert (trades["correction"] != 0).any()


def test_check_on_trades_finds_exactly_the_planted_differences(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = check(capsys, "--trades", str(HERE / TRADES))
    assert code == 0
    assert report["refused"] == {}
    assert_finds_exactly_the_planted_differences(report)


def test_min_rate_fails_the_command_below_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert check(capsys, "--trades", str(HERE / TRADES), "--min-rate", "0.9")[0] == 0
    assert check(capsys, "--trades", str(HERE / TRADES), "--min-rate", "0.99")[0] == 1  # close matches 36/38


def test_vwap_is_compared_when_polygons_file_has_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    events = flat_files.trades()
    vwaps = reference_bars(events).select(ticker="symbol", window_start=pl.col("timestamp") * 1_000_000, vwap="vwap")
    aggs = pl.read_csv(HERE / MINUTE_AGGS).join(vwaps, on=["ticker", "window_start"], how="left")
    first = aggs.row(0, named=True)
    aggs = aggs.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.col("vwap") + 0.01).otherwise("vwap"))
    path = tmp_path / "minute_aggs_v1.csv.gz"
    path.write_bytes(gzip.compress(aggs.write_csv().encode()))
    code = bar_check.main([str(path), "--trades", str(HERE / TRADES), "--json"])
    vwap = json.loads(capsys.readouterr().out)["fields"]["vwap"]
    assert code == 0
    changed = [first["ticker"], first["window_start"] // 1_000_000]
    assert [[m["symbol"], m["timestamp"]] for m in vwap["mismatches"]] == [changed]
    assert vwap["matched"] == vwap["compared"] - 1


def test_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        bar_check.main([str(tmp_path / "nope.csv.gz"), "--trades", str(HERE / TRADES)])
    assert exit_.value.code == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.integration
def test_bars_the_flow_stored_check_the_same_as_the_bar_book(
    capsys: pytest.CaptureFixture[str], settings: Settings, db: Any
) -> None:
    """Replay the day's trades through Kafka and the flow into PostgreSQL, then check the table."""
    replay([HERE / TRADES], settings=settings)
    run_main(build_flow(settings))
    code, report = check(capsys, "--database-url", settings.database_url)
    assert code == 0
    assert_finds_exactly_the_planted_differences(report)
