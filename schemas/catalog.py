"""Write the Redis channel catalog, docs/channels.md, from schemas/channels.py and the records.

    python -m schemas.catalog          # rewrite docs/channels.md
    python -m schemas.catalog --check  # exit 1 if it is stale (the tests run this)

For every channel of `CATALOG`: its name, publisher, what flows on it, the JSON Schema of its
payload *as published* (the record plus the `offset` and `epoch` the publisher adds) and an
example payload.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec

from schemas.bars import Bar
from schemas.channels import CATALOG, Channels, ChannelSpec
from schemas.events import (
    Alert,
    HighLowEvent,
    IndicatorValues,
    PatternEvent,
    SurgeEvent,
    TrendEvent,
    stable_id,
)
from schemas.prices import Price
from schemas.status import FlowError, FlowHealth
from schemas.watchlists import WatchlistChange

OUT = Path(__file__).resolve().parents[1] / "docs" / "channels.md"
EPOCH = "1793629800123456"
T = 1_793_629_860_000  # 2026-11-02 14:31 UTC

POSITION_SCHEMA = {
    "offset": {
        "type": "integer",
        "minimum": 1,
        "description": "position in this channel: 1, 2, 3, ... with no gaps (per channel)",
    },
    "epoch": {"type": "string", "description": "the channel history's generation; a new epoch means the history was lost"},
}

EXAMPLES: dict[type, Any] = {
    Bar: Bar(
        symbol="AAPL",
        timestamp=T,
        open=190.12,
        high=190.5,
        low=190.02,
        close=190.44,
        volume=48211,
        vwap=190.2718,
        trades=311,
        revision=0,
        status="final",
    ),
    HighLowEvent: HighLowEvent(
        id=stable_id("highlow", "AAPL", T + 1234, "session_high"),
        type="session_high",
        symbol="AAPL",
        timestamp=T + 1234,
        confidence=1.0,
        direction="up",
        params={"cooldown_s": 1.0, "n_days": 20, "min_move": 0.1},
        price=190.6,
        previous=190.5,
        session="2026-11-02",
    ),
    TrendEvent: TrendEvent(
        id=stable_id("trend", "AAPL", "1m", T),
        type="trend_start",
        symbol="AAPL",
        timestamp=T,
        confidence=0.72,
        direction="up",
        params={"bars": 10, "min_strength": 0.7},
        strength=0.72,
        slope=0.031,
        close=190.44,
    ),
    SurgeEvent: SurgeEvent(
        id=stable_id("surge", "AAPL", "1m", T, "volume_surge"),
        type="volume_surge",
        symbol="AAPL",
        timestamp=T,
        confidence=0.9,
        direction="up",
        params={"volume_multiple": 3.0, "volume_bars": 20},
        ratio=4.2,
        close=190.44,
        volume=48211,
    ),
    PatternEvent: PatternEvent(
        id=stable_id("pattern", "AAPL", "1m", T, "doji"),
        type="doji",
        symbol="AAPL",
        timestamp=T,
        confidence=0.86,
        direction="neutral",
        params={"talib": "CDLDOJI", "bars": 14},
        signal=100,
    ),
    IndicatorValues: IndicatorValues(
        id=stable_id("indicator", "AAPL", "1m", T),
        symbol="AAPL",
        timestamp=T,
        confidence=1.0,
        direction="neutral",
        params={
            "sma": 20,
            "ema": 20,
            "rsi": 14,
            "macd_fast": 12,
            "macd_slow": 26,
            "macd_signal": 9,
            "bb_period": 20,
            "bb_stddev": 2.0,
            "atr": 14,
            "window": 400,
        },
        sma=189.9,
        ema=190.0,
        rsi=61.2,
        macd=0.21,
        macd_signal=0.15,
        macd_hist=0.06,
        bb_upper=191.2,
        bb_middle=189.9,
        bb_lower=188.6,
        atr=0.42,
        vwap=190.05,
    ),
    Alert: Alert(
        id=stable_id("alert", "AAPL", "1m", T, "rsi_overbought"),
        type="rsi_overbought",
        symbol="AAPL",
        timestamp=T,
        confidence=1.0,
        direction="up",
        params={"rsi_period": 14, "rsi_upper": 70.0, "rsi_lower": 30.0},
        severity="warning",
        indicator="rsi",
        value=71.3,
        threshold=70.0,
        message="RSI crossed above 70 (71.3)",
    ),
    FlowHealth: FlowHealth(
        partition="stocks.trades#0",
        timestamp=T + 5_000,
        status="healthy",
        received=1_204_331,
        events_per_s=512.4,
        final_bars=38_112,
        open_bars=993,
        dropped=12,
        duplicates=230,
        revisions=41,
        watermark=T + 4_800,
        watermark_lag_s=0.2,
    ),
    FlowError: FlowError(
        timestamp=T + 5_000,
        error="too_late",
        reason="trade at 1793628000000 ms is 1742 s past its "
        "minute's end, beyond the allowed lateness of 900 s (watermark 1793629802000 ms)",
        source_topic="stocks.trades",
        source_partition=0,
        source_offset=1_204_118,
    ),
    WatchlistChange: WatchlistChange(user="alice", name="tech", symbols=["AAPL", "MSFT", "NVDA"], revision=42),
    Price: Price(
        symbol="AAPL",
        price=190.58,
        size=100,
        timestamp=T + 59_412,
        session="2026-11-02",
        open=188.9,
        change=1.68,
        change_pct=0.8894,
    ),
}


def _members(payload: Any) -> tuple[type, ...]:
    return tuple(getattr(payload, "__args__", None) or (payload,))


def published_schema(payload: Any) -> dict:
    """The payload's JSON Schema with the channel position every published message carries."""
    schema = msgspec.json.schema(payload)
    defs = schema.get("$defs", {})
    for member in _members(payload):
        target = defs[member.__name__]
        target["properties"] = {**POSITION_SCHEMA, **target["properties"]}
        target["required"] = ["offset", "epoch", *target.get("required", [])]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


LIVE_BAR = Bar(
    symbol="AAPL",
    timestamp=T + 60_000,
    open=190.44,
    high=190.61,
    low=190.4,
    close=190.58,
    volume=9_310,
    vwap=190.5127,
    trades=57,
    revision=0,
    status="live",
)
"""A forming bar (live channels): the minute after the final example's, part-way through."""


COARSE = {"timeframe": "5m", "timestamp": T - 60_000, "volume": 221_930, "trades": 1_402}
"""A coarser bar (the per-timeframe channels): the 5-minute bucket of the examples' minutes."""


def example(payload: Any, offset: int, live: bool = False, coarse: bool = False) -> dict:
    record = LIVE_BAR if live else EXAMPLES[_members(payload)[-1] if len(_members(payload)) > 1 else payload]
    if coarse:
        record = msgspec.structs.replace(record, **COARSE)
    return {"offset": offset, "epoch": EPOCH, **msgspec.to_builtins(record)}


def _section(spec: ChannelSpec, channels: Channels, n: int) -> str:
    name = spec.name(channels)
    members = ", ".join(f"`{m.__name__}`" for m in _members(spec.payload))
    lines = [
        f"### `{name}`",
        "",
        f"- **What**: {spec.what}.",
        f"- **Publisher**: {spec.publisher}.",
        f"- **Payload**: {members} ({'one of, tagged by `kind`' if len(_members(spec.payload)) > 1 else 'schemas/'}"
        f"{'' if len(_members(spec.payload)) > 1 else _module(spec.payload)}).",
        "",
        "Example:",
        "",
        "```json",
        json.dumps(
            example(spec.payload, 1842 + n, live=spec.attribute.startswith("live"), coarse=spec.per_timeframe),
            separators=(",", ":"),
        ),
        "```",
        "",
        "<details><summary>JSON Schema</summary>",
        "",
        "```json",
        json.dumps(published_schema(spec.payload), indent=2, sort_keys=True),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def _module(payload: type) -> str:
    return payload.__module__.split(".")[-1] + ".py"


def document() -> str:
    channels = Channels()
    rows = [
        f"| `{s.name(channels)}` | {', '.join(m.__name__ for m in _members(s.payload))} | {s.publisher} | {s.what} |"
        for s in CATALOG
    ]
    head = """# Redis channel catalog

Generated by `python -m schemas.catalog` from `schemas/channels.py` and the records in `schemas/`;
do not edit by hand (`python -m schemas.catalog --check` runs in the tests).

Names are shown under the default namespace `tickstock` (`REDIS_NAMESPACE`); `{SYMBOL}` stands
for one ticker (e.g. `tickstock.market.ohlcv.AAPL`). Payloads are flat, versioned JSON objects
(`version`), validated by the JSON Schemas below (also in `schemas/json/`, without the position).

**Every message carries its channel position**, added by the publisher
(`connectors/redis/publish.py` through `connectors/redis/history.py`) as its first two fields:

- `offset`: 1, 2, 3, ... per channel with no gaps, so a consumer detects a gap by arithmetic;
- `epoch`: the generation of the channel's history; it changes when the history was lost
  (Redis restarted without persistence, keys expired), and positions of another epoch are void.

Each message is also appended to the stream `history:{channel}` (capped by
`REDIS_HISTORY_MAX_LEN` messages and `REDIS_HISTORY_MAX_AGE_S` seconds). A consumer that
reconnects asks `History.since(channel, epoch, offset)` (or the gateway, with `positions` in
its `subscribe`) and gets every message it missed, or an explicit "incomplete: reset" when they
are gone. Delivery is at least once: a publish retried after a lost reply repeats under a new
offset; bars carry `revision` and events a stable `id` for that reason.

**Events follow corrections.** The detection channels carry the records of every detected
timeframe (`timeframe`: 1m, 5m, 15m, 1h, 1d; `DETECT_TIMEFRAMES`). When a revision changes a bar
that a trend, surge, pattern or alert was decided on (or a later bar's decision read), the
decision is made again and the record goes out again on the same channels under the same `id`:
`status` `amended` (it still holds, with the fields as they are now) or `retracted` (it no longer
holds; the fields are what was retracted), with a higher `revision`; a newly qualifying one is
`detected`. Keep, per `id`, the record of the highest `revision`. High/low events and indicator
values are always `detected` (indicator values are simply sent again for the revised bars).

| channel | payload | publisher | what |
|---|---|---|---|
"""
    body = "\n".join(rows) + "\n\n## Channels\n\n"
    body += "\n".join(_section(s, channels, n) for n, s in enumerate(CATALOG))
    tail = """## Not in the catalog

- `history:{channel}` (stream) and `history-meta:{channel}` (hash): the catch-up history itself.
- `{namespace}:gateway:probe:{id}`: each gateway process's private lag probe (a float timestamp).
"""
    return head + body + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if docs/channels.md is stale")
    args = parser.parse_args(argv)
    text = document()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale; run `python -m schemas.catalog`")
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
