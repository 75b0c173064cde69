"""What the chaos test files share: the scenarios' environment on this worker's databases, and the verdict.

`python -m bench.chaos --profile short` is split over three test files (decoders; kill -9 and poison;
outages) so two xdist workers can run its parts side by side; each scenario needs only its
worker's own test database and the `_base` one beside it, topics and a Redis namespace of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.chaos.scenarios import SHORT, Environment, Scenario, run_scenario
from flows.settings import Settings
from tests.support.services import TEST_DATABASE_URL

SEED = 1


def chaos_environment(tmp_path_factory: pytest.TempPathFactory) -> Environment:
    s = Settings()
    head, _, name = TEST_DATABASE_URL.rpartition("/")
    env = Environment(bootstrap=s.kafka_bootstrap_servers, redis_url=s.redis_url, database_url=TEST_DATABASE_URL,
                      baseline_database_url=f"{head}/{name}_base", workdir=tmp_path_factory.mktemp("chaos"), seed=SEED,
                      log=lambda line: print(line, flush=True))  # fmt: skip
    env.prepare()
    return env


def _explain(outcome: dict[str, Any]) -> str:
    keep = ("problems", "bars_lost", "bars_duplicated", "bars_unexpected", "bar_examples", "crash_details", "dead_letters",
            "dead_letters_expected", "dead_letter_details", "redis", "detection", "faults", "logs")  # fmt: skip
    return json.dumps({k: outcome[k] for k in keep}, indent=1, default=str)[:6000]


def assert_scenario_holds(spec: Scenario, env: Environment) -> None:
    """Run `spec` on the short profile: the feed is big enough, every planned fault happened, nothing went wrong."""
    outcome = run_scenario(spec, SHORT, env)
    assert outcome["bars_expected"] > 100 and outcome["input_records"] > 3000, "the feed is big enough to mean something"
    if spec.fault == "kill9":
        assert len(outcome["faults"]) == len(spec.kill), "every flow was killed"
    assert outcome["ok"], f"{spec.name}: {_explain(outcome)}"
    assert Path(outcome["logs"]).is_dir()
