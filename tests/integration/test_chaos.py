"""The short version of `make chaos`, its live part: kill -9 of each flow, and poison records, on a live feed.

Scenarios (`bench.chaos.scenarios.SHORT`): a ~20 s live synthetic feed while both flows tail their
topics with recovery stores, with one kill -9 of each flow, or poison records of every class mixed
in; the table must equal the independent oracle over exactly the records published, Redis the
table, the dead letters what each bad record deserves, and the detection tables an uninterrupted
run's. The outages are in test_chaos_outages.py, the decoders' fuzzing in test_chaos_fuzz.py (files
of their own, so the two xdist workers share them). `python -m bench.chaos --profile short` runs
all of it as a command and writes the numbers.
"""

from __future__ import annotations

import pytest

from bench.chaos.scenarios import SHORT, Environment, Scenario, scenarios
from tests.support.chaos import assert_scenario_holds, chaos_environment

pytestmark = [pytest.mark.integration, pytest.mark.cost(90)]

LIVE = [s for s in scenarios(SHORT) if s.fault in ("kill9", "poison")]


@pytest.fixture(scope="module")
def chaos_env(services: None, tmp_path_factory: pytest.TempPathFactory) -> Environment:
    return chaos_environment(tmp_path_factory)


def test_every_scenario_of_the_short_profile_is_run_by_one_of_the_chaos_files() -> None:
    outages = {"broker", "postgres", "redis"}  # test_chaos_outages.py
    assert {s.fault for s in scenarios(SHORT)} == {s.fault for s in LIVE} | outages


@pytest.mark.parametrize("spec", LIVE, ids=lambda s: s.name)
def test_chaos_scenario_loses_doubles_and_crashes_nothing(chaos_env: Environment, spec: Scenario) -> None:
    assert_scenario_holds(spec, chaos_env)
