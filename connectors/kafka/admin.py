"""Kafka administration: the admin client, the partitions of the topics, and their creation.

Creating the topics up front (rather than relying on auto-creation) gives every topic the
configured partition count, which is what flows scale out over. Idempotent: existing topics are
left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.kafka.settings import KafkaSettings
from connectors.unavailable import ServiceUnavailable

_quiet = logging.getLogger("connectors.kafka.librdkafka")  # librdkafka's connection-refused chatter
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def admin_client(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "logger": _quiet})  # type: ignore[dict-item]  # a Logger is allowed


class KafkaUnavailable(ServiceUnavailable):
    """The broker cannot be reached or the topic does not exist: say which and how to fix it."""

    service = "Kafka"


def list_partitions(bootstrap: str, topics: Iterable[str], timeout_s: float = 10.0) -> list[tuple[str, int]]:
    admin = admin_client(bootstrap)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception as exc:  # confluent_kafka raises KafkaException with the transport error
        raise KafkaUnavailable(
            f"Kafka at {bootstrap} is unreachable ({exc}); start the local broker with `make broker` "
            "or point KAFKA_BOOTSTRAP_SERVERS at a running one"
        ) from exc
    found: list[tuple[str, int]] = []
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise KafkaUnavailable(f"Kafka topic {topic!r} does not exist on {bootstrap}; create it with `make topics`")
        found.extend((topic, p) for p in sorted(meta.partitions))
    return found


def ensure_topics(settings: KafkaSettings, timeout_s: float = 10.0) -> dict[str, str]:
    """Create each missing topic of `settings.topics()`; return what happened to each."""
    bootstrap = settings.kafka_bootstrap_servers
    admin = admin_client(bootstrap)
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise KafkaUnavailable(f"Kafka at {bootstrap} does not answer ({exc}); run `make broker`") from exc
    wanted = settings.topic_partitions
    outcome: dict[str, str] = {}
    for name in settings.topics():
        if name in existing:
            count = len(existing[name].partitions)
            note = "" if count >= wanted else f"; fewer than TOPIC_PARTITIONS={wanted}, not changed"
            outcome[name] = f"exists ({count} partitions{note})"
    missing = [NewTopic(t, num_partitions=wanted, replication_factor=1) for t in settings.topics() if t not in outcome]
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
                outcome[name] = f"created ({wanted} partitions)"
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaUnavailable(f"cannot create topic {name}: {exc.args[0].str()}") from exc
                outcome[name] = "exists (created concurrently)"
    return {name: outcome[name] for name in settings.topics()}
