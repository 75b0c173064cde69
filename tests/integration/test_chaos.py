"""The short version of `make chaos`: hostile input for every decoder, and each chaos scenario on a live feed.

Fuzzing: 20,000 mutated records and 300 hypothesis examples per decoder; none may escape as an
exception, and none may leave an output the pipeline cannot live with (see `bench.chaos.fuzz`).
Scenarios (`bench.chaos.scenarios.SHORT`): a ~20 s live synthetic feed while both flows tail their
topics with recovery stores, with one kill -9 of each flow, a 5 s broker / PostgreSQL / Redis
outage behind a TCP proxy, or poison records of every class mixed in; the table must equal the
independent oracle over exactly the records published, Redis the table, the dead letters what
each bad record deserves, and (kill -9, poison) the detection tables an uninterrupted run's.
`python -m bench.chaos --profile short` runs the same as a command and writes the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import fuzz
from bench.chaos.scenarios import SHORT, Environment, run_scenario, scenarios
from flows.settings import Settings
from tests.support.services import TEST_DATABASE_URL

pytestmark = pytest.mark.integration

SEED = 1
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
    fuzz.fuzz_target(target, SHORT.fuzz_records, SHORT.fuzz_examples, SEED)
    tally = target.tally
    assert tally.records >= SHORT.fuzz_records
    assert tally.accepted > 0 and tally.refused > 0, "the fuzz reaches both sides of the decoder"
    assert tally.crashes == 0, f"{tally.crashes} of {tally.records} records raised out of {name}: {_summary(tally)}"
    assert tally.violations == 0, f"{tally.violations} outputs of {name} the pipeline cannot use: {_summary(tally)}"
    if isinstance(target, fuzz.BarsOfTarget):  # the bars it accepted went on to the detectors
        detector = target.detector.tally
        assert detector.records > 0
        assert detector.crashes == 0, f"{detector.crashes} bars raised out of BarDetector.on_bar: {_summary(detector)}"


@pytest.fixture(scope="module")
def chaos_env(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    s = Settings()
    head, _, name = TEST_DATABASE_URL.rpartition("/")
    env = Environment(bootstrap=s.kafka_bootstrap_servers, redis_url=s.redis_url, database_url=TEST_DATABASE_URL,
                      baseline_database_url=f"{head}/{name}_base", workdir=tmp_path_factory.mktemp("chaos"), seed=SEED,
                      log=lambda line: print(line, flush=True))  # fmt: skip
    env.prepare()
    yield env


def _explain(outcome: dict[str, Any]) -> str:
    keep = ("problems", "bars_lost", "bars_duplicated", "bars_unexpected", "bar_examples", "crash_details", "dead_letters",
            "dead_letters_expected", "dead_letter_details", "redis", "detection", "faults", "logs")  # fmt: skip
    return json.dumps({k: outcome[k] for k in keep}, indent=1, default=str)[:6000]


@pytest.mark.parametrize("spec", scenarios(SHORT), ids=lambda s: s.name)
def test_chaos_scenario_loses_doubles_and_crashes_nothing(chaos_env: Environment, spec: Any) -> None:
    outcome = run_scenario(spec, SHORT, chaos_env)
    assert outcome["bars_expected"] > 100 and outcome["input_records"] > 3000, "the feed is big enough to mean something"
    if spec.fault == "kill9":
        assert len(outcome["faults"]) == len(spec.kill), "every flow was killed"
    assert outcome["ok"], f"{spec.name}: {_explain(outcome)}"
    assert Path(outcome["logs"]).is_dir()
