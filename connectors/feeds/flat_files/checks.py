"""The checks a flat-file row passes before it becomes a feed event, and the reason when it does not.

Every value is checked: a field missing or not a number, NaN/inf, a price or size out of the
feed schema's range (`schemas.polygon`), an integer beyond int64, a time at or before 1970,
after the wall clock or outside the file's day, a ticker that is not a symbol
(`schemas.symbols`), conditions that are not integer codes. The checks are polars expressions,
so a file is judged without Python per row; the first check a row fails gives its reason and
dead-letter kind.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final

import polars as pl
from msgspec import Meta

from connectors.feeds.flat_files.kinds import REQUIRED, Kind
from schemas.polygon import MAX_CODES, MAX_TRADE_ID, Code, Count, EpochMs, Price, Size, bounds
from schemas.symbols import RULE, SYMBOL_PATTERN

_PRICE_LOW, _, _PRICE_HIGH, _ = bounds(Price)  # the feed schema's bounds (both excluded)
_MAX_WHOLE = 2.0**63  # a size's whole part must fit int64
_INT64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]  # ns times: their range is checked in ms below
_MAX_SIZE = float(bounds(Size)[2]) + 1  # sizes (and minute volumes) as the feed schema bounds them
_MS_PER_DAY = 86_400_000
FUTURE_MARGIN_MS = _MS_PER_DAY  # a flat file holds history: nothing after the wall clock plus this
_CODES = r"^ *(0|[1-9]\d{0,8})( *, *(0|[1-9]\d{0,8}))* *$"  # condition / indicator codes, as JSON spells them
SYMBOL_REGEX: Final = f"^(?:{SYMBOL_PATTERN})$"
_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_SHOWN = 40  # characters of a bad value quoted in its reason


def _shown(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.String).str.slice(0, _SHOWN)


def _why(template: str, col: str) -> pl.Expr:
    """`template` with `{}` replaced by the column's raw value (cut to _SHOWN characters)."""
    before, after = template.split("{}")
    return pl.concat_str(pl.lit(before), _shown(col), pl.lit(after))


class Checks:
    """The typed columns of a kind and the checks on them, in the order reasons are given."""

    def __init__(self, schema: dict[str, pl.DataType]) -> None:
        self.columns = schema  # read as text, or already as the number they should be
        self.typed: dict[str, pl.Expr] = {}
        self.checks: list[tuple[pl.Expr, pl.Expr, str]] = []  # condition, reason, dead-letter kind

    def _present(self, col: str, dtype: pl.DataType) -> bool:
        if col not in self.columns:
            self.typed[col] = pl.lit(None, dtype=dtype)  # an optional column the file does not have
            return False
        return True

    def required(self, *cols: str) -> None:
        for col in cols:
            self.checks.append((pl.col(col).is_null(), pl.lit(f"{col} is missing"), "malformed"))

    def symbol(self, col: str) -> None:
        self.typed[col] = pl.col(col)
        self.checks.append(
            (~pl.col(col).str.contains(SYMBOL_REGEX), _why(f"{col} '{{}}' is not a symbol ({RULE})", col), "malformed")
        )

    def text(self, col: str, max_chars: int) -> None:
        self.typed[col] = pl.col(col)
        self.checks.append((pl.col(col).str.contains("\ufffd", literal=True),
                            pl.lit(f"{col} is not valid UTF-8"), "malformed"))  # fmt: skip
        self.checks.append((pl.col(col).str.len_chars() > max_chars,
                            pl.lit(f"{col} is longer than {max_chars} characters"), "malformed"))  # fmt: skip

    def integer(self, col: str, kind: object = Count) -> pl.Expr:
        """An integer column within the feed schema's range for `kind` (an Annotated type of schemas.polygon)."""
        if not self._present(col, pl.Int64()):
            return self.typed[col]
        if self.columns[col] == pl.Int64:
            self.typed[col] = value = pl.col(col)
        else:
            value = pl.col(col).cast(pl.Int64, strict=False)
            self.typed[col] = value
            self.checks.append((pl.col(col).is_not_null() & value.is_null(),
                                _why(f"{col} '{{}}' is not an integer within int64", col), "malformed"))  # fmt: skip
        low, low_in, high, high_in = bounds(kind)
        outside = (value < low if low_in else value <= low) | (value > high if high_in else value >= high)
        self.checks.append((outside, _why(f"{col} '{{}}' is outside {low}..{high}", col), "malformed"))
        return value

    def number(self, col: str, low: float, high: float, what: str, low_open: bool = False) -> pl.Expr:
        if not self._present(col, pl.Float64()):
            return self.typed[col]
        if self.columns[col] == pl.Float64:
            value = pl.col(col)
        else:
            value = pl.col(col).cast(pl.Float64, strict=False)
            self.checks.append((pl.col(col).is_not_null() & value.is_null(),
                                _why(f"{col} '{{}}' is not a number", col), "malformed"))  # fmt: skip
        self.typed[col] = value
        too_low = value <= low if low_open else value < low
        self.checks += [
            (value.is_nan() | value.is_infinite(), _why(f"{col} '{{}}' is not a finite number", col), "malformed"),
            (too_low | (value >= high), _why(f"{col} '{{}}' is not {what}", col), "malformed"),
        ]
        return value

    def codes(self, col: str) -> None:
        if not self._present(col, pl.String()):
            return
        self.typed[col] = pl.col(col)
        self.checks.append((pl.col(col).is_not_null() & ~pl.col(col).str.contains(_CODES),
                            _why(f"{col} '{{}}' are not integer codes (digits, no leading zero, commas between)", col),
                            "malformed"))  # fmt: skip
        self.checks.append((pl.col(col).str.count_matches(",", literal=True) >= MAX_CODES,
                            pl.lit(f"{col}: more than {MAX_CODES} codes"), "malformed"))  # fmt: skip

    def time_ns(self, col: str, now_ms: int, day: tuple[int, int] | None) -> None:
        if not self._present(col, pl.Int64()):
            return
        value = self.integer(col, _INT64)
        ms = value // 1_000_000
        first, _, last, _ = bounds(EpochMs)
        self.checks.append(((ms < first) | (ms >= last),
                            _why(f"{col} '{{}}' is not a time in 2000-2099 (ns)", col), "malformed"))  # fmt: skip
        self.checks.append((ms > now_ms + FUTURE_MARGIN_MS,
                            _why(f"{col} '{{}}' is after the wall clock: a flat file holds history", col), "future"))  # fmt: skip
        if day is not None:
            start, end = day
            self.checks.append(((ms < start) | (ms >= end), _why(f"{col} '{{}}' is outside the file's day", col),
                                "malformed"))  # fmt: skip


def file_day(path: Path) -> tuple[int, int] | None:
    """A Polygon flat file is one day (named YYYY-MM-DD): its rows fall from the day before to
    the day after (ms), whatever the time zone; None when the name has no date."""
    found = _DAY.search(path.name)
    if not found:
        return None
    try:
        day = datetime(int(found[1]), int(found[2]), int(found[3]), tzinfo=UTC)
    except ValueError:
        return None
    start = int(day.timestamp() * 1000)
    return start - _MS_PER_DAY, start + 2 * _MS_PER_DAY


def checks_for(kind: Kind, schema: dict[str, pl.DataType], now_ms: int, day: tuple[int, int] | None) -> Checks:
    c = Checks(schema)
    c.required(*REQUIRED[kind])
    c.symbol("ticker")
    if kind == "trades":
        c.integer("exchange", Code)
        c.text("id", MAX_TRADE_ID)
        c.number("price", _PRICE_LOW, _PRICE_HIGH, f"a price ({_PRICE_LOW:g} < p < {_PRICE_HIGH:g})", low_open=True)
        c.number("size", 0, _MAX_SIZE, f"a size (0 <= s < {_MAX_SIZE:g})")
        c.codes("conditions")
        c.time_ns("sip_timestamp", now_ms, day)
        c.integer("tape", Code)
        c.integer("sequence_number", Count)
        c.integer("trf_id", Code)
        c.time_ns("trf_timestamp", now_ms, None)
    elif kind == "quotes":
        for col in ("bid_price", "ask_price"):
            c.number(col, 0, _PRICE_HIGH, f"a quote price (0 <= p < {_PRICE_HIGH:g})")
        for col in ("bid_size", "ask_size"):
            c.number(col, 0, _MAX_WHOLE, "a size (0 <= s < 2^63)")
        for col in ("bid_exchange", "ask_exchange", "tape"):
            c.integer(col, Code)
        c.integer("sequence_number", Count)
        c.codes("conditions")
        c.codes("indicators")
        c.time_ns("sip_timestamp", now_ms, day)
    else:
        c.number("volume", 0, _MAX_SIZE, f"a volume (0 <= v < {_MAX_SIZE:g})")
        for col in ("open", "close", "high", "low"):
            c.number(col, _PRICE_LOW, _PRICE_HIGH, f"a price ({_PRICE_LOW:g} < p < {_PRICE_HIGH:g})", low_open=True)
        c.time_ns("window_start", now_ms, day)
    return c
