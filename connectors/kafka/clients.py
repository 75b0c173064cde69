"""Every Kafka client is built here: the settings' properties over what the code sets, in one place.

A client's configuration is `bootstrap.servers`, then what its code sets (`ours`: the
guarantees and the tuning), then the deployment's librdkafka properties for its kind of client
(`KafkaSettings.client_properties`), which win: the properties the code cannot give up were
refused when the settings were read (`connectors.kafka.properties.PROTECTED`). `_create` is
the one place a librdkafka handle is made, so a test can see every client's configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from connectors.kafka.properties import Role
from connectors.kafka.settings import KafkaSettings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

_quiet = logging.getLogger("connectors.kafka.librdkafka")  # librdkafka's connection-refused chatter
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def client_config(settings: KafkaSettings, role: Role, ours: Mapping[str, object] | None = None) -> dict[str, Any]:
    """The configuration one client of `role` is created with."""
    return {"bootstrap.servers": settings.kafka_bootstrap_servers, **(ours or {}), **settings.client_properties(role)}


def _create(role: Role, config: dict[str, Any]) -> Any:
    """Make the librdkafka handle (KafkaException if librdkafka refuses the configuration)."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    return {"consumer": Consumer, "producer": Producer, "admin": AdminClient}[role](config)


def consumer(settings: KafkaSettings, ours: Mapping[str, object] | None = None) -> Consumer:
    return _create("consumer", client_config(settings, "consumer", ours))


def producer(settings: KafkaSettings, ours: Mapping[str, object] | None = None) -> Producer:
    return _create("producer", client_config(settings, "producer", ours))


def admin(settings: KafkaSettings, ours: Mapping[str, object] | None = None) -> AdminClient:
    """An admin client; librdkafka's own log lines are dropped unless `ours` sets a logger (one clear
    message from the caller instead of a line per failed connect)."""
    return _create("admin", client_config(settings, "admin", {"logger": _quiet, **(ours or {})}))
