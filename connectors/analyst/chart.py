"""Bars (and events) as a candlestick chart with a volume pane, drawn by matplotlib, written as a PNG.

Pure of the database: it takes DataFrames with the analyst API's columns (`connectors.postgres.analyst`
SCHEMA / SESSION_SCHEMA for bars, EVENT_SCHEMA for events) from wherever they come. Candles are placed
one per slot in time order (no gaps for nights and weekends, as traders read them), the time axis
labelled in UTC. A minute with volume but no prices (volume-only trades) has a grey volume bar and no
candle. An event is marked on the bar it falls in: a triangle up below it (direction up), down above
it (down), a circle at its price otherwise. Uses matplotlib's object API with the Agg canvas (no
pyplot, no global state, no display needed).
"""

from __future__ import annotations

from typing import BinaryIO, Final

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

UP: Final = "#26a69a"  # close >= open
DOWN: Final = "#ef5350"
NO_PRICE: Final = "#9e9e9e"
MARK_UP: Final = "#2962ff"
MARK_DOWN: Final = "#ff6d00"
MARK_OTHER: Final = "#8e24aa"
MAX_BARS: Final = 5000  # beyond, candles are thinner than a pixel at any useful size
SIZE_PX: Final = (1200, 700)
DPI: Final = 100


class ChartError(ValueError):
    """The frames cannot be drawn as asked (no bars, too many, missing columns)."""


def candlestick_figure(bars: pl.DataFrame, events: pl.DataFrame | None = None, *, title: str = "") -> Figure:
    """A figure of `bars` (one symbol, oldest first or not) with a volume pane and `events` marked."""
    missing = {"timestamp", "open", "high", "low", "close", "volume"} - set(bars.columns)
    if missing:
        raise ChartError(f"bars lack column(s) {', '.join(sorted(missing))}")
    if bars.height == 0:
        raise ChartError("no bars to draw")
    if bars.height > MAX_BARS:
        raise ChartError(
            f"{bars.height} bars are too many to draw (at most {MAX_BARS}): narrow the range or use a coarser timeframe"
        )
    if "symbol" in bars.columns and bars["symbol"].n_unique() > 1:
        raise ChartError(f"bars of {bars['symbol'].n_unique()} symbols: a chart shows one")
    bars = bars.sort("timestamp")
    x = np.arange(bars.height, dtype=float)
    o, h, lo, c = (bars[k].cast(pl.Float64).to_numpy() for k in ("open", "high", "low", "close"))
    volume = bars["volume"].cast(pl.Float64).fill_null(0).to_numpy()
    priced = ~(np.isnan(o) | np.isnan(c) | np.isnan(h) | np.isnan(lo))
    rising = priced & (c >= o)
    falling = priced & (c < o)

    figure = Figure(figsize=(SIZE_PX[0] / DPI, SIZE_PX[1] / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.05, left=0.07, right=0.98, top=0.94, bottom=0.1)
    prices = figure.add_subplot(grid[0])
    volumes = figure.add_subplot(grid[1], sharex=prices)
    width = 0.7
    for mask, colour in ((rising, UP), (falling, DOWN)):
        if mask.any():
            prices.vlines(x[mask], lo[mask], h[mask], colors=colour, linewidth=1)
            body = np.maximum(np.abs(c[mask] - o[mask]), (np.nanmax(h) - np.nanmin(lo)) * 0.002 if priced.any() else 0)
            prices.bar(x[mask], body, width, bottom=np.minimum(o[mask], c[mask]), color=colour, linewidth=0)
    for mask, colour in ((rising, UP), (falling, DOWN), (~priced, NO_PRICE)):
        if mask.any():
            volumes.bar(x[mask], volume[mask], width, color=colour, linewidth=0)
    if events is not None and events.height:
        _mark(prices, bars, events, h, lo, priced)
    prices.set_title(title, loc="left", fontsize=11)
    prices.set_ylabel("price")
    volumes.set_ylabel("volume")
    prices.tick_params(labelbottom=False)
    prices.set_axisbelow(True)
    volumes.set_axisbelow(True)
    prices.grid(True, color="#eeeeee", linewidth=0.5)
    volumes.grid(True, color="#eeeeee", linewidth=0.5)
    prices.set_xlim(-1, bars.height)
    volumes.set_ylim(0, max(float(volume.max()), 1.0) * 1.05)
    ticks = np.unique(np.linspace(0, bars.height - 1, num=min(8, bars.height)).round().astype(int))
    labels = bars["timestamp"].dt.strftime("%Y-%m-%d %H:%M").to_list()
    volumes.set_xticks(ticks, [labels[i] for i in ticks], fontsize=8)
    return figure


def _mark(prices, bars: pl.DataFrame, events: pl.DataFrame, h: np.ndarray, lo: np.ndarray, priced: np.ndarray) -> None:
    """Each event on the bar whose slot holds its time (the last bar starting at or before it)."""
    starts = bars["timestamp"].dt.epoch("us").to_numpy()
    when = events["timestamp"].dt.epoch("us").to_numpy()
    slot = np.searchsorted(starts, when, side="right") - 1
    inside = (slot >= 0) & (when >= starts[0])
    direction = events["direction"].fill_null("").to_list() if "direction" in events.columns else [""] * events.height
    price = events["price"].cast(pl.Float64).to_numpy() if "price" in events.columns else np.full(events.height, np.nan)
    span = float(np.nanmax(h) - np.nanmin(lo)) if priced.any() else 1.0
    pad = span * 0.03 or 1.0
    for i in np.flatnonzero(inside):
        s = int(slot[i])
        if not priced[s] and np.isnan(price[i]):
            continue
        if direction[i] == "up":
            prices.plot(s, (lo[s] if priced[s] else price[i]) - pad, marker="^", color=MARK_UP, markersize=9, linestyle="")
        elif direction[i] == "down":
            prices.plot(s, (h[s] if priced[s] else price[i]) + pad, marker="v", color=MARK_DOWN, markersize=9, linestyle="")
        else:
            y = price[i] if not np.isnan(price[i]) else (h[s] + lo[s]) / 2
            prices.plot(s, y, marker="o", color=MARK_OTHER, markersize=7, linestyle="")


def write_png(figure: Figure, out: BinaryIO) -> None:
    """Render `figure` as a PNG of SIZE_PX into `out`."""
    figure.savefig(out, format="png", dpi=DPI)
