"""Create the Kafka topics the system uses, before any producer or flow runs.

Creating them up front (rather than relying on auto-creation) gives every topic the configured
partition count, replication factor, `min.insync.replicas` and retention (TOPIC_* settings).
Idempotent: existing topics are left alone; one that differs from the settings is reported on
stderr (exit code 0; 1 with `--strict`), never silently accepted.
"""

from __future__ import annotations

import argparse
import sys

from connectors.kafka.admin import KafkaUnavailable, ensure_topics
from connectors.kafka.settings import KafkaSettings
from connectors.settings import SettingsError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.topics",
        description=__doc__.splitlines()[0],
        epilog="Settings: KAFKA_BOOTSTRAP_SERVERS, KAFKA_PROPERTY_*, TOPIC_* and TOPIC_PARTITIONS (environment variables, see"
        " the README and docs/kafka.md).",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when an existing topic differs from the settings")
    args = parser.parse_args(argv)
    try:
        outcome = ensure_topics(load(KafkaSettings))
    except (KafkaUnavailable, SettingsError) as exc:
        print(f"error: topics: {exc}", file=sys.stderr)
        return 1
    differs = 0
    for name, what in outcome.items():
        if "differs from the settings" in what:
            differs += 1
            print(f"warning: topic {name}: {what}; change it with the broker's tools (kafka-configs, or "
                  "kafka-reassign-partitions for replicas) or recreate it", file=sys.stderr)  # fmt: skip
        else:
            print(f"topic {name}: {what}")
    return 1 if differs and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
