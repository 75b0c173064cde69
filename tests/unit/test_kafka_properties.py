"""librdkafka properties from the environment, a properties file and secret files: mapped, checked, redacted.

No broker is needed: the settings check the properties with librdkafka itself (a client built
without bootstrap servers connects nowhere). That they reach every client of every program is
tests/integration/test_kafka_properties.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer
from pydantic import ValidationError

from connectors.feeds.bridge.settings import load_settings
from connectors.kafka import clients
from connectors.kafka.properties import (
    _UNDERSCORED,
    FILE_PROPERTIES,
    PropertyError,
    from_env_name,
    parse_properties,
    split_env,
    to_env_name,
)
from connectors.kafka.settings import KafkaSettings
from connectors.settings import SettingsError, load
from flows.settings import Settings

SECRET = "hunter2-s3cret-value"


def _librdkafka_knows(name: str, value: str) -> bool:
    try:
        Producer({name: value, "log_level": 0})
    except KafkaException as exc:
        return "No such configuration property" not in exc.args[0].str()
    return True


@pytest.mark.parametrize(
    ("variable", "name"),
    [
        ("SECURITY_PROTOCOL", "security.protocol"),
        ("SASL_MECHANISMS", "sasl.mechanisms"),
        ("SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "ssl.endpoint.identification.algorithm"),
        ("LOG_LEVEL", "log_level"),
        ("ENABLED_EVENTS", "enabled_events"),
        ("PRODUCER_LINGER_MS", "producer.linger.ms"),
        ("CONSUMER_LOG_LEVEL", "consumer.log_level"),
        ("admin_client_id", "admin.client.id"),
    ],
)
def test_a_variable_names_one_property(variable: str, name: str) -> None:
    assert from_env_name(variable) == name
    assert from_env_name(to_env_name(name)[len("KAFKA_PROPERTY_") :]) == name


def test_the_names_with_underscores_and_the_file_properties_are_librdkafkas() -> None:
    """The mapping's exceptions are real librdkafka names, and their dotted spellings are not."""
    assert _librdkafka_knows("log_level", "3") and _librdkafka_knows("enabled_events", "0")
    assert not _librdkafka_knows("log.level", "3") and not _librdkafka_knows("enabled.events", "0")
    for name in FILE_PROPERTIES:
        assert _librdkafka_knows(name, "/nonexistent"), name
        assert not _librdkafka_knows(name.removesuffix(".file"), "x"), name
    assert set(_UNDERSCORED) >= {"log.level", "enabled.events", "error.cb", "ssl.key"}


def test_file_suffixes_read_secrets_except_librdkafkas_own_file_properties() -> None:
    values, files = split_env(
        {
            "KAFKA_PROPERTY_SASL_PASSWORD_FILE": "/run/secrets/pw",
            "KAFKA_PROPERTY_PRODUCER_SSL_KEY_PASSWORD_FILE": "/run/secrets/key",
            "KAFKA_PROPERTY_SASL_OAUTHBEARER_ASSERTION_FILE": "/etc/assertion.jwt",
            "KAFKA_PROPERTY_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_BOOTSTRAP_SERVERS": "not a property",
            "KAFKA_PROPERTIES_FILE": "not a property either",
            "KAFKA_TAIL": "false",
        }
    )
    assert files == {"sasl.password": "/run/secrets/pw", "producer.ssl.key.password": "/run/secrets/key"}
    assert values == {"sasl.oauthbearer.assertion.file": "/etc/assertion.jwt", "security.protocol": "SASL_SSL"}


def test_a_java_properties_file_is_read_as_kafka_users_write_it() -> None:
    text = (
        "# Confluent Cloud's client configuration, librdkafka flavour\n"
        "! another comment\n"
        "\n"
        "security.protocol=SASL_SSL\n"
        "sasl.mechanisms : PLAIN\n"
        "sasl.username   alice\n"
        "sasl.password=p\\=ss\\u0077ord\\\\\n"
        "client.id = tick\\\n"
        "    stock\n"
        "empty=\n"
    )
    assert {k: v for k, (v, _) in parse_properties(text, "f").items()} == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "alice",
        "sasl.password": "p=ssword\\",
        "client.id": "tickstock",
        "empty": "",
    }
    with pytest.raises(PropertyError, match=r"f line 2: 'a' is already set on line 1"):
        parse_properties("a=1\na=2\n", "f")
    with pytest.raises(PropertyError, match=r"f line 1: malformed \\uXXXX"):
        parse_properties("a=\\u12\n", "f")


def test_properties_from_the_environment_a_file_and_a_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "password"
    secret.write_text(SECRET + "\n")
    file = tmp_path / "client.properties"
    file.write_text("security.protocol=SASL_SSL\nsasl.mechanisms=PLAIN\nclient.id=from-file\nconsumer.fetch.wait.max.ms=30\n")
    monkeypatch.setenv("KAFKA_PROPERTIES_FILE", str(file))
    monkeypatch.setenv("KAFKA_PROPERTY_CLIENT_ID", "from-env")  # the environment wins over the file
    monkeypatch.setenv("KAFKA_PROPERTY_SASL_USERNAME", "alice")
    monkeypatch.setenv("KAFKA_PROPERTY_SASL_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("KAFKA_PROPERTY_PRODUCER_LINGER_MS", "7")
    s = load(Settings)
    common = {"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN", "client.id": "from-env", "sasl.username": "alice"}
    assert s.client_properties("consumer") == common | {"sasl.password": SECRET, "fetch.wait.max.ms": "30"}
    assert s.client_properties("producer") == common | {"sasl.password": SECRET, "linger.ms": "7"}
    assert s.client_properties("admin") == common | {"sasl.password": SECRET}
    # What a client is built with: ours, then the deployment's (which win where allowed).
    config = clients.client_config(s, "producer", {"linger.ms": 5, "acks": "all"})
    assert config["linger.ms"] == "7" and config["acks"] == "all" and config["sasl.password"] == SECRET
    # Another process (a test's or benchmark's flow) gets the same, the secret by its path only.
    env = s.as_env()
    assert SECRET not in env.values() and env["KAFKA_PROPERTY_SASL_PASSWORD_FILE"] == str(secret)
    for variable in list(__import__("os").environ):
        if variable.startswith("KAFKA_PROPERTY"):
            monkeypatch.delenv(variable)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    again = load(Settings)
    assert all(again.client_properties(r) == s.client_properties(r) for r in ("consumer", "producer", "admin"))


def test_secrets_never_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "key-password"
    secret.write_text(SECRET)
    monkeypatch.setenv("KAFKA_PROPERTY_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("KAFKA_PROPERTY_SSL_KEY_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("KAFKA_PROPERTY_SASL_USERNAME", "alice")
    s = load(Settings)
    shown = [repr(s), str(s), str(s.model_dump()), s.model_dump_json(), str(s.shown_properties())]
    assert all(SECRET not in text for text in shown)
    assert s.shown_properties()["producer"] == {"sasl.password": "***", "ssl.key.password": "***", "sasl.username": "alice"}
    # ... nor in an error, from our checks, from librdkafka's or from pydantic's.
    monkeypatch.setenv("KAFKA_PROPERTY_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_PROPERTY_SASL_MECHANISMS", "NOPE")
    with pytest.raises(SettingsError) as refused:
        load(Settings)
    assert "KAFKA_PROPERTY_SASL_MECHANISMS" in str(refused.value) and SECRET not in str(refused.value)
    with pytest.raises(ValidationError) as invalid:
        Settings(kafka_properties={"sasl.password": SECRET, "linger.ms": "x"})
    assert SECRET not in str(invalid.value)
    with pytest.raises(SettingsError) as bridge:
        load_settings()  # the bridge's own settings reader
    assert SECRET not in str(bridge.value)


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("KAFKA_PROPERTY_NO_SUCH_THING", "1", r"KAFKA_PROPERTY_NO_SUCH_THING: librdkafka refuses .*No such configuration property: \"no.such.thing\""),
        ("KAFKA_PROPERTY_LINGER_MS", "soon", r"KAFKA_PROPERTY_LINGER_MS: librdkafka refuses it for the consumer clients: Invalid value"),
        ("KAFKA_PROPERTY_SECURITY_PROTOCOL", "TLS", r"KAFKA_PROPERTY_SECURITY_PROTOCOL: .*Invalid value"),
        ("KAFKA_PROPERTY_MAX_IN_FLIGHT", "10", r"KAFKA_PROPERTY_MAX_IN_FLIGHT: librdkafka refuses it for the producer .*max.in.flight"),
        ("KAFKA_PROPERTY_ENABLE_AUTO_COMMIT", "true", r"KAFKA_PROPERTY_ENABLE_AUTO_COMMIT: enable.auto.commit is set by the code .*recovery state"),
        ("KAFKA_PROPERTY_REQUEST_REQUIRED_ACKS", "1", r"request.required.acks is set by the code .*acks=all"),
        ("KAFKA_PROPERTY_PRODUCER_DELIVERY_TIMEOUT_MS", "1000", r"delivery.timeout.ms is set by the code .*without a deadline"),
        ("KAFKA_PROPERTY_AUTO_OFFSET_RESET", "latest", r"set KAFKA_START"),
        ("KAFKA_PROPERTY_ERROR_CB", "x", r"error_cb is set by the code .*callback"),
        ("KAFKA_PROPERTY_CONSUMER_BOOTSTRAP_SERVERS", "a:1", r"cannot differ per client"),
        ("KAFKA_PROPERTY_BOOTSTRAP_SERVERS", "elsewhere:9092", r"bootstrap.servers differs from KAFKA_BOOTSTRAP_SERVERS"),
    ],
)  # fmt: skip
def test_a_property_that_cannot_be_used_stops_the_start_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=problem):
        load(Settings)


def test_a_tls_file_librdkafka_cannot_load_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PROPERTY_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_PROPERTY_SSL_CA_LOCATION", str(tmp_path / "missing-ca.pem"))
    with pytest.raises(
        SettingsError, match=r"KAFKA_PROPERTY_SSL_CA_LOCATION: ssl.ca.location names '.*missing-ca.pem', which does not exist"
    ):
        load(Settings)
    (tmp_path / "not-a-ca.pem").write_text("not a certificate\n")
    monkeypatch.setenv("KAFKA_PROPERTY_SSL_CA_LOCATION", str(tmp_path / "not-a-ca.pem"))
    with pytest.raises(SettingsError, match=r"KAFKA_PROPERTY_SSL_CA_LOCATION: librdkafka refuses .*ssl.ca.location failed"):
        load(Settings)


def test_a_file_property_is_named_by_its_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "client.properties"
    file.write_text(
        "# ours\nsecurity.protocol=PLAINTEXT\nsasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule\n"
    )
    monkeypatch.setenv("KAFKA_PROPERTIES_FILE", str(file))
    # A Java client's property, as a copied configuration may hold: librdkafka does not know it.
    with pytest.raises(SettingsError, match=rf"KAFKA_PROPERTIES_FILE {file} line 3: .*Java JAAS configuration is not supported"):
        load(Settings)
    file.write_text("security.protocol=PLAINTEXT\nenable.idempotence=false\n")
    with pytest.raises(SettingsError, match=rf"KAFKA_PROPERTIES_FILE {file} line 2: enable.idempotence is set by the code"):
        load(Settings)


def test_a_properties_file_may_name_the_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "client.properties"
    file.write_text("bootstrap.servers=pkc-1.example.cloud:9092\nsecurity.protocol=SSL\n")
    monkeypatch.setenv("KAFKA_PROPERTIES_FILE", str(file))
    s = load(KafkaSettings)
    assert s.kafka_bootstrap_servers == "pkc-1.example.cloud:9092"
    assert "bootstrap.servers" not in s.client_properties("admin")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "pkc-1.example.cloud:9092")  # the same: fine
    assert load(KafkaSettings).kafka_bootstrap_servers == "pkc-1.example.cloud:9092"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read '{path}': No such file or directory"),
        ("", "'{path}' is empty"),
        ("\n", "'{path}' is empty"),
        (b"\xff\xfe", "'{path}' is not UTF-8 text"),
        ("dir", "cannot read '{path}': Is a directory"),
    ],
)
def test_an_unreadable_secret_file_is_named_and_its_content_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | bytes | None, problem: str
) -> None:
    path = tmp_path / "secret"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    monkeypatch.setenv("KAFKA_PROPERTY_SASL_PASSWORD_FILE", str(path))
    with pytest.raises(SettingsError, match=f"KAFKA_PROPERTY_SASL_PASSWORD_FILE: {problem.format(path=path)}"):
        load(Settings)


def test_a_secret_given_twice_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text(SECRET)
    monkeypatch.setenv("KAFKA_PROPERTY_SASL_PASSWORD_FILE", str(tmp_path / "pw"))
    monkeypatch.setenv("KAFKA_PROPERTY_SASL_PASSWORD", "other")
    with pytest.raises(SettingsError, match=r"both set sasl\.password: keep one") as refused:
        load(Settings)
    assert SECRET not in str(refused.value) and "other" not in str(refused.value)


def test_topic_layout_settings() -> None:
    s = KafkaSettings(topic_dead_letter="d", topic_bars="b", topic_min_insync_replicas=2, topic_replication_factor=3)
    assert s.topic_config("stocks.trades") == {"retention.ms": str(7 * 86_400_000), "min.insync.replicas": "2"}
    assert s.topic_config("b")["retention.ms"] == str(7 * 86_400_000)
    assert s.topic_config("d")["retention.ms"] == str(30 * 86_400_000)
    assert KafkaSettings(topic_retention_ms=-1).topic_config("x") == {"retention.ms": "-1"}
    with pytest.raises(ValidationError, match="TOPIC_MIN_INSYNC_REPLICAS=2 exceeds TOPIC_REPLICATION_FACTOR=1"):
        KafkaSettings(topic_min_insync_replicas=2)
    with pytest.raises(ValidationError, match="TOPIC_BARS_RETENTION_MS=5: must be -1"):
        KafkaSettings(topic_bars_retention_ms=5)
