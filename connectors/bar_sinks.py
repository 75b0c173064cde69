"""Bytewax sinks for bars: final bars go to PostgreSQL *then* Redis; live bars to Redis only.

Writing the database first means a dashboard told about a bar can already query it.
"""

from __future__ import annotations

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.postgres import BarStore
from connectors.redis_channels import Channels
from connectors.redis_publish import BarPublisher
from flows.settings import Settings
from schemas.bars import Bar


class _FinalBarPartition(StatelessSinkPartition[Bar]):
    def __init__(self, settings: Settings) -> None:
        self._store = BarStore(settings.database_url, max_backoff_s=settings.sink_max_backoff_s)
        self._publisher = BarPublisher(
            settings.redis_url, Channels(settings.redis_namespace), max_backoff_s=settings.sink_max_backoff_s
        )

    def write_batch(self, items: list[Bar]) -> None:
        self._store.upsert(items)
        self._publisher.publish_final(items)

    def close(self) -> None:
        self._store.close()
        self._publisher.close()


class FinalBarSink(DynamicSink[Bar]):
    """Final bars and revisions: upsert into `ohlcv_1min`, then publish."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FinalBarPartition:
        return _FinalBarPartition(self._settings)


class _LiveBarPartition(StatelessSinkPartition[Bar]):
    def __init__(self, settings: Settings) -> None:
        self._publisher = BarPublisher(
            settings.redis_url, Channels(settings.redis_namespace), max_backoff_s=settings.sink_max_backoff_s
        )

    def write_batch(self, items: list[Bar]) -> None:
        self._publisher.publish_live(items)

    def close(self) -> None:
        self._publisher.close()


class LiveBarSink(DynamicSink[Bar]):
    """Forming-bar updates for dashboards."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LiveBarPartition:
        return _LiveBarPartition(self._settings)
