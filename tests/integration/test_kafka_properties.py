"""Production Kafka on the real broker: the deployment's properties reach every client of every program,
TLS reaches the broker, and topics get the configured layout (or a precise refusal).

Every librdkafka handle is made by `connectors.kafka.clients._create`; recording it shows the
configuration each client was created with, while each program runs as it does in production.
"""

from __future__ import annotations

import logging
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import run_main
from confluent_kafka.admin import ConfigResource, ResourceType

from bench.chaos import compare
from connectors.feeds.bridge.program import wait_for_kafka
from connectors.feeds.bridge.relay import Bridge
from connectors.feeds.bridge.settings import BridgeSettings
from connectors.feeds.replay import replay
from connectors.feeds.synthetic import generate
from connectors.feeds.synthetic import program as synthetic
from connectors.kafka import clients
from connectors.kafka.admin import KafkaUnavailable, admin_client, ensure_topics, list_partitions
from connectors.kafka.producer import make_producer
from flows import detection, ohlcv
from infra import broker, topics
from tests.support.fixtures.flat_files import write_trades_flat_file
from tests.support.proxy import KafkaProxy, start_tansu
from tests.support.services import base_settings, create_topics, free_port, publish, read_topic

SECRET = "s3cret-from-a-file"


class Recorder:
    """Every client made, with the program that made it and its configuration."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str, dict[str, Any]]] = []
        self.program = "?"

    def roles(self, program: str) -> set[str]:
        return {role for p, role, _ in self.made if p == program}


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    recorder = Recorder()
    real = clients._create

    def create(role: Any, config: dict[str, Any]) -> Any:
        recorder.made.append((recorder.program, role, dict(config)))
        return real(role, config)

    monkeypatch.setattr(clients, "_create", create)
    yield recorder


def test_the_deployments_properties_reach_every_client_of_every_program(
    services: None, recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    secret = tmp_path / "sasl-password"
    secret.write_text(SECRET + "\n")
    file = tmp_path / "client.properties"
    file.write_text("# the deployment's\nclient.id=tickstock-proptest\nsocket.keepalive.enable=true\nsasl.username=alice\n")
    monkeypatch.setenv("KAFKA_PROPERTIES_FILE", str(file))
    monkeypatch.setenv("KAFKA_PROPERTY_SASL_PASSWORD_FILE", str(secret))  # unused on plaintext, but it must arrive
    monkeypatch.setenv("KAFKA_PROPERTY_PRODUCER_LINGER_MS", "7")
    monkeypatch.setenv("KAFKA_PROPERTY_CONSUMER_FETCH_WAIT_MAX_MS", "30")
    caplog.set_level(logging.INFO)
    s = base_settings(topic_partitions=2)
    for variable, value in s.as_env().items():  # the programs that read the environment get this test's topics
        monkeypatch.setenv(variable, value)
    create_topics(s)
    events = list(generate(seed=3, symbols=3, count=300))

    recorder.program = "tests"
    publish(s, events)
    recorder.program = "bar flow"
    run_main(ohlcv.build_flow(s))
    recorder.program = "tests"
    producer, _ = make_producer(s, idempotent=True)
    producer.produce(s.topic_bars, b"not a bar", b"AAPL")  # its dead letter makes the detection flow's producer
    assert producer.flush(10) == 0
    recorder.program = "detection flow"
    run_main(detection.build_flow(s))
    recorder.program = "replay"
    replay([write_trades_flat_file(tmp_path / "trades_v1.csv.gz", [e.value for e in events[:50]])], settings=s)
    recorder.program = "synthetic feed"
    assert synthetic.main(["--count", "20", "--symbols", "3", "--progress-s", "60"]) == 0
    recorder.program = "bridge"
    Bridge(BridgeSettings(api_key="unused", bridge_spool_dir=tmp_path / "spool"), s)
    wait_for_kafka(s, [s.topic_trades])
    recorder.program = "infra"
    assert topics.main([]) == 0
    assert broker.kafka_answers(s)
    recorder.program = "chaos harness"
    compare.read_dead_letters(s, s.topic_dead_letter, s.topic_partitions, timeout_s=5)

    expected = {
        "bar flow": {"admin", "consumer", "producer"},
        "detection flow": {"admin", "consumer", "producer"},
        "replay": {"producer"},
        "synthetic feed": {"admin", "producer"},
        "bridge": {"admin", "producer"},
        "infra": {"admin"},
        "chaos harness": {"consumer"},
    }
    for program, roles in expected.items():
        assert recorder.roles(program) == roles, program
    for program, role, config in recorder.made:
        common = {k: config.get(k) for k in ("client.id", "socket.keepalive.enable", "sasl.username", "sasl.password")}
        assert common == {"client.id": "tickstock-proptest", "socket.keepalive.enable": "true",
                          "sasl.username": "alice", "sasl.password": SECRET}, (program, role)  # fmt: skip
        assert config.get("linger.ms") == ("7" if role == "producer" else None), (program, role)
        assert config.get("fetch.wait.max.ms") == ("30" if role == "consumer" else None), (program, role)
        assert config["bootstrap.servers"] == s.kafka_bootstrap_servers
    flow_consumers = [c for p, r, c in recorder.made if r == "consumer" and p.endswith("flow")]
    assert flow_consumers and all(c["enable.auto.commit"] is False and c["auto.offset.reset"] == "error" for c in flow_consumers)
    assert SECRET not in caplog.text
    out, err = capsys.readouterr()
    assert SECRET not in out + err


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_clients_reach_the_broker_over_tls_and_a_wrong_ca_is_a_precise_error(tmp_path: Path) -> None:
    """Tansu here speaks no TLS (docs/kafka.md), so TLS ends at a proxy in front of a private Tansu,
    as at a TLS load balancer: every byte the clients send is TLS, verified against the CA file."""
    cert, key = _self_signed(tmp_path, "broker")
    other, _ = _self_signed(tmp_path, "other")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    broker_port, tls_port = free_port(), free_port()
    tansu = start_tansu(broker_port, advertised_port=tls_port)
    try:
        with KafkaProxy(tls_port, broker_port, tls=server) as proxy:
            run = uuid.uuid4().hex[:6]
            tls = {"security.protocol": "SSL", "ssl.ca.location": str(cert)}
            s = base_settings(kafka_bootstrap_servers=f"127.0.0.1:{tls_port}", topic_partitions=1, kafka_properties=tls,
                              topic_trades=f"tls{run}.trades")  # fmt: skip
            create_topics(s)
            producer, delivery = make_producer(s, idempotent=True)
            for i in range(10):
                producer.produce(s.topic_trades, f"tick {i}".encode(), b"AAPL")
            assert producer.flush(20) == 0 and delivery.failed == 0, delivery.first_error
            del producer
            assert sorted(m.value() for m in read_topic(s, s.topic_trades)) == [f"tick {i}".encode() for i in range(10)]
            assert proxy.connections > 0

            at = {"kafka_bootstrap_servers": f"127.0.0.1:{tls_port}", "topic_trades": s.topic_trades}
            wrong_ca = base_settings(**at, kafka_properties={**tls, "ssl.ca.location": str(other)})
            plaintext = base_settings(**at)
            # librdkafka reports a TLS refusal as the cause; a plaintext client only sees the broker "down".
            for bad, why in ((wrong_ca, "last client error: .*certificate verify failed"), (plaintext, "brokers are down")):
                with pytest.raises(KafkaUnavailable, match=f"unreachable .*{why}.*KAFKA_PROPERTY_"):
                    list_partitions(bad, [s.topic_trades], timeout_s=3)
    finally:
        tansu.kill()
        tansu.wait(10)


def test_topics_are_created_with_the_layout_the_settings_give(services: None) -> None:
    s = base_settings(topic_partitions=2, topic_min_insync_replicas=1, topic_dead_letter_retention_ms=3 * 86_400_000)
    outcome = ensure_topics(s)
    assert all(what == "created (2 partitions, 1 replicas)" for what in outcome.values()), outcome
    admin = admin_client(s)
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in (s.topic_trades, s.topic_bars, s.topic_dead_letter)]
    found = {r.name: f.result(10) for r, f in admin.describe_configs(resources).items()}
    retention = {name: entries["retention.ms"].value for name, entries in found.items()}
    assert retention == {s.topic_trades: str(7 * 86_400_000), s.topic_bars: str(7 * 86_400_000),
                         s.topic_dead_letter: str(3 * 86_400_000)}  # fmt: skip
    assert {entries["min.insync.replicas"].value for entries in found.values()} == {"1"}
    assert ensure_topics(s) == dict.fromkeys(s.topics(), "exists (2 partitions)")  # as the settings say

    # The same topics under other settings: reported, not silently accepted.
    other = s.model_copy(update={"topic_retention_ms": 86_400_000, "topic_partitions": 4})
    again = ensure_topics(other)
    assert again[s.topic_trades] == (
        "exists (2 partitions); differs from the settings, not changed: fewer partitions than TOPIC_PARTITIONS=4; "
        f"retention.ms={7 * 86_400_000} (TOPIC_RETENTION_MS=86400000)"
    )
    assert "retention.ms" not in again[s.topic_dead_letter]


def test_a_replication_factor_above_the_broker_count_is_refused_before_anything_is_created(services: None) -> None:
    s = base_settings(topic_replication_factor=3)
    with pytest.raises(
        KafkaUnavailable, match=r"TOPIC_REPLICATION_FACTOR=3 exceeds the 1 broker\(s\) of the cluster at .*: set it to at most 1"
    ):
        ensure_topics(s)
    assert not set(s.topics()) & set(admin_client(s).list_topics(timeout=10).topics)
