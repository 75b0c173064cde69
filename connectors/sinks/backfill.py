"""The backfill's sinks: the database only, nothing on Redis.

A backfill writes a past day. Published on the live channels, its bars would reach dashboards as
if they were the newest (a chart would draw a day-old candle at its right edge) and push the real
recent messages out of each channel's catch-up history; under a namespace of its own nobody would
read them. So its sinks only write the tables, where dashboards find the day through the REST API
(`/api/bars`) like any other history. Records the database refuses still go to the backfill's
dead-letter topic, with the reason.

Same write-behind as the live sinks (`connectors.sinks.records`): a bounded queue, drained at
every epoch's end and at the end of input.
"""

from __future__ import annotations

from connectors.postgres.backfill import BackfillBarStore, Tally
from connectors.postgres.events import EventStore
from connectors.sinks.records import Refusals, Writer, _closing, _StoreThenPublish
from connectors.sinks.settings import OutputSettings
from schemas.bars import Bar
from schemas.events import Event


def backfill_bar_sink(settings: OutputSettings, tally: Tally) -> _StoreThenPublish[Bar]:
    """Final bars into `ohlcv_1min` by the backfill's rule (`connectors.postgres.backfill`), counted in `tally`."""

    def open_writer() -> Writer:
        store = BackfillBarStore(settings.database_url, tally, max_backoff_s=settings.sink_max_backoff_s)
        refused = Refusals(settings, "ohlcv_1min", "backfill")

        def write(bars: list[Bar]) -> None:
            store.upsert([b for b in bars if b.timeframe == "1m"], refused)  # the table's; the views roll up the rest
            refused.deliver(None)

        return Writer(write, _closing(store))

    return _StoreThenPublish("ohlcv_1min", open_writer)


def backfill_event_sink(settings: OutputSettings) -> _StoreThenPublish[Event]:
    """Detection records into their tables (the live flow's idempotent upserts, except that a row of a
    higher revision, amended or retracted by the live flow, is replaced too: the files are the day's truth)."""

    def open_writer() -> Writer:
        store = EventStore(settings.database_url, max_backoff_s=settings.sink_max_backoff_s, any_revision=True)
        refused = Refusals(settings, "detection records", "backfill")

        def write(events: list[Event]) -> None:
            store.upsert(events, refused)
            refused.deliver(None)

        return Writer(write, _closing(store))

    return _StoreThenPublish("detection", open_writer)
