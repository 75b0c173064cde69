"""Create the Kafka topics the system uses, before any producer or flow runs.

Creating them up front (rather than relying on auto-creation) gives every topic the configured
partition count, which is what flows scale out over. Idempotent: existing topics are left alone.
"""

from __future__ import annotations

import sys

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]  # the documented path
from pydantic import ValidationError

from flows.settings import Settings
from infra.broker import admin_client


def ensure_topics(settings: Settings, timeout_s: float = 10.0) -> dict[str, str]:
    """Create each missing topic of `settings.topics()`; return what happened to each."""
    bootstrap = settings.kafka_bootstrap_servers
    admin = admin_client(bootstrap)
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise RuntimeError(f"Kafka at {bootstrap} does not answer ({exc}); run `make broker`") from exc
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
                    raise RuntimeError(f"cannot create topic {name}: {exc.args[0].str()}") from exc
                outcome[name] = "exists (created concurrently)"
    return {name: outcome[name] for name in settings.topics()}


def main() -> int:
    try:
        outcome = ensure_topics(Settings())
    except (RuntimeError, ValidationError) as exc:
        print(f"error: topics: {exc}", file=sys.stderr)
        return 1
    for name, what in outcome.items():
        print(f"topic {name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
