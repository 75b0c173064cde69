"""The short version of `make chaos`, its fuzzing: hostile input for every decoder.

8,000 mutated records and 150 hypothesis examples per decoder (`SHORT`; with TICKSTOCK_HYPOTHESIS=deep
the full run's 100,000 and 2,000); none may escape as an exception, and none may leave an output the
pipeline cannot live with (see `bench.chaos.fuzz`). The live scenarios are in test_chaos.py and
test_chaos_outages.py.
"""

from __future__ import annotations

import json

import pytest

from bench.chaos import fuzz
from bench.chaos.scenarios import FULL, SHORT
from tests.support.chaos import SEED
from tests.support.examples import examples

pytestmark = [pytest.mark.integration, pytest.mark.cost(60)]

RECORDS = examples(SHORT.fuzz_records, deep=FULL.fuzz_records)
EXAMPLES = examples(SHORT.fuzz_examples, deep=FULL.fuzz_examples)
DECODERS = [
    "book.apply(trades)", "book.apply(second_aggs)", "detection.BarGate", "gateway.decode_client",
    "gateway.ChannelMap.parse", "bridge.split_frame", "bridge.Bridge.on_frame", "schemas.polygon.decode_event",
    "schemas.polygon.decode_events", "schemas.bars.decode_bar", "replay.flat_file_events",
]  # fmt: skip


@pytest.fixture(scope="module")
def targets() -> dict[str, fuzz.Target]:
    return {t.name: t for t in fuzz.targets(fuzz.Seeds())}


def test_every_decoder_that_takes_outside_data_is_fuzzed(targets: dict[str, fuzz.Target]) -> None:
    assert set(DECODERS) | {"detection.on_bar"} == set(targets)


def _summary(tally: fuzz.Tally) -> str:
    return json.dumps({"crash_kinds": tally.crash_kinds, "violation_kinds": tally.violation_kinds,
                       "examples": tally.examples}, indent=1, default=str)[:4000]  # fmt: skip


@pytest.mark.parametrize("name", DECODERS)
def test_no_record_escapes_a_decoder(targets: dict[str, fuzz.Target], name: str) -> None:
    target = targets[name]
    fuzz.fuzz_target(target, RECORDS, EXAMPLES, SEED)
    tally = target.tally
    assert tally.records >= RECORDS
    assert tally.accepted > 0 and tally.refused > 0, "the fuzz reaches both sides of the decoder"
    assert tally.crashes == 0, f"{tally.crashes} of {tally.records} records raised out of {name}: {_summary(tally)}"
    assert tally.violations == 0, f"{tally.violations} outputs of {name} the pipeline cannot use: {_summary(tally)}"
    if isinstance(target, fuzz.BarsOfTarget):  # the bars it accepted went on to the detectors
        detector = target.detector.tally
        assert detector.records > 0
        assert detector.crashes == 0, f"{detector.crashes} bars raised out of BarDetector.on_bar: {_summary(detector)}"
