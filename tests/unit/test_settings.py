"""Settings live beside their clients and are composed; one rule per shared variable, everywhere."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from connectors.gateway.settings import GatewaySettings
from connectors.kafka.settings import KafkaSettings
from connectors.postgres.settings import PostgresSettings
from connectors.redis.settings import RedisSettings
from connectors.settings import SettingsError, load
from flows.settings import Settings


@pytest.mark.parametrize("name", [".", "..", "", "a b", "x" * 250, "a/b", "ä"])
def test_a_name_kafka_refuses_is_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="not a Kafka topic name"):
        KafkaSettings(topic_trades=name)


@pytest.mark.parametrize("name", ["...", "a.b", "stocks.trades", "x" * 249, "A_b-1"])
def test_a_name_kafka_takes_is_taken(name: str) -> None:
    assert KafkaSettings(topic_trades=name).topic_trades == name


def test_the_flows_settings_are_the_clients_settings_composed() -> None:
    for part in (KafkaSettings, PostgresSettings, RedisSettings):
        assert issubclass(Settings, part)
        assert set(part.model_fields) <= set(Settings.model_fields)


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("REDIS_URL", "http://x", "redis://"),
        ("DATABASE_URL", "a b c", "PostgreSQL connection string"),
        ("REDIS_NAMESPACE", "a*b", "not a Redis namespace"),
        ("REDIS_URL", " ", "must not be empty"),
    ],
)
def test_the_gateway_and_the_flows_judge_a_shared_variable_alike(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=problem):
        load(Settings)
    with pytest.raises(ValidationError, match=problem):
        GatewaySettings()


def test_the_gateway_reads_the_pipelines_variables_or_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://shared:6379/0")
    assert GatewaySettings().redis_url == "redis://shared:6379/0"
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://own:6379/0")
    assert GatewaySettings().redis_url == "redis://own:6379/0"


@pytest.mark.parametrize("value", ["/no/such/folder/stages.jsonl", "x" * 5000 + "/stages.jsonl"])
def test_the_stage_log_refuses_a_file_it_could_not_open_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("STAGE_LOG", value)
    with pytest.raises(SettingsError, match="STAGE_LOG"):
        load(Settings)


def test_the_stage_log_is_off_unless_set_and_marks_one_json_line_each(monkeypatch, tmp_path):
    import msgspec

    from connectors.sinks import stages

    assert load(Settings).stage_log is None
    monkeypatch.setenv("STAGE_LOG", str(tmp_path / "stages.jsonl"))
    path = load(Settings).stage_log
    assert path == tmp_path / "stages.jsonl"
    monkeypatch.setattr(stages, "_file", None)
    stages.open_log(path)
    try:
        stages.mark("closed", minute=60_000)
        stages.mark("sink_in", items=3)
    finally:
        stages._file.close()  # type: ignore[union-attr]  # opened just above
        stages.gc.callbacks.remove(stages._on_gc)
        monkeypatch.setattr(stages, "_file", None)
    lines = [msgspec.json.decode(line) for line in path.read_bytes().splitlines()]
    assert [(line["stage"], line.get("minute"), line.get("items")) for line in lines] == [
        ("closed", 60000, None),
        ("sink_in", None, 3),
    ]


@pytest.mark.parametrize("value", ["0", "17", "two", "1e9", ""])
def test_the_final_bar_writers_per_worker_are_bounded_and_named(monkeypatch, value):
    monkeypatch.setenv("SINK_BAR_WRITERS", value)
    with pytest.raises(SettingsError, match="SINK_BAR_WRITERS"):
        load(Settings)
