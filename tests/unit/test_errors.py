"""One error family for a service that cannot be used: each names its service, all share one base."""

from __future__ import annotations

import pytest

from connectors.gateway.errors import CannotListen, GatewayUnavailable
from connectors.kafka.admin import KafkaUnavailable
from connectors.postgres.database import DatabaseUnavailable
from connectors.redis.publish import RedisUnavailable
from connectors.unavailable import ServiceUnavailable
from infra.broker import BrokerError
from infra.databases import DatabaseUnreachable
from infra.embedded_timescale import TimescaleUnavailable


@pytest.mark.parametrize(
    "error",
    [KafkaUnavailable, DatabaseUnavailable, RedisUnavailable, GatewayUnavailable, CannotListen, BrokerError,
     DatabaseUnreachable, TimescaleUnavailable],
)  # fmt: skip
def test_each_unavailable_service_is_one_of_the_family_and_names_itself(error: type[ServiceUnavailable]) -> None:
    assert issubclass(error, ServiceUnavailable)
    assert error.service != ServiceUnavailable.service
    with pytest.raises(ServiceUnavailable, match="run `make broker`"):
        raise error("Kafka at 127.0.0.1:1 does not answer; run `make broker`")
