"""The short version of `make chaos`: a broker, PostgreSQL or Redis outage on a live feed.

Each a TCP proxy in front of the service (the broker a private Tansu advertising the proxy) that
resets every connection and refuses new ones for a few seconds, during a ~20 s live synthetic feed
while both flows tail their topics: the table must equal the independent oracle over exactly the
records published, Redis the table, the dead letters what each bad record deserves, and (broker)
the detection tables an uninterrupted run's. The kill -9 and poison scenarios are in test_chaos.py.
"""

from __future__ import annotations

import pytest

from bench.chaos.scenarios import SHORT, Environment, Scenario, scenarios
from tests.support.chaos import assert_scenario_holds, chaos_environment

pytestmark = [pytest.mark.integration, pytest.mark.cost(90)]

OUTAGES = [s for s in scenarios(SHORT) if s.fault in ("broker", "postgres", "redis")]


@pytest.fixture(scope="module")
def chaos_env(services: None, tmp_path_factory: pytest.TempPathFactory) -> Environment:
    return chaos_environment(tmp_path_factory)


@pytest.mark.parametrize("spec", OUTAGES, ids=lambda s: s.name)
def test_chaos_scenario_loses_doubles_and_crashes_nothing(chaos_env: Environment, spec: Scenario) -> None:
    assert_scenario_holds(spec, chaos_env)
