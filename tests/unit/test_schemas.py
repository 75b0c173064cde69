"""Emitted records validate against their exported JSON Schemas, and the files are current."""

from __future__ import annotations

import json

import jsonschema
import pytest

from schemas.bars import Bar, encode_bar
from schemas.export import OUT, documents, main


def test_exported_schemas_are_current():
    assert main(["--check"]) == 0


@pytest.mark.parametrize(
    "bar",
    [
        Bar(
            symbol="AAPL",
            timestamp=1_793_629_800_000,
            open=1.0,
            high=2.0,
            low=0.5,
            close=1.5,
            volume=10,
            vwap=1.2,
            trades=2,
            revision=0,
            status="final",
        ),
        Bar(
            symbol="AAPL",
            timestamp=1_793_629_800_000,
            open=None,
            high=None,
            low=None,
            close=None,
            volume=10,
            vwap=1.2,
            trades=2,
            revision=3,
            status="live",
        ),
    ],
)
def test_bar_payload_validates(bar):
    schema = json.loads((OUT / "bar.schema.json").read_text())
    jsonschema.validate(json.loads(encode_bar(bar)), schema)


def test_schema_rejects_a_bar_without_symbol():
    schema = json.loads(documents()["bar.schema.json"])
    payload = json.loads(
        encode_bar(
            Bar(
                symbol="A",
                timestamp=1_793_629_800_000,
                open=1.0,
                high=1.0,
                low=1.0,
                close=1.0,
                volume=1,
                vwap=1.0,
                trades=1,
                revision=0,
                status="final",
            )
        )
    )
    del payload["symbol"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, schema)
