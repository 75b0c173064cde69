"""Polygon flat files (trades_v1, quotes_v1, minute_aggs_v1; gzipped CSV) as feed events.

A flat file is outside input, so every value is checked before it becomes an event: a row that
cannot become a valid feed event comes back refused, with its row number (1 = the first row
after the header), the reason and its fields as JSON; the other rows come back as the event
JSON the live feed sends, in event-time order. A file that cannot be read at all (missing,
truncated or corrupt gzip, no header, a required column missing) is a `FlatFileError` naming
the file.

Read it in this order: `kinds` (the three kinds and their columns), `read` (the rows, as text),
`checks` (what a row must pass), `events` (encoding, `flat_file`, `merged_events`). Kafka is
not here: `connectors.feeds.replay` publishes what this returns.
"""

from connectors.feeds.flat_files.events import FlatFile, flat_file, flat_file_events, merge, merged_events
from connectors.feeds.flat_files.kinds import REQUIRED, SCHEMAS, FlatFileError, Kind, kind_of
from connectors.feeds.flat_files.read import read_flat_file

__all__ = [
    "REQUIRED",
    "SCHEMAS",
    "FlatFile",
    "FlatFileError",
    "Kind",
    "flat_file",
    "flat_file_events",
    "kind_of",
    "merge",
    "merged_events",
    "read_flat_file",
]
