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
