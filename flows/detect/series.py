"""One symbol's recent final bars as contiguous numpy columns, oldest first: what TA-Lib reads.

Keeps the newest `window` bars. A bar for a minute already held replaces it (a revision); one
for a missing minute between held ones is inserted in time order. Column views are
zero-copy, so computing an indicator costs TA-Lib's time, not Python's.

>>> s = BarSeries(window=3)
>>> for minute in range(5):
...     _ = s.upsert(minute * 60_000, 10.0, 11.0, 9.0, 10.0 + minute, 100, 10.0)
>>> s.close.tolist(), len(s)
([12.0, 13.0, 14.0], 3)
>>> s.upsert(3 * 60_000, 10.0, 11.0, 9.0, 99.0, 100, 10.0)    # a revision of the middle bar
1
>>> s.close.tolist()
[12.0, 99.0, 14.0]
"""

from __future__ import annotations

import numpy as np

FIELDS = ("timestamp", "open", "high", "low", "close", "volume", "vwap")
_SLACK = 64  # appends between two compactions
_FIRST = 32  # bars a new series has room for


class BarSeries:
    __slots__ = ("window", "evicted", "_data", "_start", "_end")

    def __init__(self, window: int) -> None:
        self.window = window
        self.evicted: np.ndarray | None = None  # the bar the last upsert pushed out of the window, if any
        # room for a few bars at first, doubled as they come (up to the window and the slack): most
        # detectors of the coarser timeframes, and of symbols seen lately, never hold a whole window
        self._data = np.zeros((len(FIELDS), min(window + _SLACK, _FIRST)), dtype=np.float64)
        self._start = 0
        self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    def _column(self, row: int) -> np.ndarray:
        return self._data[row, self._start : self._end]

    def columns(self) -> np.ndarray:
        """All columns at once (rows in FIELDS order), e.g. `t, o, h, l, c, v, vw = s.columns()`."""
        return self._data[:, self._start : self._end]

    @property
    def timestamp(self) -> np.ndarray:
        return self._column(0)

    @property
    def open(self) -> np.ndarray:
        return self._column(1)

    @property
    def high(self) -> np.ndarray:
        return self._column(2)

    @property
    def low(self) -> np.ndarray:
        return self._column(3)

    @property
    def close(self) -> np.ndarray:
        return self._column(4)

    @property
    def volume(self) -> np.ndarray:
        return self._column(5)

    @property
    def vwap(self) -> np.ndarray:
        return self._column(6)

    @property
    def last_timestamp(self) -> int | None:
        return int(self._data[0, self._end - 1]) if self._end > self._start else None

    @property
    def first_timestamp(self) -> float:
        """The oldest held bar's start, a plain float (numpy scalars compare slowly); +inf when empty."""
        return float(self._data[0, self._start]) if self._end > self._start else float("inf")

    def row(self, t: int) -> tuple[float, ...] | None:
        """The held bar starting at `t` (open, high, low, close, volume, vwap), or None."""
        times = self.timestamp
        i = int(np.searchsorted(times, t))
        if i < len(times) and times[i] == t:
            return tuple(self._data[1:, self._start + i].tolist())
        return None

    def upsert(self, t: int, o: float, h: float, low: float, c: float, v: float, vw: float) -> int:
        """Add or replace the bar starting at `t`; returns its index (0 = oldest held)."""
        row = (t, o, h, low, c, v, vw)
        self.evicted = None
        if self._end == self._start or t > self._data[0, self._end - 1]:
            return self._append(row)
        times = self.timestamp
        i = int(np.searchsorted(times, t))
        if times[i] == t:
            self._data[:, self._start + i] = row
            return i
        if i == 0 and len(self) >= self.window:
            return -1  # older than everything the window keeps: nothing to compute it with
        if self._end == self._data.shape[1]:
            self._compact()
        at = self._start + i  # shift the newer bars one to the right, then write this one
        self._data[:, at + 1 : self._end + 1] = self._data[:, at : self._end].copy()
        self._data[:, at] = row
        self._end += 1
        if len(self) > self.window:
            self.evicted = self._data[:, self._start].copy()
            self._start += 1
            i -= 1
        return i

    def push(self, t: int, o: float, h: float, low: float, c: float, v: float, vw: float) -> tuple[float, float, float] | None:
        """Append a bar newer than every one held (the hot path: one per bar); returns the bar it
        pushed out of the window as (timestamp, volume, vwap), or None. `evicted` is not set."""
        end = self._end
        data = self._data
        if end == data.shape[1]:
            self._compact()
            end, data = self._end, self._data
        data[:, end] = (t, o, h, low, c, v, vw)
        self._end = end + 1
        if end + 1 - self._start > self.window:
            start = self._start
            self._start = start + 1
            gone = data[:, start].tolist()
            return gone[0], gone[5], gone[6]
        return None

    def _append(self, row: tuple) -> int:
        if self._end == self._data.shape[1]:
            self._compact()
        self._data[:, self._end] = row
        self._end += 1
        if self._end - self._start > self.window:
            self.evicted = self._data[:, self._start].copy()
            self._start += 1
        return self._end - self._start - 1

    def _compact(self) -> None:
        """Room for one more bar at the end: a larger buffer while the window is not full, else the
        held bars moved to the front."""
        held = self._end - self._start
        room = self._data.shape[1]
        if room < self.window + _SLACK and held * 2 > room:
            self._reserve(min(self.window + _SLACK, 2 * room))
            return
        self._data[:, :held] = self._data[:, self._start : self._end]
        self._start, self._end = 0, held

    def _reserve(self, room: int) -> None:
        """A buffer for `room` bars, the held ones at its front."""
        held = self._end - self._start
        data = np.zeros((len(FIELDS), room), dtype=np.float64)
        data[:, :held] = self._data[:, self._start : self._end]
        self._data, self._start, self._end = data, 0, held

    # ---- recovery ----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The held bars, raw float64 (7 x n): compact and fast to pickle."""
        return self._data[:, self._start : self._end].tobytes()

    @classmethod
    def restore(cls, raw: bytes, window: int) -> BarSeries:
        series = cls(window)
        held = np.frombuffer(raw, dtype=np.float64).reshape(len(FIELDS), -1)[:, -window:]
        if held.shape[1] > series._data.shape[1]:
            series._data = np.zeros((len(FIELDS), min(window + _SLACK, held.shape[1] + _FIRST)), dtype=np.float64)
        series._data[:, : held.shape[1]] = held
        series._end = held.shape[1]
        return series
