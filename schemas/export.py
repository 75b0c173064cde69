"""Write the JSON Schema of every record the system emits to `schemas/json/`.

python -m schemas.export          # rewrite the files
python -m schemas.export --check  # exit 1 if a file is stale (the tests run this)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import msgspec

from schemas.bars import Bar
from schemas.events import Alert, HighLowEvent, IndicatorValues, PatternEvent, SurgeEvent, TrendEvent
from schemas.prices import Price
from schemas.status import FlowError, FlowHealth
from schemas.watchlists import WatchlistChange

OUT = Path(__file__).with_name("json")

EMITTED: dict[str, type] = {
    "bar": Bar,
    "highlow": HighLowEvent,
    "trend": TrendEvent,
    "surge": SurgeEvent,
    "pattern": PatternEvent,
    "indicator": IndicatorValues,
    "alert": Alert,
    "health": FlowHealth,
    "error": FlowError,
    "watchlist": WatchlistChange,
    "price": Price,
}


def documents() -> dict[str, str]:
    """File name -> JSON Schema text, for every emitted record."""
    out = {}
    for name, record in EMITTED.items():
        schema = msgspec.json.schema(record)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://tickstock.dev/schemas/{name}.schema.json"
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if a committed schema file is stale")
    args = parser.parse_args(argv)
    stale = []
    OUT.mkdir(exist_ok=True)
    for name, text in documents().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale JSON Schemas: {', '.join(stale)}; run `python -m schemas.export`")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
