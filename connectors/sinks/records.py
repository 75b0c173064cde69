"""The flow's Bytewax sinks: final bars and detection records go to PostgreSQL *then* Redis; live bars to Redis.

Writing the database first means a dashboard told about a bar or an event can already query it.

Database-bound records are written by background threads so the flow keeps computing while
PostgreSQL works (it runs on the other core): one stores a batch, a second publishes what the
first stored, so a minute boundary's second wave of bars is upserted while the first is being
published (each bar still reaches Redis after its transaction committed). Nothing is lost by
that: the queues are bounded (a slow database or Redis slows the flow rather than filling
memory), and `snapshot`, which Bytewax calls at the end of every epoch before it commits the
epoch's input offsets, waits until every accepted batch is stored and published. A crash can
therefore only re-emit records, which the upserts absorb.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import msgspec
from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition

from connectors.kafka.dead_letter import error_record, letter
from connectors.kafka.sink import Record, TopicWriter
from connectors.monitoring.metrics import LIVE_SUPERSEDED, timed_batch
from connectors.postgres.bars import BarStore
from connectors.postgres.events import EventStore
from connectors.redis.publish import BarPublisher, EventPublisher, PricePublisher, Publisher, StatusPublisher
from connectors.sinks import stages
from connectors.sinks.parts import PerWorker, SharedPartition, part_names
from connectors.sinks.settings import OutputSettings
from schemas.bars import Bar
from schemas.channels import Channels
from schemas.events import Event
from schemas.prices import Price
from schemas.status import FlowHealth, Status, encode_status

encode_json = msgspec.json.Encoder().encode

log = logging.getLogger(__name__)

_PENDING_BATCHES = 8
X = TypeVar("X")
# Live updates wait for the final bars in hand at most this long, then go anyway (never starved),
# and are published in slices of this many records, looking again between two: 250 bars are 500
# Redis messages (one script call of `connectors.redis.publish`), ~10-40 ms here.
_LIVE_WAIT_S = 2.0
_LIVE_SLICE = 250
# Live records waiting at most (newest per key; error records each count): past it, Redis is away
# and the flow waits, as it does for the database-bound sinks' batches.
_LIVE_MAX_WAITING = 200_000


class _FinalsFirst:
    """Final bars before live updates: the batches the final-bar writers were handed and have not written.

    At a minute boundary the flow emits every symbol's final bar and, in the same breath, its
    forming bars and last price; written side by side they share one single-threaded Redis, and
    the final bars (what dashboards and the latency target wait for) arrive later for it. So the
    live writers wait, before each slice, until no final bars are in hand. Per process: a worker's
    sinks all run in it.
    """

    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._pending = 0

    def handed(self) -> None:
        with self._idle:
            self._pending += 1

    def written(self, batches: int) -> None:
        with self._idle:
            self._pending -= batches
            if not self._pending:
                self._idle.notify_all()

    def wait(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: not self._pending, _LIVE_WAIT_S)


_FINALS_FIRST = _FinalsFirst()


class _WriteBehind(StatefulSinkPartition[X, None], Generic[X]):
    """Hands each batch to a writer thread; the epoch boundary waits for it to catch up.

    With `then`, a second thread gets what each `write` returned and runs `then` on it (the
    publishing after the storing), while the writer goes on to the next batch; a batch counts as
    written once both are done. `first` is told of every batch handed and written (the final
    bars', which the live updates wait for: `_Newest`).
    """

    def __init__(
        self, what: str, write: Callable[[list[X]], Any], close: Callable[[], None], *,
        then: Callable[[Any], None] | None = None, first: _FinalsFirst | None = None,
    ) -> None:  # fmt: skip
        self._what = what
        self._first = first
        self._write = write
        self._then = then
        self._close = close
        self._pending: queue.Queue[list[X] | None] = queue.Queue(maxsize=_PENDING_BATCHES)
        # Stored, not yet published: a small bound, so a Redis that is away stops the storing
        # soon (and then the flow, through `_pending`) instead of piling batches up here.
        self._stored: queue.Queue[tuple[list[list[X] | None], Any]] = queue.Queue(maxsize=2)
        self._failure: BaseException | None = None
        self._threads = [threading.Thread(target=self._write_forever, name=f"{what}-writer", daemon=True)]
        if then is not None:
            self._threads.append(threading.Thread(target=self._then_forever, name=f"{what}-publisher", daemon=True))
        for thread in self._threads:
            thread.start()

    def write_batch(self, items: list[X]) -> None:
        self._raise_failure()
        if stages.enabled():
            stages.mark("sink_in", sink=self._what, items=len(items), queued=self._pending.qsize())
        if self._first is not None:
            self._first.handed()
        self._pending.put(items)

    def snapshot(self) -> None:
        """Epoch boundary: return only once everything accepted so far is written."""
        if stages.enabled():
            stages.mark("sink_snapshot", sink=self._what, queued=self._pending.qsize())
        self._pending.join()
        self._raise_failure()
        if stages.enabled():
            stages.mark("sink_snapshot_done", sink=self._what)

    def close(self) -> None:
        self._pending.join()
        self._pending.put(None)
        for thread in self._threads:
            thread.join(30)
        self._close()
        self._raise_failure()

    def _write_forever(self) -> None:
        while True:
            batches = self._take()
            result = None
            try:
                items = [item for batch in batches if batch is not None for item in batch]
                if items and self._failure is None:
                    result = self._write(items)  # the stores and publishers retry while their server is down
            except Exception as exc:
                log.exception("writing %s failed", self._what)
                self._failure = exc
            finally:
                if self._then is None:
                    self._done(batches)
                else:
                    self._stored.put((batches, result))
            if None in batches:
                return

    def _then_forever(self) -> None:
        assert self._then is not None
        while True:
            batches, result = self._stored.get()
            try:
                if result is not None and self._failure is None:
                    self._then(result)
            except Exception as exc:
                log.exception("publishing %s failed", self._what)
                self._failure = exc
            finally:
                self._done(batches)
            if None in batches:
                return

    def _done(self, batches: list[list[X] | None]) -> None:
        if self._first is not None:
            self._first.written(sum(batch is not None for batch in batches))
        for _ in batches:
            self._pending.task_done()

    def _take(self) -> list[list[X] | None]:
        """The next batch and every one queued behind it, in order: written as one.

        At a minute boundary the flow hands over a batch per sink partition within milliseconds,
        and more arrive while one is written; each write has a cost of its own (a transaction, a
        round trip per store and per publish), which one write of them all pays once. At most
        the queue's bound of batches are taken at once.
        """
        batches = [self._pending.get()]
        while batches[-1] is not None:
            try:
                batches.append(self._pending.get_nowait())
            except queue.Empty:
                break
        return batches

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"{self._what} sink failed: {self._failure}") from self._failure


def _publisher_options(settings: OutputSettings) -> dict:
    return {"history": settings.history_limits(), "max_backoff_s": settings.sink_max_backoff_s}


class Writer(NamedTuple):
    """What a sink's writer thread runs: `write` a batch, `close` at the end; with `then`, a second
    thread runs it on each result of `write` (publishing what was stored) while the next is written."""

    write: Callable[[list], Any]
    close: Callable[[], None]
    then: Callable[[Any], None] | None = None


class _StoreThenPublish(FixedPartitionedSink[X, None]):
    """Records keyed by symbol: database first, then Redis, behind the flow.

    `parts` sink partitions (see `connectors.sinks.parts`), spread by Bytewax over the workers; a
    symbol's records all go through one. The partitions of a worker share its `lanes` writers
    (each: a storing thread, a publishing one, and their connections).
    """

    def __init__(
        self, part: str, open_writer: Callable[[], Writer], parts: int = 1, *, first: bool = False, lanes: int = 1
    ) -> None:
        self._parts = part_names(part, parts)

        def open_write_behind() -> _WriteBehind[X]:
            w = open_writer()  # connects here, in the flow's thread: a missing server fails the start
            return _WriteBehind(part, w.write, w.close, then=w.then, first=_FINALS_FIRST if first else None)

        self._writers: PerWorker[X] = PerWorker(open_write_behind, lanes)

    def list_parts(self) -> list[str]:
        return list(self._parts)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> SharedPartition[X]:
        return self._writers.partition()


class Refusals:
    """Records the database refused for their values: dead-lettered and announced, never a stopped flow.

    The dead letter's value is the record's JSON (kind `rejected`, the reason from PostgreSQL,
    the table as its source); the same goes to `tickstock:errors`. Used from the writer thread.
    """

    def __init__(self, settings: OutputSettings, table: str, component: str) -> None:
        self._settings = settings
        self._table = table
        self._component = component
        self._letters: list = []
        self._writer: TopicWriter | None = None

    def __call__(self, record: object, reason: str) -> None:
        log.error("%s: %s; dead-lettered: %.300s", self._table, reason, record)
        self._letters.append(letter(encode_json(record), kind="rejected", reason=reason, topic=self._table,
                                    partition=None, offset=None, key=getattr(record, "symbol", "").encode()))  # fmt: skip

    def deliver(self, publisher: Publisher | None) -> None:
        """Dead letters onto their topic (waiting for Kafka), then their error records onto Redis
        (unless `publisher` is None: a sink that publishes nothing, the backfill's)."""
        if not self._letters:
            return
        letters, self._letters = self._letters, []
        if self._writer is None:
            s = self._settings
            self._writer = TopicWriter(s, s.topic_dead_letter, _letter_record)
        self._writer.write_batch(letters)
        self._writer.snapshot()
        if publisher is None:
            return
        errors = [error_record(m, component=self._component) for m in letters]
        channel = Channels(self._settings.redis_namespace).errors
        publisher.publish([(channel, encode_status(e)) for e in errors])


class _Closable(Protocol):
    def close(self) -> None: ...


def _closing(*clients: _Closable) -> Callable[[], None]:
    """Closes each client in turn (the writer thread's end)."""

    def close() -> None:
        for client in clients:
            client.close()

    return close


def _letter_record(m: object) -> Record:
    return m.key, m.value, m.headers  # type: ignore[attr-defined]  # KafkaSinkMessage carries headers; the stubs omit them


def final_bar_sink(settings: OutputSettings, parts: int = 1) -> _StoreThenPublish[Bar]:
    """Final bars and revisions (keyed by symbol): 1-minute ones upserted into `ohlcv_1min`, then every
    timeframe's published on its bar channels. The coarser ones are not stored: the database rolls its
    own up from the minutes (`ohlcv_5min`, ...), which are written before the coarse bars go out."""

    def open_writer() -> Writer:
        store = BarStore(settings.database_url, max_backoff_s=settings.sink_max_backoff_s)
        publisher = BarPublisher(settings.redis_url, Channels(settings.redis_namespace), **_publisher_options(settings))
        refused = Refusals(settings, "ohlcv_1min", "ohlcv_flow")

        def store_bars(bars: list[Bar]) -> tuple[int | None, list[Bar]]:
            minute = stages.first_minute(bars) if stages.enabled() else None
            if minute is not None:
                stages.mark("write_start", minute=minute, bars=len(bars))
            minutes = [b for b in bars if b.timeframe == "1m"]
            with timed_batch("postgresql", "ohlcv_1min", len(minutes)):
                written = store.upsert(minutes, refused)
            if minute is not None:
                stages.mark("postgres_done", minute=minute, bars=len(minutes))
            refused.deliver(publisher)
            if len(minutes) < len(bars):  # coarse bars too: publish in order, without the minutes refused
                kept = {id(b) for b in written}
                written = [b for b in bars if b.timeframe != "1m" or id(b) in kept]
            return minute, written

        def publish_bars(stored: tuple[int | None, list[Bar]]) -> None:
            minute, written = stored
            if minute is not None:
                stages.mark("publish_start", minute=minute, bars=len(written))
            with timed_batch("redis", "final_bars", len(written)):
                publisher.publish_final(written)
            if minute is not None:
                stages.mark("redis_done", minute=minute, bars=len(written))

        return Writer(store_bars, _closing(store, publisher), then=publish_bars)

    return _StoreThenPublish("ohlcv_1min", open_writer, parts, first=True, lanes=settings.sink_bar_writers)


def event_sink(settings: OutputSettings, component: str = "detection_flow", parts: int = 1) -> _StoreThenPublish[Event]:
    """Detection records (keyed by symbol): upsert into their tables, then publish on their channels."""

    def open_writer() -> Writer:
        store = EventStore(settings.database_url, max_backoff_s=settings.sink_max_backoff_s)
        publisher = EventPublisher(settings.redis_url, Channels(settings.redis_namespace), **_publisher_options(settings))
        refused = Refusals(settings, "detection records", component)

        def store_events(events: list[Event]) -> list[Event]:
            with timed_batch("postgresql", "detection", len(events)):
                written = store.upsert(events, refused)
            refused.deliver(publisher)
            return written

        def publish_events(written: list[Event]) -> None:
            with timed_batch("redis", "detection", len(written)):
                publisher.publish_events(written)

        return Writer(store_events, _closing(store, publisher), then=publish_events)

    return _StoreThenPublish("detection", open_writer, parts)


class _Newest(StatelessSinkPartition[X], Generic[X]):
    """Live records published behind the flow, the newest of each key: a burst never holds the flow up.

    Live bars, prices and status come every `LIVE_UPDATE_INTERVAL_S` in bursts (every symbol's
    forming bars of every timeframe at once); published in the flow's thread, the burst's Redis round
    trips held up the next input, a minute's closing trades among it. On a thread of their own they
    would share Redis with the final bars, so they wait for those in hand (`_FinalsFirst`), in
    slices of `_LIVE_SLICE`. While they wait, a newer record replaces the one waiting under its
    `key` (a forming bar is worth publishing until the next one of its series comes): what waits is
    at most a record per key (symbols x timeframes), not a queue of bursts. A bounded queue of
    batches here filled at a minute boundary and stopped the flow's thread until the final bars were
    written, so the minute's last partitions closed 400-700 ms late (`bench.ohlcv --latency-only`).
    A record whose `key` is None (an error record) is never replaced; past `_LIVE_MAX_WAITING`
    waiting records (Redis away) the flow waits. Nothing is kept for recovery: a restarted flow
    emits its input's live updates again; `close` publishes what waits first, and a failed write is
    raised by the next batch.
    """

    def __init__(
        self, what: str, write: Callable[[list[X]], None], close: Callable[[], None], key: Callable[[X], Hashable | None],
        after: _FinalsFirst,
    ) -> None:  # fmt: skip
        self._what = what
        self._write = write
        self._close = close
        self._key = key
        self._after = after
        self._superseded = LIVE_SUPERSEDED.labels(what.rpartition("-")[0] or what)
        self._waiting: dict[Hashable, X] = {}
        self._changed = threading.Condition()
        self._closing = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._write_forever, name=f"{what}-writer", daemon=True)
        self._thread.start()

    def write_batch(self, items: list[X]) -> None:
        self._raise_failure()
        if stages.enabled():
            stages.mark("sink_in", sink=self._what, items=len(items), queued=len(self._waiting))
        key = self._key
        with self._changed:
            self._changed.wait_for(lambda: len(self._waiting) < _LIVE_MAX_WAITING or self._failure is not None)
            waiting = self._waiting
            before = len(waiting)
            for item in items:
                k = key(item)
                waiting[object() if k is None else k] = item
            superseded = before + len(items) - len(waiting)
            self._changed.notify_all()
        if superseded:
            self._superseded.inc(superseded)

    def close(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(30)
        self._close()
        self._raise_failure()

    def _write_forever(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting or self._closing)
                if not self._waiting:
                    return  # closing, and everything was written
            self._after.wait()  # the final bars in hand first (at most _LIVE_WAIT_S)
            with self._changed:
                keys = list(itertools.islice(self._waiting, _LIVE_SLICE))
                records = [self._waiting.pop(k) for k in keys]
                self._changed.notify_all()
            try:
                if self._failure is None:
                    self._write(records)  # the publishers retry while Redis is down
            except Exception as exc:
                log.exception("writing %s failed", self._what)
                with self._changed:
                    self._failure = exc
                    self._changed.notify_all()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"{self._what} sink failed: {self._failure}") from self._failure


class _RedisOnly(DynamicSink[X]):
    """Records that go to Redis alone (nothing to store first), published by every worker, newest per `key`."""

    def __init__(
        self, what: str, open_publisher: Callable[[], tuple[Callable[[list[X]], None], Callable[[], None]]],
        key: Callable[[X], Hashable | None],
    ) -> None:  # fmt: skip
        self._what = what
        self._open_publisher = open_publisher
        self._key = key

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Newest[X]:
        return _Newest(f"{self._what}-{worker_index}", *self._open_publisher(), key=self._key, after=_FINALS_FIRST)


P = TypeVar("P", bound=Publisher)


def _redis_only(
    settings: OutputSettings,
    publisher: Callable[..., P],
    publish: Callable[[P, list[X]], None],
    target: str,
    key: Callable[[X], Hashable | None],
) -> _RedisOnly[X]:
    """A sink whose records go to Redis alone through one method of one publisher, timed per batch."""

    def open_publisher() -> tuple[Callable[[list[X]], None], Callable[[], None]]:
        client = publisher(settings.redis_url, Channels(settings.redis_namespace), **_publisher_options(settings))

        def write(records: list[X]) -> None:
            if stages.enabled():
                stages.mark("redis_only_start", sink=target, records=len(records))
            with timed_batch("redis", target, len(records)):
                publish(client, records)
            if stages.enabled():
                stages.mark("redis_only_done", sink=target, records=len(records))

        return write, client.close

    return _RedisOnly(target, open_publisher, key)


def _live_bar_key(bar: Bar) -> tuple[str, str]:
    return bar.symbol, bar.timeframe  # a series' newest forming bar (its closed ones go out as final bars)


def _price_key(price: Price) -> str:
    return price.symbol


def _status_key(status: Status) -> str | None:
    return status.partition if isinstance(status, FlowHealth) else None  # every error record goes out


def live_bar_sink(settings: OutputSettings) -> _RedisOnly[Bar]:
    """Forming-bar updates for dashboards, the newest of each symbol and timeframe."""
    return _redis_only(settings, BarPublisher, BarPublisher.publish_live, "live_bars", _live_bar_key)


def price_sink(settings: OutputSettings) -> _RedisOnly[Price]:
    """Each symbol's last price (throttled by the flow), for dashboards."""
    return _redis_only(settings, PricePublisher, PricePublisher.publish_prices, "prices", _price_key)


def status_sink(settings: OutputSettings) -> _RedisOnly[Status]:
    """The flow's health (the newest per partition) and refused input (every record), for dashboards."""
    return _redis_only(settings, StatusPublisher, StatusPublisher.publish_status, "status", _status_key)
