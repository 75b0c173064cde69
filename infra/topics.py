"""Create the Kafka topics the system uses, before any producer or flow runs.

Creating them up front (rather than relying on auto-creation) gives every topic the configured
partition count, which is what flows scale out over. Idempotent: existing topics are left alone.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from connectors.kafka.admin import KafkaUnavailable, ensure_topics
from flows.settings import Settings


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m infra.topics",
        description=__doc__.splitlines()[0],
        epilog="Settings: KAFKA_BOOTSTRAP_SERVERS, TOPIC_* and TOPIC_PARTITIONS (environment variables, see the README).",
    ).parse_args(argv)
    try:
        outcome = ensure_topics(Settings())
    except (KafkaUnavailable, ValidationError) as exc:
        print(f"error: topics: {exc}", file=sys.stderr)
        return 1
    for name, what in outcome.items():
        print(f"topic {name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
