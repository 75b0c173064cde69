"""Everything detected on one symbol's final bars of one timeframe: indicator values, alerts, patterns, trends, surges.

A new bar is judged when it closes: it gets its indicator values, and the alert rules,
candlestick patterns, trend and surge checks run on the series ending at it. A revision (or
a bar that closes late, between bars already held) corrects the series, re-emits the
indicator values of that bar and of every later one (TA-Lib's values depend on the past),
and makes the decisions on those bars again, since their windows include the changed bar:
an event that no longer holds goes out again `retracted`, one that holds differently
`amended` (same id, a higher revision), one that now qualifies `detected`; one that holds as
it was is not repeated. Why again rather than never: a subscriber that acted on an alert must
learn that the market's correction took it back.

The bound: decisions are remembered, and so re-made, for the last `replay_bars` + 1 bars (the
bars whose indicator state is kept, 33 by default; the bar flow revises within
ALLOWED_LATENESS_S, 15 one-minute bars by default). A revision of an older bar corrects the
indicator values but re-makes only the remembered decisions; the trend before them is taken
as it was decided. The memory is in the snapshot, so a restart re-makes the same decisions.

Bars without prices (only volume-only trades in the bucket) are skipped.

>>> from flows.detect.settings import DetectionSettings
>>> d = BarDetector("AAPL", DetectionParams(DetectionSettings()))
>>> bar = Bar(symbol="AAPL", timestamp=60_000, open=10.0, high=10.5, low=9.5, close=10.0,
...           volume=100, vwap=10.0, trades=3, revision=0, status="final")
>>> [(e.kind, e.type) for e in d.on_bar(bar)]
[('indicator', 'values')]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from hashlib import blake2b as _blake2b
from typing import Any

import msgspec
import numpy as np
from msgspec.structs import replace as _replace

from flows.detect import indicators, patterns, surge, trend
from flows.detect.series import BarSeries
from flows.detect.settings import DetectionSettings
from flows.detect.streaming import EMPTY, Indicators, State, Values
from schemas.bars import Bar
from schemas.events import Alert, Event, IndicatorValues, ParamValue, PatternEvent, SurgeEvent, TrendEvent, stable_id
from schemas.sessions import session_of
from schemas.timeframes import TimeframeName as Timeframe

# 3: with the decisions of the recent bars and their indicator states (a revision after a restart
# replays as without one); 2 (with the streaming indicator state) and 1 still restore
SNAPSHOT_VERSION = 3
_CONFIDENCE = tuple(round(warm / 11, 4) for warm in range(12))  # share of the 11 values that are warm
_UNWARM: Values = (None,) * 10
_NONE: tuple[BarEvent, ...] = ()

# What was decided on one recent bar: its start, the trend direction and the last non-flat one
# before it (the trend detector's state going in), and the records that went out for it (as
# last sent: a retracted one is kept, so it can come back amended).
BarEvent = TrendEvent | SurgeEvent | PatternEvent | Alert  # what is decided on bars (indicator values are not)
Decided = tuple[int, str, str, Sequence[BarEvent]]
_decided_decoder = msgspec.msgpack.Decoder(list[tuple[int, str, str, list[BarEvent]]])


class DetectionParams:
    """Settings resolved once per flow and shared by every symbol (and the `params` each record carries)."""

    def __init__(self, cfg: DetectionSettings) -> None:
        self.cfg = cfg
        ind, alerts = cfg.indicators, cfg.alerts
        self.compute_indicators = cfg.enabled and (ind.enabled or alerts.enabled)
        self.indicator_params: dict[str, Any] = indicators.params(ind)
        self.trend_params: dict[str, ParamValue] = {"bars": cfg.trend.bars, "min_strength": cfg.trend.min_strength}
        self.volume_params = {"volume_multiple": cfg.surge.volume_multiple, "volume_bars": cfg.surge.volume_bars}
        self.price_params = {"price_pct": cfg.surge.price_pct, "price_bars": cfg.surge.price_bars}
        self.pattern_params = {name: {"talib": fn.__name__, "bars": patterns.BARS} for name, (fn, _, _) in patterns.TABLE.items()}
        self.pattern_entries = patterns.select(cfg.patterns.names)
        self.indicators_on = cfg.enabled and ind.enabled
        self.alerts_on = cfg.enabled and alerts.enabled
        self.patterns_on = cfg.enabled and cfg.patterns.enabled
        self.trend_on = cfg.enabled and cfg.trend.enabled
        self.surge_on = cfg.enabled and cfg.surge.enabled
        self.alert_params: dict[str, dict[str, ParamValue]] = {
            "rsi": {"rsi_period": ind.rsi_period, "rsi_upper": alerts.rsi_upper, "rsi_lower": alerts.rsi_lower},
            "macd": {"macd_fast": ind.macd_fast, "macd_slow": ind.macd_slow, "macd_signal": ind.macd_signal},
            "bb_upper": {"bb_period": ind.bb_period, "bb_stddev": ind.bb_stddev},
            "bb_lower": {"bb_period": ind.bb_period, "bb_stddev": ind.bb_stddev},
        }
        self.critical = frozenset(alerts.critical)
        self.indicators = Indicators(ind)
        self.replay_bars = ind.replay_bars
        # bars each new bar reads as lists: the indicators' closes, the patterns' candles, trend, surges
        self.tail = max(self.indicators.trail, patterns.BARS, cfg.trend.bars, cfg.surge.volume_bars + 1, cfg.surge.price_bars + 2)


_encode_entry = msgspec.msgpack.Encoder().encode


class StateTrail:
    """The indicator state and values after each of a detector's last bars (a bounded deque,
    oldest first), each kept as its msgpack encoding.

    Why encoded: a revision replays from the state of the bar before it, so the states of the last
    `replay_bars` + 1 bars are kept, and as tuples of floats they were most of the flow's memory
    (~950 bytes a bar, 32 KB a detector: 650 MB at 4,000 symbols and five timeframes); encoded they
    take a third of that. A snapshot (every epoch a detector got a bar in) joins the encodings
    (`msgspec.Raw`: the same bytes as encoding the entries) instead of encoding them all again, and
    only a revision decodes one. Timestamps are kept beside them, to find an entry without decoding.
    """

    __slots__ = ("_times", "_raw")

    def __init__(self, maxlen: int) -> None:
        self._times: deque[int] = deque(maxlen=maxlen)
        self._raw: deque[bytes] = deque(maxlen=maxlen)  # (timestamp, state, values), encoded

    def append(self, t: int, state: State, values: Values) -> None:
        self._times.append(t)
        self._raw.append(_encode_entry((t, state, values)))

    def state_at(self, t: int | None) -> tuple[State, Values] | None:
        """The state and values after the bar at `t`, if it is among the kept ones."""
        times = self._times
        for i in range(len(times) - 1, -1, -1):
            if times[i] == t:
                _, state, values = msgspec.msgpack.decode(self._raw[i])
                return tuple(state), tuple(values)  # msgpack gives lists of the same fields
        return None

    def drop_from(self, t: float) -> None:
        """Forget the entries of the bars at or after `t`."""
        times, raw = self._times, self._raw
        while times and times[-1] >= t:
            times.pop()
            raw.pop()

    def encoded(self) -> list[msgspec.Raw]:
        """Every entry's msgpack encoding, oldest first: encoded as a list, the same bytes as the entries'."""
        return list(map(msgspec.Raw, self._raw))

    def __len__(self) -> int:
        return len(self._times)


class BarDetector:
    """One symbol's series and the little state its detectors keep between bars."""

    def __init__(self, symbol: str, params: DetectionParams, timeframe: Timeframe = "1m") -> None:
        self.symbol = symbol
        self.timeframe = timeframe
        self.p = params
        self.series = BarSeries(params.cfg.indicators.window)
        self.revisions: dict[int, int] = {}  # bar start -> revision, for bars held with revision > 0
        self.trend = "flat"  # direction at the last bar
        self.last_trend = "flat"  # the last direction that was not flat
        self.session_start = self.session_end = 0  # the session of the newest bar, for its VWAP
        self.evicted_pv = self.evicted_v = 0.0  # its bars that left the window: sum of vwap * volume, of volume
        self.total_pv = self.total_v = 0.0  # all its bars
        # TA-Lib's indicators over every bar seen (streaming.py): the state after the newest bar, its
        # values, and (timestamp, state, values) of the recent bars, to replay a revision from
        self.state: State = EMPTY
        self.values: Values = _UNWARM
        self.recent = StateTrail(params.replay_bars + 1)
        # the decisions on as many recent bars, oldest first, to make them again after a revision
        self.decided: deque[Decided] = deque(maxlen=params.replay_bars + 1)
        self._id_prefix = f"indicator|{symbol}|{timeframe}|"
        self._tail: list[list[float]] | None = None  # o, h, l, c, v of the last `params.tail` bars, as lists
        self._last = -1  # the newest bar's start (-1: none yet)
        self._pattern_id = f"pattern|{symbol}|{timeframe}|"

    # ---- input ---------------------------------------------------------------------------

    def warm(self, rows: list[tuple[int, float, float, float, float, float, float]]) -> None:
        """Seed the series with bars from before the flow saw this symbol (oldest first), silently."""
        for t, o, h, low, c, v, vw in rows:
            if c is not None and o is not None and h is not None and low is not None:
                self._add(t, o, h, low, c, v, vw if vw is not None else c)
        self._tail = None
        self._restep(0, EMPTY)

    def on_bar(self, bar: Bar) -> list[Event]:
        """What a final bar (or a revision) produces."""
        if bar.close is None or bar.open is None or bar.high is None or bar.low is None:
            return []
        t = bar.timestamp
        is_new = t > self._last
        vwap = bar.vwap if bar.vwap is not None else bar.close
        if is_new:
            self._push(t, bar.open, bar.high, bar.low, bar.close, float(bar.volume), vwap)
        else:
            if self._seen(bar, vwap):
                return []
            at = self._add(t, bar.open, bar.high, bar.low, bar.close, float(bar.volume), vwap)
            if at < 0:
                return []  # older than the whole window
        if bar.revision:
            self.revisions[t] = bar.revision
        p = self.p
        if not is_new:
            self._tail = None  # the recent bars changed: read them again from the series
            return self._revise(at)
        tail = self._tail
        if tail is None:
            s = self.series
            tail = self._tail = s._data[1:6, max(s._start, s._end - p.tail) : s._end].tolist()
        else:
            for column, x in zip(tail, (bar.open, bar.high, bar.low, bar.close, float(bar.volume)), strict=True):
                column.append(x)
            if len(tail[0]) > p.tail:
                for column in tail:
                    del column[0]
        o, h, low, c, v = tail
        before = values = self.values
        if p.compute_indicators:
            self.state, values = p.indicators.step(self.state, h[-1], low[-1], c)
            self.values = values
            self.recent.append(t, self.state, values)
        out: list[Event] = []
        if p.indicators_on:
            total_v = self.total_v
            vwap_now = self.total_pv / total_v if total_v > 0 and t >= self.session_start else None
            out.append(self._indicator_record(t, values, vwap_now))
        trend_before, last_before = self.trend, self.last_trend
        found = self._decide(t, bar.revision, o, h, low, c, v, before, values, self.series._end)
        self.decided.append((t, trend_before, last_before, found or _NONE))
        if found:
            out.extend(found)
        return out

    def _decide(
        self, t: int, revision: int, o: list[float], h: list[float], low: list[float], c: list[float], v: list[float],
        before: Values, values: Values, end: int,
    ) -> list[BarEvent]:  # fmt: skip
        """The events of the bar at `t`: the last candles as lists (o..v, ending at it), the indicator
        values of the bar before and of this one, and its column end in the series' buffer. Moves the
        trend state on by one bar."""
        p = self.p
        found: list[BarEvent] = []
        if p.alerts_on and len(c) > 1:
            fired = indicators.alerts_at(p.cfg.alerts, before, values, c[-2], c[-1])
            if fired:
                found.extend(self._alerts(fired, t, revision))
        if p.patterns_on:
            found.extend(self._patterns(t, revision, o, h, low, c, v, end))
        if p.trend_on:
            found.extend(self._trend(t, revision, c[-1], end))
        if p.surge_on:
            found.extend(self._surges(t, revision, o[-1], c, v))
        return found

    def _revise(self, at: int) -> list[Event]:
        """A revised or inserted bar at index `at`: its indicator values and every later bar's again,
        then the decisions on those bars again (see the module's docstring)."""
        values = self._values_from(at)
        out: list[Event] = []
        if self.p.indicators_on:
            times = self.series.timestamp
            vwaps = self._session_vwaps(at)
            for offset, j in enumerate(range(at, len(times))):
                out.append(self._indicator_record(int(times[j]), values[offset + 1], vwaps[offset]))
        out.extend(self._redecide(at, values))
        return out

    def _values_from(self, at: int) -> list[Values]:
        """Step bar `at` and every later bar again from the state of the bar before it (kept for the
        last `replay_bars` bars; else from the window's first bar, as if the series began there).
        Returns the values of bars at-1 (all None when at is 0) to the newest."""
        times = self.series.timestamp
        before = int(times[at - 1]) if at > 0 else None
        start: State | None = None
        prior = _UNWARM
        kept = self.recent.state_at(before)
        if kept is not None:
            start, prior = kept
        if start is None and at == 0 and self.state[0] < len(self.series):
            start = EMPTY  # every bar stepped so far is still held: nothing was before it
        if start is None:
            stepped = self._restep(0, EMPTY)
            return [stepped[at - 1] if at > 0 else _UNWARM, *stepped[at:]]
        return [prior, *self._restep(at, start)]

    def _redecide(self, at: int, values: list[Values]) -> list[Event]:
        """Make the remembered decisions from bar `at` on again (`values`: of bars at-1 .. newest) and
        return what changed: retracted, amended and newly detected records."""
        decided = self.decided
        s = self.series
        times = s.timestamp
        t_at = int(times[at])
        old: dict[int, Sequence[BarEvent]] = {}
        going_in: tuple[str, str] | None = None
        while decided and decided[-1][0] >= t_at:
            t, trend_before, last_before, records = decided.pop()
            old[t] = records
            going_in = (trend_before, last_before)
        if going_in is None:
            return []  # nothing decided from there on (only warm-start bars)
        first = at
        if not decided and t_at not in old:  # older than what is remembered: from the oldest remembered bar
            first = int(np.searchsorted(times, min(old)))
        self.trend, self.last_trend = going_in
        p = self.p
        data, start, n = s._data, s._start, len(times)
        out: list[Event] = []
        for j in range(first, n):
            t = int(times[j])
            end = start + j + 1
            o, h, low, c, v = data[1:6, max(start, end - p.tail) : end].tolist()
            trend_before, last_before = self.trend, self.last_trend
            revision = self.revisions.get(t, 0)
            found = self._decide(t, revision, o, h, low, c, v, values[j - at], values[j - at + 1], end)
            kept = _reconcile(old.get(t, _NONE), found, revision, out)
            decided.append((t, trend_before, last_before, kept or _NONE))
        return out

    def _restep(self, at: int, state: State) -> list[Values]:
        """Step the indicators from bar `at` of the series to the newest, starting from `state`;
        returns the values of those bars (all None when indicators are not computed)."""
        if not self.p.compute_indicators:
            return [_UNWARM] * (len(self.series) - at)
        s = self.series
        ind = self.p.indicators
        times = s.timestamp.tolist()
        _, _, h, low, c, _, _ = s.columns().tolist()
        recent = self.recent
        recent.drop_from(times[at] if at < len(times) else 0)
        values = self.values if at >= len(times) else _UNWARM
        trail = ind.trail
        stepped = []
        for j in range(at, len(times)):
            state, values = ind.step(state, h[j], low[j], c[max(0, j - trail + 1) : j + 1])
            recent.append(int(times[j]), state, values)
            stepped.append(values)
        self.state, self.values = state, values
        return stepped

    def _seen(self, bar: Bar, vwap: float) -> bool:
        """An older revision than the one held, or the very bar held: a repeat from upstream, nothing to do.

        (The bar flow delivers at least once: after a restart it may send bars again.)
        """
        held = self.revisions.get(bar.timestamp, 0)
        if bar.revision < held:
            return True
        row = self.series.row(bar.timestamp)
        return bar.revision == held and row == (bar.open, bar.high, bar.low, bar.close, float(bar.volume), vwap)

    def _push(self, t: int, o: float, h: float, low: float, c: float, v: float, vw: float) -> None:
        """`_add` for a bar newer than every one held, without its general case."""
        if t >= self.session_end:
            self.session_start, self.session_end = session_of(t)[1:]
            self.evicted_pv = self.evicted_v = self.total_pv = self.total_v = 0.0
        gone = self.series.push(t, o, h, low, c, v, vw)
        self._last = t
        if gone is not None and gone[0] >= self.session_start:
            self.evicted_pv += gone[2] * gone[1]
            self.evicted_v += gone[1]
        if t >= self.session_start:
            self.total_pv += vw * v
            self.total_v += v

    def _add(self, t: int, o: float, h: float, low: float, c: float, v: float, vw: float) -> int:
        """Put a bar in the series and keep the session VWAP sums.

        The sums are sequential over the session's bars in time order (a bar pushed out of the
        window moves from the window to the evicted part, the totals keep it), so the same bars
        give bit-identical VWAPs however they arrived: appends add to the totals, corrections
        recount them from the window.
        """
        s = self.series
        if t >= self.session_end:
            self.session_start, self.session_end = session_of(t)[1:]
            self.evicted_pv = self.evicted_v = self.total_pv = self.total_v = 0.0
        last = s.last_timestamp
        at = s.upsert(t, o, h, low, c, v, vw)
        if at < 0:
            return at
        self._last = int(s.timestamp[-1])
        gone = s.evicted
        if gone is not None and gone[0] >= self.session_start:
            self.evicted_pv += float(gone[6] * gone[5])
            self.evicted_v += float(gone[5])
        if last is None or t > last:
            if t >= self.session_start:
                self.total_pv += vw * v
                self.total_v += v
        else:
            pv, volume, _ = self._session_sums()
            self.total_pv, self.total_v = float(pv[-1]), float(volume[-1])
        return at

    def _session_sums(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Running session sums of vwap x volume and of volume after each bar of the window (index + 1)."""
        s = self.series
        in_session = s.timestamp >= self.session_start
        pv = np.cumsum(np.concatenate(([self.evicted_pv], s.vwap * s.volume * in_session)))
        volume = np.cumsum(np.concatenate(([self.evicted_v], s.volume * in_session)))
        return pv, volume, in_session

    # ---- records -------------------------------------------------------------------------

    def _session_vwaps(self, at: int) -> list[float | None]:
        """Session VWAP at each bar from index `at` on."""
        s = self.series
        if at == len(s) - 1:
            in_session = s.timestamp[at] >= self.session_start
            return [self.total_pv / self.total_v if in_session and self.total_v > 0 else None]
        pv, volume, in_session = self._session_sums()
        return [float(pv[j + 1] / volume[j + 1]) if in_session[j] and volume[j + 1] > 0 else None for j in range(at, len(s))]

    def _indicator_record(self, t: int, values: Values, vwap: float | None) -> IndicatorValues:
        sma, ema, rsi, macd, signal, hist, upper, middle, lower, atr = values
        warm = 11 - values.count(None) - (vwap is None)
        return IndicatorValues(
            id=_blake2b((self._id_prefix + str(t)).encode(), digest_size=8).hexdigest(),  # = stable_id("indicator", ...)
            symbol=self.symbol,
            timestamp=t,
            confidence=_CONFIDENCE[warm],
            direction="neutral",
            params=self.p.indicator_params,
            sma=sma, ema=ema, rsi=rsi, macd=macd, macd_signal=signal, macd_hist=hist,
            bb_upper=upper, bb_middle=middle, bb_lower=lower, atr=atr, vwap=vwap, timeframe=self.timeframe,
            revision=self.revisions.get(t, 0) if self.revisions else 0,
        )  # fmt: skip

    def _alerts(self, fired: list[indicators.Firing], t: int, revision: int) -> list[Alert]:
        p = self.p
        out = []
        for f in fired:
            out.append(
                Alert(
                    id=stable_id("alert", self.symbol, self.timeframe, t, f.rule),
                    type=f.rule,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                    symbol=self.symbol,
                    timestamp=t,
                    timeframe=self.timeframe,
                    confidence=1.0,
                    direction=f.direction,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                    params=p.alert_params[f.indicator],
                    severity="critical" if f.rule in p.critical else "warning",
                    indicator=f.indicator,
                    value=float(f.value),
                    threshold=float(f.threshold),
                    message=f.message,
                    revision=revision,
                )
            )
        return out

    def _patterns(
        self, t: int, revision: int, o: list[float], h: list[float], low: list[float], c: list[float], v: list[float],
        end: int,
    ) -> list[PatternEvent]:  # fmt: skip
        n = patterns.BARS
        s = self.series
        hits = patterns.recognise_last(
            self.p.pattern_entries, o, h, low, c, v,
            lambda: tuple(s._data[1:5, max(s._start, end - n) : end]),  # four rows
        )  # fmt: skip
        if not hits:
            return []
        prefix = f"{self._pattern_id}{t}|"
        return [
            PatternEvent(
                id=_blake2b((prefix + name).encode(), digest_size=8).hexdigest(),  # = stable_id("pattern", ...)
                type=name,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                symbol=self.symbol,
                timestamp=t,
                confidence=confidence,
                direction=patterns.direction(name, signal),  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                params=self.p.pattern_params[name],
                timeframe=self.timeframe,
                signal=signal,
                revision=revision,
            )
            for name, signal, confidence in hits
        ]

    def _trend(self, t: int, revision: int, close: float, end: int) -> list[TrendEvent]:
        cfg = self.p.cfg.trend
        s = self.series
        strength, slope = trend.measure(s._data[4, max(s._start, end - cfg.bars) : end], cfg.bars)
        now = trend.direction_of(strength, cfg.min_strength)
        change = trend.change(now, self.trend, self.last_trend)  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
        self.trend = now
        if now != "flat":
            self.last_trend = now
        if change is None:
            return []
        return [
            TrendEvent(
                id=stable_id("trend", self.symbol, self.timeframe, t, change),
                type=change,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                symbol=self.symbol,
                timestamp=t,
                timeframe=self.timeframe,
                confidence=round(abs(strength), 4),
                direction=now,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                params=self.p.trend_params,
                strength=round(strength, 6),
                slope=slope,
                close=close,
                revision=revision,
            )
        ]

    def _surges(self, t: int, revision: int, open_: float, close: list[float], volume: list[float]) -> list[SurgeEvent]:
        cfg = self.p.cfg.surge
        out = []
        ratio = surge.volume_ratio(volume, cfg.volume_bars)
        if ratio is not None and ratio >= cfg.volume_multiple:
            way = "up" if close[-1] >= open_ else "down"
            out.append(self._surge("volume_surge", t, revision, close, volume, ratio, way,
                                   surge.grade(ratio, cfg.volume_multiple), self.p.volume_params))  # fmt: skip
        move = surge.price_surge(close, cfg.price_bars, cfg.price_pct)
        if move is not None:
            way = "up" if move > 0 else "down"
            out.append(self._surge("price_surge", t, revision, close, volume, move, way,
                                   surge.grade(move, cfg.price_pct), self.p.price_params))  # fmt: skip
        return out

    def _surge(self, kind: str, t: int, revision: int, close: list[float], volume: list[float], ratio: float, way: str,
               confidence: float, params: dict) -> SurgeEvent:  # fmt: skip
        return SurgeEvent(
            id=stable_id("surge", self.symbol, self.timeframe, t, kind),
            type=kind,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
            symbol=self.symbol,
            timestamp=t,
            confidence=round(confidence, 4),
            direction=way,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
            params=params,
            timeframe=self.timeframe,
            ratio=round(ratio, 6),
            close=close[-1],
            volume=int(volume[-1]),  # the series' float64 volume: exact below 2**53
            revision=revision,
        )

    # ---- recovery ------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        revisions = self.revisions
        if revisions:  # forget revisions of bars that left the window
            oldest = self.series.first_timestamp
            if min(revisions) < oldest:
                revisions = self.revisions = {t: r for t, r in revisions.items() if t >= oldest}
        return msgspec.msgpack.encode((
            SNAPSHOT_VERSION, self.series.snapshot(), revisions, self.trend, self.last_trend,
            self.session_start, self.session_end, self.evicted_pv, self.evicted_v, self.total_pv, self.total_v,
            self.state, self.values, msgspec.msgpack.encode(list(self.decided)), self.recent.encoded(),
        ))  # fmt: skip

    @classmethod
    def restore(cls, symbol: str, raw: bytes, params: DetectionParams, timeframe: Timeframe = "1m") -> BarDetector:
        """A detector from its snapshot. Versions 1 and 2 (from before the decisions were kept) restore
        with none remembered: the events decided before them are not made again."""
        fields = msgspec.msgpack.decode(raw)
        version = fields[0] if isinstance(fields, list) and fields else None
        if not isinstance(version, int) or len(fields) != _SNAPSHOT_FIELDS.get(version):
            raise ValueError(f"bar detector snapshot version {version}, expected {SNAPSHOT_VERSION}")
        _, series, revisions, trend_now, last_trend, start, end, pv, v, total_pv, total_v = fields[:11]
        d = cls(symbol, params, timeframe)
        d.series = BarSeries.restore(series, params.cfg.indicators.window)
        d._last = d.series.last_timestamp if len(d.series) else -1  # type: ignore[assignment]  # not None when bars are held
        d.revisions = {int(t): r for t, r in revisions.items()}
        d.trend, d.last_trend = trend_now, last_trend
        d.session_start, d.session_end, d.evicted_pv, d.evicted_v = start, end, pv, v
        d.total_pv, d.total_v = total_pv, total_v
        if version == 1:  # from before the streaming state: TA-Lib over the window, as then
            d._restep(0, EMPTY)
        else:
            state, values = fields[11:13]
            d.state, d.values = tuple(state), tuple(values)  # msgpack gives lists of the same fields
        if version == 3:
            d.decided.extend((t, a, b, records or _NONE) for t, a, b, records in _decided_decoder.decode(fields[13]))
            for t, state, values in fields[14]:
                d.recent.append(t, tuple(state), tuple(values))
        return d


_SNAPSHOT_FIELDS = {1: 11, 2: 13, 3: 15}


def _reconcile(old: Sequence[BarEvent], found: list[BarEvent], revision: int, out: list[Event]) -> list[BarEvent]:
    """A bar's decision made again: appends to `out` what a subscriber must be told, returns what is
    remembered for the bar. `old`: the records that went out for it, `found`: the decision now (each
    with the bar's `revision`). An amendment or retraction carries a revision above the one it
    replaces, so the highest revision of an id is its latest word."""
    if not old:
        out.extend(found)
        return found
    before = {e.id: e for e in old}
    kept: list[BarEvent] = []
    for e in found:
        prev = before.pop(e.id, None)
        if prev is None:
            out.append(e)
            kept.append(e)
        elif prev.status == "retracted" or _replace(e, revision=prev.revision, status=prev.status) != prev:
            e = _replace(e, status="amended", revision=max(revision, prev.revision + 1))
            out.append(e)
            kept.append(e)
        else:
            kept.append(prev)  # holds as it was: nothing to say
    for prev in before.values():
        if prev.status != "retracted":
            prev = _replace(prev, status="retracted", revision=max(revision, prev.revision + 1))
            out.append(prev)
        kept.append(prev)
    return kept
