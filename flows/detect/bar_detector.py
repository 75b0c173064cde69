"""Everything detected on one symbol's final bars: indicator values, alerts, patterns, trends, surges.

A new bar is judged once, when it closes: it gets its indicator values, and the alert rules,
candlestick patterns, trend and surge checks run on the series ending at it. A revision (or
a minute that closes late, between bars already held) corrects the series and re-emits the
indicator values of that bar and of every later one, since TA-Lib's values depend on the
past; events already decided stay as they were (their record names the revision they saw).

Bars without prices (only volume-only trades in the minute) are skipped.

>>> from flows.detect.settings import DetectionSettings
>>> d = BarDetector("AAPL", DetectionParams(DetectionSettings()))
>>> bar = Bar(symbol="AAPL", timestamp=60_000, open=10.0, high=10.5, low=9.5, close=10.0,
...           volume=100, vwap=10.0, trades=3, revision=0, status="final")
>>> [(e.kind, e.type) for e in d.on_bar(bar)]
[('indicator', 'values')]
"""

from __future__ import annotations

from collections import deque
from hashlib import blake2b as _blake2b
from typing import Any

import msgspec
import numpy as np

from flows.detect import indicators, patterns, surge, trend
from flows.detect.series import BarSeries
from flows.detect.settings import DetectionSettings
from flows.detect.streaming import EMPTY, Indicators, State, Values
from schemas.bars import Bar
from schemas.events import Alert, Event, IndicatorValues, ParamValue, PatternEvent, SurgeEvent, TrendEvent, stable_id
from schemas.sessions import session_of

SNAPSHOT_VERSION = 2  # 2: with the streaming indicator state; 1 (without) is still restored
TIMEFRAME = "1m"
_CONFIDENCE = tuple(round(warm / 11, 4) for warm in range(12))  # share of the 11 values that are warm
_UNWARM: Values = (None,) * 10


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


class BarDetector:
    """One symbol's series and the little state its detectors keep between bars."""

    def __init__(self, symbol: str, params: DetectionParams) -> None:
        self.symbol = symbol
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
        self.recent: deque[tuple[int, State, Values]] = deque(maxlen=params.replay_bars + 1)
        self._id_prefix = f"indicator|{symbol}|{TIMEFRAME}|"
        self._tail: list[list[float]] | None = None  # o, h, l, c, v of the last `params.tail` bars, as lists
        self._last = -1  # the newest bar's start (-1: none yet)
        self._pattern_id = f"pattern|{symbol}|{TIMEFRAME}|"

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
            return self._replay(at) if p.indicators_on else []
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
        before = self.values
        if p.compute_indicators:
            self.state, values = p.indicators.step(self.state, h[-1], low[-1], c)
            self.values = values
            self.recent.append((t, self.state, values))
        out: list[Event] = []
        if p.indicators_on:
            total_v = self.total_v
            vwap_now = self.total_pv / total_v if total_v > 0 and t >= self.session_start else None
            out.append(self._indicator_record(t, values, vwap_now))
        if p.alerts_on and len(c) > 1:
            fired = indicators.alerts_at(p.cfg.alerts, before, values, c[-2], c[-1])
            if fired:
                out.extend(self._alerts(fired, bar))
        if p.patterns_on:
            out.extend(self._patterns(bar, o, h, low, c, v))
        if p.trend_on:
            out.extend(self._trend(bar))
        if p.surge_on:
            out.extend(self._surges(bar, c, v))
        return out

    def _replay(self, at: int) -> list[Event]:
        """A revised or inserted bar at index `at`: step it and every later bar again from the state of
        the bar before it (kept for the last `replay_bars` bars; else from the window's first bar, as
        if the series began there), and re-emit their values."""
        times = self.series.timestamp
        before = int(times[at - 1]) if at > 0 else None
        start = None
        for t, state, _ in reversed(self.recent):
            if t == before:
                start = state
                break
        if start is None and at == 0 and self.state[0] < len(self.series):
            start = EMPTY  # every bar stepped so far is still held: nothing was before it
        stepped = self._restep(0, EMPTY)[at:] if start is None else self._restep(at, start)
        vwaps = self._session_vwaps(at)
        out: list[Event] = []
        for offset, j in enumerate(range(at, len(times))):
            out.append(self._indicator_record(int(times[j]), stepped[offset], vwaps[offset]))
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
        while recent and recent[-1][0] >= (times[at] if at < len(times) else 0):
            recent.pop()
        values = self.values if at >= len(times) else _UNWARM
        trail = ind.trail
        stepped = []
        for j in range(at, len(times)):
            state, values = ind.step(state, h[j], low[j], c[max(0, j - trail + 1) : j + 1])
            recent.append((int(times[j]), state, values))
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
            bb_upper=upper, bb_middle=middle, bb_lower=lower, atr=atr, vwap=vwap,
            revision=self.revisions.get(t, 0) if self.revisions else 0,
        )  # fmt: skip

    def _alerts(self, fired: list[indicators.Firing], bar: Bar) -> list[Alert]:
        p = self.p
        out = []
        for f in fired:
            out.append(
                Alert(
                    id=stable_id("alert", self.symbol, TIMEFRAME, bar.timestamp, f.rule),
                    type=f.rule,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                    symbol=self.symbol,
                    timestamp=bar.timestamp,
                    confidence=1.0,
                    direction=f.direction,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                    params=p.alert_params[f.indicator],
                    severity="critical" if f.rule in p.critical else "warning",
                    indicator=f.indicator,
                    value=float(f.value),
                    threshold=float(f.threshold),
                    message=f.message,
                    revision=bar.revision,
                )
            )
        return out

    def _patterns(
        self, bar: Bar, o: list[float], h: list[float], low: list[float], c: list[float], v: list[float]
    ) -> list[PatternEvent]:
        n = patterns.BARS
        s = self.series
        hits = patterns.recognise_last(
            self.p.pattern_entries, o, h, low, c, v,
            lambda: tuple(s._data[1:5, max(s._start, s._end - n) : s._end]),  # four rows
        )  # fmt: skip
        if not hits:
            return []
        prefix = f"{self._pattern_id}{bar.timestamp}|"
        return [
            PatternEvent(
                id=_blake2b((prefix + name).encode(), digest_size=8).hexdigest(),  # = stable_id("pattern", ...)
                type=name,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                symbol=self.symbol,
                timestamp=bar.timestamp,
                confidence=confidence,
                direction=patterns.direction(name, signal),  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                params=self.p.pattern_params[name],
                signal=signal,
                revision=bar.revision,
            )
            for name, signal, confidence in hits
        ]

    def _trend(self, bar: Bar) -> list[TrendEvent]:
        cfg = self.p.cfg.trend
        s = self.series
        strength, slope = trend.measure(s._data[4, max(s._start, s._end - cfg.bars) : s._end], cfg.bars)
        now = trend.direction_of(strength, cfg.min_strength)
        change = trend.change(now, self.trend, self.last_trend)  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
        self.trend = now
        if now != "flat":
            self.last_trend = now
        if change is None:
            return []
        return [
            TrendEvent(
                id=stable_id("trend", self.symbol, TIMEFRAME, bar.timestamp, change),
                type=change,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                symbol=self.symbol,
                timestamp=bar.timestamp,
                confidence=round(abs(strength), 4),
                direction=now,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
                params=self.p.trend_params,
                strength=round(strength, 6),
                slope=slope,
                close=bar.close,  # type: ignore[arg-type]  # final bars that reach detection carry prices (volume-only bars are skipped above)
                revision=bar.revision,
            )
        ]

    def _surges(self, bar: Bar, close: list[float], volume: list[float]) -> list[SurgeEvent]:
        cfg = self.p.cfg.surge
        out = []
        ratio = surge.volume_ratio(volume, cfg.volume_bars)
        if ratio is not None and ratio >= cfg.volume_multiple:
            way = "up" if bar.close >= bar.open else "down"  # type: ignore[operator]  # final bars that reach detection carry prices (volume-only bars are skipped above)
            out.append(
                self._surge("volume_surge", bar, ratio, way, surge.grade(ratio, cfg.volume_multiple), self.p.volume_params)
            )
        move = surge.price_surge(close, cfg.price_bars, cfg.price_pct)
        if move is not None:
            way = "up" if move > 0 else "down"
            out.append(self._surge("price_surge", bar, move, way, surge.grade(move, cfg.price_pct), self.p.price_params))
        return out

    def _surge(self, kind: str, bar: Bar, ratio: float, way: str, confidence: float, params: dict) -> SurgeEvent:
        return SurgeEvent(
            id=stable_id("surge", self.symbol, TIMEFRAME, bar.timestamp, kind),
            type=kind,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
            symbol=self.symbol,
            timestamp=bar.timestamp,
            confidence=round(confidence, 4),
            direction=way,  # type: ignore[arg-type]  # a str drawn from the Literal's own values; mypy cannot follow the table
            params=params,
            ratio=round(ratio, 6),
            close=bar.close,  # type: ignore[arg-type]  # final bars that reach detection carry prices (volume-only bars are skipped above)
            volume=bar.volume,
            revision=bar.revision,
        )

    # ---- recovery ------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        revisions = self.revisions
        if revisions:  # forget revisions of bars that left the window
            oldest = self.series.timestamp[0] if len(self.series) else float("inf")
            revisions = self.revisions = {t: r for t, r in revisions.items() if t >= oldest}
        return msgspec.msgpack.encode((
            SNAPSHOT_VERSION, self.series.snapshot(), revisions, self.trend, self.last_trend,
            self.session_start, self.session_end, self.evicted_pv, self.evicted_v, self.total_pv, self.total_v,
            self.state, self.values,
        ))  # fmt: skip

    @classmethod
    def restore(cls, symbol: str, raw: bytes, params: DetectionParams) -> BarDetector:
        fields = msgspec.msgpack.decode(raw)
        version = fields[0] if isinstance(fields, list) and fields else None
        if version not in (1, SNAPSHOT_VERSION) or len(fields) != (11 if version == 1 else 13):
            raise ValueError(f"bar detector snapshot version {version}, expected {SNAPSHOT_VERSION}")
        _, series, revisions, trend_now, last_trend, start, end, pv, v, total_pv, total_v = fields[:11]
        d = cls(symbol, params)
        d.series = BarSeries.restore(series, params.cfg.indicators.window)
        d._last = d.series.last_timestamp if len(d.series) else -1  # type: ignore[assignment]  # not None when bars are held
        d.revisions = {int(t): r for t, r in revisions.items()}
        d.trend, d.last_trend = trend_now, last_trend
        d.session_start, d.session_end, d.evicted_pv, d.evicted_v = start, end, pv, v
        d.total_pv, d.total_v = total_pv, total_v
        if version == 1:  # from before the streaming state: TA-Lib over the window, as then
            d._restep(0, EMPTY)
        else:
            state, values = fields[11:]
            d.state, d.values = tuple(state), tuple(values)  # msgpack gives lists of the same fields
        return d
