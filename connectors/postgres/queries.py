"""The bar SQL every reader shares: the analyst API, the gateway's REST and the bar check.

One query per timeframe, so the columns, their types and the range rule (start inclusive, end
exclusive, by bucket start) are the same wherever bars are read. Prices come as float8: what
DataFrame and JSON users compute with (NUMERIC would arrive as Python Decimals).
"""

from __future__ import annotations

from typing import Final

from psycopg import sql

from schemas.sessions import SESSIONS
from schemas.timeframes import TIMEFRAMES

BAR_COLUMNS: Final = (
    "symbol, timestamp, open::float8 AS open, high::float8 AS high, low::float8 AS low, close::float8 AS close,"
    " volume, vwap::float8 AS vwap, trades"
)
IN_RANGE: Final = " WHERE symbol = ANY(%(symbols)s) AND timestamp >= %(start)s AND timestamp < %(end)s"
"""Rows of the symbols whose bucket starts in [start, end) (parameters `symbols`, `start`, `end`)."""

BARS_IN_RANGE: Final[dict[str, sql.Composed]] = {
    name: sql.SQL("SELECT " + BAR_COLUMNS + " FROM {table}" + IN_RANGE + " ORDER BY symbol, timestamp").format(
        table=sql.Identifier(t.table)
    )
    for name, t in TIMEFRAMES.items()
}
"""Per timeframe name: the bars of `symbols` starting in [`start`, `end`), oldest first per symbol."""

SESSION_BARS_IN_RANGE: Final[dict[str, sql.Composed]] = {
    name: sql.SQL("SELECT " + BAR_COLUMNS + ", day FROM {table}" + IN_RANGE + " ORDER BY symbol, timestamp").format(
        table=sql.Identifier(s.table)
    )
    for name, s in SESSIONS.items()
}
"""Per session name (`schemas.sessions.SESSIONS`): daily bars of that session whose open is in [`start`,
`end`), with their US/Eastern `day`, oldest first per symbol (migration 0006's views)."""
