"""Bytewax sinks for bars: final bars go to PostgreSQL *then* Redis; live bars to Redis only.

Writing the database first means a dashboard told about a bar can already query it.

Final bars are written by a background thread so the flow keeps computing while PostgreSQL
works (it runs on the other core). Nothing is lost by that: the queue is bounded (a slow
database slows the flow rather than filling memory), and `snapshot`, which Bytewax calls
at the end of every epoch before it commits the epoch's input offsets, waits until every
accepted batch is written. A crash can therefore only re-emit bars, which the upsert absorbs.
"""

from __future__ import annotations

import logging
import queue
import threading

from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition

from connectors.postgres import BarStore
from schemas.channels import Channels
from connectors.redis_publish import BarPublisher
from flows.settings import Settings
from schemas.bars import Bar

log = logging.getLogger(__name__)

_PENDING_BATCHES = 8


class _FinalBarPartition(StatefulSinkPartition[Bar, None]):
    def __init__(self, settings: Settings) -> None:
        # Connect here, in the flow's thread, so a missing server fails the start-up at once.
        self._store = BarStore(settings.database_url, max_backoff_s=settings.sink_max_backoff_s)
        self._publisher = BarPublisher(
            settings.redis_url,
            Channels(settings.redis_namespace),
            history=settings.history_limits(),
            max_backoff_s=settings.sink_max_backoff_s,
        )
        self._pending: queue.Queue[list[Bar] | None] = queue.Queue(maxsize=_PENDING_BATCHES)
        self._failure: BaseException | None = None
        self._writer = threading.Thread(target=self._write_forever, name="final-bar-writer", daemon=True)
        self._writer.start()

    def write_batch(self, items: list[Bar]) -> None:
        self._raise_failure()
        self._pending.put(items)

    def snapshot(self) -> None:
        """Epoch boundary: return only once everything accepted so far is written."""
        self._pending.join()
        self._raise_failure()

    def close(self) -> None:
        self._pending.join()
        self._pending.put(None)
        self._writer.join(30)
        self._store.close()
        self._publisher.close()
        self._raise_failure()

    def _write_forever(self) -> None:
        while True:
            bars = self._pending.get()
            try:
                if bars is None:
                    return
                if self._failure is None:
                    self._store.upsert(bars)  # retries while the server is down
                    self._publisher.publish_final(bars)
            except Exception as exc:  # noqa: BLE001 - handed to the flow's thread, which raises it
                log.exception("writing final bars failed")
                self._failure = exc
            finally:
                self._pending.task_done()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"final bar sink failed: {self._failure}") from self._failure


class FinalBarSink(FixedPartitionedSink[Bar, None]):
    """Final bars and revisions (keyed by symbol): upsert into `ohlcv_1min`, then publish."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def list_parts(self) -> list[str]:
        return ["ohlcv_1min"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _FinalBarPartition:
        return _FinalBarPartition(self._settings)


class _LiveBarPartition(StatelessSinkPartition[Bar]):
    def __init__(self, settings: Settings) -> None:
        self._publisher = BarPublisher(
            settings.redis_url,
            Channels(settings.redis_namespace),
            history=settings.history_limits(),
            max_backoff_s=settings.sink_max_backoff_s,
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
