"""Reference 1-minute bars from trades, computed independently with polars.

This is the oracle the flow's bars are compared against, so it shares no code with `flows/`:
it only reads the same data, the consolidated condition table `schemas/conditions.csv`.

Semantics (Polygon's consolidated update rules, see the brief):
- trades are de-duplicated on (sym, x, i, trfi), keeping the first;
- a trade updates a field only if every one of its conditions allows it; no condition = regular
  sale; Form T (12) also updates high/low and open/close for intraday bars; an unknown code raises;
- open/close = price of the smallest/largest (t, q) among open/close-updating trades,
  high/low over high/low-updating trades, volume/vwap/trades over volume-updating trades;
- a bar exists if any of its trades updates any field; fields without a qualifying trade are null
  (volume too); `trades` counts volume-updating trades (0, not null, when there are none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

RULES_CSV = Path(__file__).resolve().parents[2] / "schemas" / "conditions.csv"
INTRADAY_FULL_UPDATE = (12,)  # Form T: volume-only in the table, but intraday bars include its prices
MINUTE_MS = 60_000

TRADE_SCHEMA: Mapping[str, pl.DataType] = {
    "sym": pl.String(),
    "x": pl.Int64(),
    "i": pl.String(),
    "z": pl.Int64(),
    "p": pl.Float64(),
    "s": pl.Int64(),
    "c": pl.List(pl.Int64()),
    "t": pl.Int64(),
    "q": pl.Int64(),
    "trfi": pl.Int64(),
}
BAR_SCHEMA: Mapping[str, pl.DataType] = {
    "symbol": pl.String(),
    "timestamp": pl.Int64(),  # bar start, epoch ms
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Int64(),
    "vwap": pl.Float64(),
    "trades": pl.Int64(),
}
FLAGS = {"hl": "updates_high_low", "oc": "updates_open_close", "vol": "updates_volume"}


class UnknownConditionError(ValueError):
    """A trade carries a sale condition the rule table does not define."""


def update_rules(path: Path = RULES_CSV) -> pl.DataFrame:
    """Condition code -> hl/oc/vol booleans, with the intraday Form T exception applied."""
    table = pl.read_csv(path, schema_overrides={"id": pl.Int64, **dict.fromkeys(FLAGS.values(), pl.Boolean)})
    full = pl.col("id").is_in(INTRADAY_FULL_UPDATE)
    return table.select(
        pl.col("id").alias("code"),
        *(pl.when(full).then(True).otherwise(pl.col(column)).alias(flag) for flag, column in FLAGS.items()),
    )


def trade_frame(trades: Sequence[Mapping[str, Any]] | pl.DataFrame) -> pl.DataFrame:
    """Decoded trades (Polygon wire names) as a typed frame; optional fields may be absent."""
    if not isinstance(trades, pl.DataFrame):
        trades = pl.from_dicts(list(trades), schema=dict(TRADE_SCHEMA))
    missing = [name for name in TRADE_SCHEMA if name not in trades.columns]
    trades = trades.with_columns(pl.lit(None, dtype=TRADE_SCHEMA[name]).alias(name) for name in missing)
    return trades.select(pl.col(name).cast(dtype) for name, dtype in TRADE_SCHEMA.items()).with_columns(
        pl.col("c").fill_null([]),
        pl.col("q").fill_null(0),  # the wire omits a zero sequence
    )


def with_update_flags(trades: pl.DataFrame, rules: pl.DataFrame) -> pl.DataFrame:
    """Adds hl/oc/vol: a trade may update a field only if all its conditions allow it."""
    codes = rules["code"]
    used = trades.select(pl.col("c").explode().drop_nulls().unique())["c"]
    unknown = sorted(used.filter(~used.is_in(codes.implode())).to_list())
    if unknown:
        raise UnknownConditionError(f"sale conditions not in the rule table: {unknown}")
    return trades.with_columns(
        pl.col("c")
        .list.eval(pl.element().replace_strict(codes, rules[flag], return_dtype=pl.Boolean))
        .list.all()  # empty list (regular sale) -> true
        .alias(flag)
        for flag in FLAGS
    )


def reference_bars(
    trades: Sequence[Mapping[str, Any]] | pl.DataFrame, interval_ms: int = MINUTE_MS, rules_csv: Path = RULES_CSV
) -> pl.DataFrame:
    """OHLCV bars (BAR_SCHEMA) of `interval_ms` (1 minute; 1000 checks per-second `A` events)."""
    frame = trade_frame(trades).unique(subset=["sym", "x", "i", "trfi"], keep="first", maintain_order=True)
    flagged = with_update_flags(frame, update_rules(rules_csv))
    hl, oc, vol = pl.col("hl"), pl.col("oc"), pl.col("vol")
    price, size = pl.col("p"), pl.col("s")
    by_time = [pl.col("t").filter(oc), pl.col("q").filter(oc)]
    bars = (
        flagged.filter(hl | oc | vol)
        .with_columns(timestamp=pl.col("t") - pl.col("t") % interval_ms)
        .group_by(pl.col("sym").alias("symbol"), "timestamp")
        .agg(
            open=price.filter(oc).sort_by(by_time, maintain_order=True).first(),
            high=price.filter(hl).max(),
            low=price.filter(hl).min(),
            close=price.filter(oc).sort_by(by_time, maintain_order=True).last(),
            volume=pl.when(vol.any()).then(size.filter(vol).sum()),
            notional=(price * size).filter(vol).sum(),
            trades=vol.sum(),
        )
        .with_columns(vwap=pl.when(pl.col("volume") > 0).then(pl.col("notional") / pl.col("volume")))
    )
    return bars.select(pl.col(name).cast(dtype) for name, dtype in BAR_SCHEMA.items()).sort("symbol", "timestamp")
