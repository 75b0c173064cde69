"""The reference bars, checked by hand on small cases (so the oracle itself can be trusted)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.reference import BAR_SCHEMA, UnknownConditionError, reference_bars

M0 = 1_793_629_800_000  # a minute start (2026-11-02 14:30 UTC)
M1 = M0 + 60_000


def trade(t: int, p: float, s: int = 100, c: list[int] | None = None, *, i: str | None = None, **kw: Any) -> dict:
    """A decoded trade with wire names; `i` defaults to something unique."""
    record = {"ev": "T", "sym": "AAPL", "x": 12, "i": i or f"{t}-{p}-{s}", "z": 3, "p": p, "s": s, "t": t, "q": t - M0}
    if c is not None:
        record["c"] = c
    return record | kw


def one_bar(trades: list[dict]) -> dict:
    bars = reference_bars(trades)
    assert bars.height == 1, bars
    return bars.row(0, named=True)


def test_regular_sales_make_a_plain_bar() -> None:
    bar = one_bar([trade(M0 + 1, 10.0, 100), trade(M0 + 2, 12.0, 300, [14]), trade(M0 + 3, 9.0, 100, [14, 41])])
    assert bar == {
        "symbol": "AAPL",
        "timestamp": M0,
        "open": 10.0,
        "high": 12.0,
        "low": 9.0,
        "close": 9.0,
        "volume": 500,
        "vwap": pytest.approx((1000 + 3600 + 900) / 500),
        "trades": 3,
    }


def test_odd_lot_37_and_average_price_2_update_volume_only() -> None:
    bar = one_bar([trade(M0 + 1, 10.0), trade(M0 + 2, 50.0, 10, [37]), trade(M0 + 3, 1.0, 200, [2]), trade(M0 + 4, 11.0)])
    assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (10.0, 11.0, 10.0, 11.0)
    assert bar["volume"] == 100 + 10 + 200 + 100
    assert bar["vwap"] == pytest.approx((1000 + 500 + 200 + 1100) / 410)
    assert bar["trades"] == 4


def test_derivatively_priced_10_sets_high_low_but_not_open_close() -> None:
    bar = one_bar([trade(M0 + 1, 20.0, 100, [10]), trade(M0 + 2, 10.0), trade(M0 + 3, 5.0, 100, [10])])
    assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (10.0, 20.0, 5.0, 10.0)
    assert (bar["volume"], bar["trades"]) == (300, 3)


def test_form_t_12_is_a_full_update_for_intraday_bars() -> None:
    bar = one_bar([trade(M0 + 1, 10.0, 100, [12]), trade(M0 + 2, 11.0), trade(M0 + 3, 8.0, 100, [12])])
    assert (bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"]) == (10.0, 11.0, 8.0, 8.0, 300)


def test_official_open_close_15_16_update_nothing() -> None:
    bar = one_bar([trade(M0 + 1, 10.0), trade(M0 + 2, 99.0, 5000, [15]), trade(M0 + 3, 0.5, 5000, [16])])
    assert (bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"], bar["trades"]) == (10.0, 10.0, 10.0, 10.0, 100, 1)
    assert reference_bars([trade(M1 + 5, 99.0, 5000, [15])]).height == 0, "no field updated => no bar"


def test_several_conditions_update_a_field_only_if_all_allow_it() -> None:
    bar = one_bar(
        [
            trade(M0 + 1, 10.0, 100, [14, 41]),  # all fields
            trade(M0 + 2, 30.0, 100, [10, 14]),  # high/low + volume
            trade(M0 + 3, 1.0, 50, [14, 37]),  # volume only
            trade(M0 + 4, 2.0, 20, [12, 37]),  # 37 vetoes Form T's prices
            trade(M0 + 5, 99.0, 100, [17, 32]),  # high/low + volume
            trade(M0 + 6, 50.0, 100, [2, 10]),  # volume only
        ]
    )
    assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (10.0, 99.0, 10.0, 10.0)
    assert (bar["volume"], bar["trades"]) == (470, 6)


def test_duplicates_count_once_and_the_id_includes_exchange_and_trf() -> None:
    first = trade(M0 + 1, 10.0, 100, i="7", x=4, trfi=201)
    bars = reference_bars(
        [
            first,
            dict(first),  # exact re-send
            first | {"p": 55.0, "s": 900},  # same id, different content: the first one counts
            first | {"trfi": 202},  # other TRF: another trade
            first | {"x": 12, "trfi": None},  # other exchange: another trade
            trade(M0 + 2, 10.0, 100, i="8", x=4),  # no trfi, still a trade
        ]
    )
    bar = bars.row(0, named=True)
    assert (bar["high"], bar["volume"], bar["trades"]) == (10.0, 400, 4)


def test_open_and_close_follow_trade_time_and_sequence_not_arrival() -> None:
    bar = one_bar(
        [
            trade(M0 + 30_000, 20.0, q=5),
            trade(M0 + 40_000, 30.0, q=9),
            trade(M0 + 1_000, 10.0, q=12),  # arrives late (out of order) but happened first
            trade(M0 + 40_000, 31.0, q=8),  # same ms as the close, smaller sequence
            trade(M0 + 50_000, 40.0, 100, [37], q=13),  # the last trade, but an odd lot
        ]
    )
    assert (bar["open"], bar["close"], bar["high"], bar["low"]) == (10.0, 30.0, 31.0, 10.0)


def test_a_minute_with_only_odd_lots_has_volume_but_no_prices() -> None:
    bars = reference_bars([trade(M0 + 1, 10.0), trade(M1 + 1, 10.5, 40, [37]), trade(M1 + 2, 10.7, 60, [37])])
    assert bars["timestamp"].to_list() == [M0, M1]
    bar = bars.row(1, named=True)
    assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (None, None, None, None)
    assert (bar["volume"], bar["trades"]) == (100, 2)
    assert bar["vwap"] == pytest.approx((420 + 642) / 100)


def test_a_minute_without_volume_trades_has_null_volume_and_vwap() -> None:
    bar = one_bar([trade(M0 + 1, 10.0, 100, [38])])  # corrected close: prices, no volume
    assert (bar["open"], bar["close"], bar["volume"], bar["vwap"], bar["trades"]) == (10.0, 10.0, None, None, 0)


def test_bars_are_per_symbol_and_minute_bucket() -> None:
    bars = reference_bars(
        [trade(M0 + 59_999, 10.0), trade(M1, 11.0), trade(M0 + 5, 50.0, sym="MSFT"), trade(M0 + 6, 51.0, sym="MSFT")]
    )
    assert bars.select("symbol", "timestamp", "open", "close").rows() == [
        ("AAPL", M0, 10.0, 10.0),
        ("AAPL", M1, 11.0, 11.0),
        ("MSFT", M0, 50.0, 51.0),
    ]
    assert dict(bars.schema) == dict(BAR_SCHEMA)


def test_an_unknown_condition_is_an_error() -> None:
    with pytest.raises(UnknownConditionError, match=r"\[99\]"):
        reference_bars([trade(M0 + 1, 10.0), trade(M0 + 2, 10.0, 100, [14, 99])])


def test_no_trades_no_bars() -> None:
    bars = reference_bars([])
    assert bars.height == 0 and bars.columns == list(BAR_SCHEMA)
