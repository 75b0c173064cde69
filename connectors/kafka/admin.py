"""Kafka administration: the partitions of the topics, and their creation with the configured layout.

Creating the topics up front (rather than relying on auto-creation) gives every topic the
configured partition count (what flows scale out over), replication factor, `min.insync.replicas`
and retention. Idempotent: existing topics are left alone, and what differs between one and the
settings (fewer partitions, another replication factor or topic configuration) is reported in
its outcome, never silently accepted. A replication factor above the cluster's broker count is
refused before anything is created (some brokers, Tansu among them, would accept it).
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from connectors.kafka import clients
from connectors.kafka.settings import KafkaSettings
from connectors.unavailable import ServiceUnavailable


class _LastError:
    """The client's last error report: a metadata timeout says only "transport failure", this says
    why (a TLS handshake refused, authentication failed, a name that does not resolve)."""

    def __init__(self) -> None:
        self.text: str | None = None

    def __call__(self, err: KafkaError) -> None:
        if err.code() != KafkaError._ALL_BROKERS_DOWN or self.text is None:  # the cause, not its summary
            self.text = err.str()

    def why(self, admin: AdminClient, exc: BaseException) -> str:
        admin.poll(0)  # error reports wait in the client's queue until served
        return f"{exc}; last client error: {self.text}" if self.text else str(exc)


def admin_client(settings: KafkaSettings) -> AdminClient:
    """An admin client with the settings' properties, quiet (callers report failures themselves)."""
    return clients.admin(settings)


def reporting_admin(settings: KafkaSettings) -> tuple[AdminClient, _LastError]:
    """An admin client and its last error report (`errors.why(admin, exc)`: a failure with its cause)."""
    errors = _LastError()
    return clients.admin(settings, {"error_cb": errors}), errors


class KafkaUnavailable(ServiceUnavailable):
    """The broker cannot be reached or the topic does not exist: say which and how to fix it."""

    service = "Kafka"


def list_partitions(settings: KafkaSettings, topics: Iterable[str], timeout_s: float = 10.0) -> list[tuple[str, int]]:
    bootstrap = settings.kafka_bootstrap_servers
    admin, errors = reporting_admin(settings)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception as exc:  # confluent_kafka raises KafkaException with the transport error
        raise KafkaUnavailable(
            f"Kafka at {bootstrap} is unreachable ({errors.why(admin, exc)}); start the local broker with `make broker` "
            "or point KAFKA_BOOTSTRAP_SERVERS at a running one (and KAFKA_PROPERTY_* at its security settings)"
        ) from exc
    found: list[tuple[str, int]] = []
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise KafkaUnavailable(f"Kafka topic {topic!r} does not exist on {bootstrap}; create it with `make topics`")
        found.extend((topic, p) for p in sorted(meta.partitions))
    return found


def new_topics(settings: KafkaSettings, names: Iterable[str], brokers: int) -> list[NewTopic]:
    """The topics to create, as the settings lay them out; KafkaUnavailable when the cluster cannot hold them."""
    replicas = settings.topic_replication_factor
    if replicas > brokers:
        raise KafkaUnavailable(
            f"TOPIC_REPLICATION_FACTOR={replicas} exceeds the {brokers} broker(s) of the cluster at "
            f"{settings.kafka_bootstrap_servers}: set it to at most {brokers}"
        )
    return [
        NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=replicas, config=settings.topic_config(name))
        for name in names
    ]


def _differences(settings: KafkaSettings, admin: AdminClient, name: str, replicas: int, timeout_s: float) -> list[str]:
    """How an existing topic differs from what the settings would create."""
    found = []
    if replicas != settings.topic_replication_factor:
        found.append(f"replication factor {replicas} (TOPIC_REPLICATION_FACTOR={settings.topic_replication_factor})")
    try:
        config = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)])
        entries = next(iter(config.values())).result(timeout=timeout_s)
    except KafkaException as exc:
        return [*found, f"its configuration could not be read ({exc.args[0].str()})"]
    variables = {
        "retention.ms": (
            "TOPIC_DEAD_LETTER_RETENTION_MS" if name == settings.topic_dead_letter
            else "TOPIC_BARS_RETENTION_MS" if name == settings.topic_bars else "TOPIC_RETENTION_MS"
        ),
        "min.insync.replicas": "TOPIC_MIN_INSYNC_REPLICAS",
    }  # fmt: skip
    for key, wanted in settings.topic_config(name).items():
        entry = entries.get(key)
        have = entry.value if entry is not None else None
        if have != wanted:
            found.append(f"{key}={have if have is not None else '(broker default)'} ({variables[key]}={wanted})")
    return found


def ensure_topics(settings: KafkaSettings, timeout_s: float = 10.0) -> dict[str, str]:
    """Create each missing topic of `settings.topics()`; return what happened to each.

    An existing topic's outcome says `differs from the settings` with each difference."""
    bootstrap = settings.kafka_bootstrap_servers
    admin, errors = reporting_admin(settings)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"Kafka at {bootstrap} does not answer ({errors.why(admin, exc)}); run `make broker`, or check KAFKA_PROPERTY_*"
        ) from exc
    existing = metadata.topics
    wanted = settings.topic_partitions
    outcome: dict[str, str] = {}
    for name in settings.topics():
        if name in existing and name not in outcome:
            partitions = existing[name].partitions
            count = len(partitions)
            notes = [] if count >= wanted else [f"fewer partitions than TOPIC_PARTITIONS={wanted}"]
            replicas = len(partitions[min(partitions)].replicas) if partitions else 0
            notes += _differences(settings, admin, name, replicas, timeout_s)
            differs = f"; differs from the settings, not changed: {'; '.join(notes)}" if notes else ""
            outcome[name] = f"exists ({count} partitions){differs}"
    missing = list(dict.fromkeys(t for t in settings.topics() if t not in outcome))
    if missing:
        topics = new_topics(settings, missing, len(metadata.brokers))
        for name, future in admin.create_topics(topics, operation_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
                outcome[name] = f"created ({wanted} partitions, {settings.topic_replication_factor} replicas)"
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaUnavailable(f"cannot create topic {name}: {exc.args[0].str()}") from exc
                outcome[name] = "exists (created concurrently)"
    return {name: outcome[name] for name in settings.topics()}
