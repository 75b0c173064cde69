"""Coarser bars (5m, 15m, 1h, 1d) rolled up from one partition's final 1-minute bars and their revisions.

Pure: no Kafka, Redis or SQL. The bar flow's partition step (`flows.partition`) feeds a `Rollup`
the final 1-minute bars and revisions its `BarBook` emits, in the order they come out, the
forming 1-minute bars it publishes live, and the partition's watermark at the points where the
book closed minutes. Everything is event time, so the same input gives the same coarse bars.

Field rules are the database rollup's (`infra/migrations/0004_rollups.up.sql`, views
`ohlcv_5min/15min/1hour/1day`), so a coarse bar equals its view row once its minutes are written:
open = open of the earliest minute with an open, close = close of the latest minute with a close,
high max, low min, volume and trades summed, vwap = sum(vwap * volume) / sum(volume) over minutes
with a vwap and volume (None when there are none); bucket starts aligned to the UTC epoch (1d is
the UTC day, as `ohlcv_1day`).

A bucket [S, E) is *final* (revision 0) once the watermark has closed its last minute, i.e. is at
least E + close delay, the book's rule for that minute. A final minute arriving in a closed bucket
afterwards (a late trade revised it, or opened it) revises the bucket: revision + 1 when its
fields change. Buckets that never got a final minute emit nothing. Forming buckets are published
`live` (final minutes plus the forming minute) when `take_live` is called, one update per bucket.

Memory is bounded: per symbol, the final minutes that can still be revised (at most lateness/60 + 2
of them, shared by every timeframe), and per symbol and timeframe the open buckets and closed ones
still revisable (at most two or three: a bucket goes once all its minutes are past the allowed
lateness), each holding only the aggregate of its minutes that can no longer change. Forming
minutes are kept only until their final bar comes. At most `max_buckets` buckets per timeframe
exist at once (new ones beyond it are counted in `refused`, not built), whatever the input.

What can wait does: the step that closes a minute is the one whose bars a dashboard waits for, so a
new final minute of buckets that are all still open is folded in later (nothing goes out for it
until one of them closes), and so is settling; `settle` does both, in the partition's next step
that closes nothing, and anything that reads the buckets first does the folding itself. Sums add
their minutes in time order, so when this happens cannot change a bit of any bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from flows.snapshots import spliced_array
from schemas.bars import Bar
from schemas.timeframes import TIMEFRAMES, Timeframe, TimeframeName

MINUTE_MS = 60_000
ROLLED_UP: tuple[TimeframeName, ...] = ("5m", "15m", "1h", "1d")  # the timeframes a rollup may build
MAX_VOLUME = (1 << 63) - 1  # a bar's volume bound (schemas.bars.Volume, BIGINT): sums saturate there
MAX_TRADES = (1 << 31) - 1  # a bar's trades bound (schemas.bars.Counter, INTEGER)
STATE_VERSION = 3  # 3: minutes and published fields as arrays; 2: buckets and sums as arrays; 1: maps (all restored)
# What a coarse record is compared by (`_fields`): open, high, low, close, volume, vwap, trades
_Fields = tuple[float | None, float | None, float | None, float | None, int, float | None, int]


class _Agg(msgspec.Struct, gc=False, array_like=True):
    """The sums and extremes of some minutes of one bucket (mergeable, as the database's rollup row)."""

    minutes: int = 0
    open: float | None = None
    open_at: int = 0
    high: float | None = None
    low: float | None = None
    close: float | None = None
    close_at: int = 0
    volume: int = 0
    priced_value: float = 0.0
    priced_volume: int = 0
    trades: int = 0

    def fold(self, bar: Bar) -> None:
        """Add one final minute."""
        self.add(*_summand(bar))

    def add(self, t: int, o: float | None, h: float | None, low: float | None, c: float | None, v: int,
            pv: float | None, n: int) -> None:  # fmt: skip
        """Add one final minute given as its fields (`pv`: vwap x volume, None without a priced volume): a bar
        folded into each of its buckets reads its fields once (the boundary's hot loop, `Rollup.add`)."""
        self.minutes += 1
        if o is not None and (self.open is None or t < self.open_at):
            self.open, self.open_at = o, t
        if c is not None and (self.close is None or t > self.close_at):
            self.close, self.close_at = c, t
        if h is not None and (self.high is None or h > self.high):
            self.high = h
        if low is not None and (self.low is None or low < self.low):
            self.low = low
        self.volume += v
        if pv is not None:
            self.priced_value += pv
            self.priced_volume += v
        self.trades += n

    def copy(self) -> _Agg:
        return msgspec.structs.replace(self)

    def record(self, symbol: str, timeframe: TimeframeName, start: int, revision: int, status: str) -> Bar:
        return Bar(
            symbol=symbol,
            timeframe=timeframe,
            timestamp=start,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=min(self.volume, MAX_VOLUME),
            vwap=self.priced_value / self.priced_volume if self.priced_volume else None,
            trades=min(self.trades, MAX_TRADES),
            revision=min(revision, MAX_TRADES),
            status=status,  # type: ignore[arg-type]  # "live" or "final", from this module's two callers
        )


class _Bucket(msgspec.Struct, gc=False, array_like=True):
    """One symbol's bucket of one timeframe (a snapshot holds thousands: as arrays, without their
    field names, they encode in half the time and bytes)."""

    timeframe: TimeframeName
    symbol: str
    start: int
    settled: _Agg  # its minutes that can no longer be revised
    finals: _Agg  # all its final minutes (settled and revisable), kept as they come
    closed: bool = False
    revision: int = 0
    # the fields of the last final record published (`_fields`; None: not yet final), all a revision is told by
    emitted: _Fields | None = None


def _variant(cls: type, name: str, *, array_like: bool, **types: object) -> Any:
    """`cls`'s fields in its order, some of them of another type, encoded as an array or as a map:
    the structs a snapshot is written and older ones are read with, without a second list of fields."""
    fields = [(f.name, types.get(f.name, f.type)) if f.required else (f.name, types.get(f.name, f.type), f.default)
              for f in msgspec.structs.fields(cls)]  # fmt: skip
    return msgspec.defstruct(name, fields, array_like=array_like, gc=False)


# A 1-minute bar as a snapshot holds it: its fields as an array (`_row`), not a map of their names
# (a bar encoded as a map is more than half names: 2.5 MB of a 4.4 MB snapshot at 1,000 symbols).
# Every field required: an array always holds them all (and Bar's defaults come before required fields).
_Minute = msgspec.defstruct("_Minute", [(f.name, f.type) for f in msgspec.structs.fields(Bar)], array_like=True, gc=False)


class _State(msgspec.Struct, array_like=True):
    """A rollup's recovery snapshot (msgpack)."""

    version: int
    watermark: int
    complete_from: dict[str, int]
    refused: int
    recent: list[_Minute]  # type: ignore[valid-type]  # final minutes still revisable (a struct made at run time)
    live: list[_Minute]  # type: ignore[valid-type]  # forming minutes
    buckets: list[_Bucket]
    dirty: list[tuple[TimeframeName, str, int]]


# `_State` as a snapshot writes it (the same bytes): the revisable minutes spliced in as msgpack
# already encoded (`Rollup._encoded_recent`)
_Written = _variant(_State, "_Written", array_like=True, recent=msgspec.Raw, buckets=msgspec.Raw)
# version 2: minutes and published records as maps (Bar)
_BucketV2 = _variant(_Bucket, "_BucketV2", array_like=True, emitted=Bar | None)
_BucketsV2: Any = list[_BucketV2]  # type: ignore[valid-type]  # a struct made at run time: a type to msgspec, a value to mypy
_StateV2 = _variant(_State, "_StateV2", array_like=True, recent=list[Bar], live=list[Bar], buckets=_BucketsV2)
# version 1: buckets and their sums as maps too
_AggV1 = _variant(_Agg, "_AggV1", array_like=False)
_BucketV1 = _variant(_Bucket, "_BucketV1", array_like=False, settled=_AggV1, finals=_AggV1, emitted=Bar | None)
_BucketsV1: Any = list[_BucketV1]  # type: ignore[valid-type]  # as above
_StateV1 = _variant(_State, "_StateV1", array_like=True, recent=list[Bar], live=list[Bar], buckets=_BucketsV1)


class _Version(msgspec.Struct, array_like=True):
    """The first field of every version's snapshot (the rest is skipped)."""

    version: int


_encoder = msgspec.msgpack.Encoder()
_decoders: dict[int, msgspec.msgpack.Decoder[Any]] = {
    1: msgspec.msgpack.Decoder(_StateV1),
    2: msgspec.msgpack.Decoder(_StateV2),
    3: msgspec.msgpack.Decoder(_State),
}
_version_decoder = msgspec.msgpack.Decoder(_Version)


def _upgraded(bucket: Any) -> _Bucket:
    """A version-1 or -2 bucket as the rollup holds it (the same fields, in the same order)."""
    astuple = msgspec.structs.astuple
    emitted = None if bucket.emitted is None else _fields(bucket.emitted)
    return _Bucket(bucket.timeframe, bucket.symbol, bucket.start, _Agg(*astuple(bucket.settled)), _Agg(*astuple(bucket.finals)),
                   bucket.closed, bucket.revision, emitted)  # fmt: skip


def _row(bar: Bar) -> tuple:
    """A bar as `_Minute` encodes it."""
    return msgspec.structs.astuple(bar)


def _bar(minute: Any) -> Bar:
    """A bar a snapshot held (`_Minute`, or `Bar` itself before version 3)."""
    return minute if type(minute) is Bar else Bar(**msgspec.structs.asdict(minute))


class Rollup:
    """One partition's coarse bars, from its final 1-minute bars, forming minutes and watermark."""

    def __init__(
        self,
        timeframes: Sequence[TimeframeName],
        *,
        close_delay_ms: int,
        lateness_ms: int,
        max_buckets: int = 200_000,
        complete_from: int = 0,
    ) -> None:
        for name in timeframes:
            if name not in ROLLED_UP:
                raise ValueError(f"cannot roll up timeframe {name!r}: one of {', '.join(ROLLED_UP)}")
        self.timeframes: tuple[Timeframe, ...] = tuple(TIMEFRAMES[n] for n in dict.fromkeys(timeframes))
        self.close_delay_ms = close_delay_ms
        self.lateness_ms = lateness_ms
        self.max_buckets = max_buckets
        # Per timeframe, buckets starting before this are never published: their first minutes went
        # by before this rollup held the timeframe (a restore of a snapshot written without it).
        self.complete_from: dict[str, int] = {t.name: complete_from for t in self.timeframes}
        self.watermark = 0
        self.refused = 0  # new buckets not built: max_buckets reached
        self._recent: dict[int, dict[str, Bar]] = {}  # minute start -> symbol -> latest final 1m bar
        # minute start -> (bars, their msgpack encodings joined) of `_recent[minute]` while it is unchanged:
        # a snapshot at every epoch encoded every revisable minute again, a third of its time
        self._encoded_recent: dict[int, tuple[int, bytes]] = {}
        self._live: dict[int, dict[str, Bar]] = {}  # minute start -> symbol -> latest forming 1m bar
        self._buckets: dict[TimeframeName, dict[tuple[str, int], _Bucket]] = {t.name: {} for t in self.timeframes}
        # every bucket's msgpack encoding as the last snapshot wrote it, until a bucket is built, merged
        # into, settled or closed (each sets it to None): buckets change only as minutes close or
        # settle, so most epochs would encode them all again for nothing (7,800 buckets, 6 ms a
        # partition of 1,000 symbols on a 2-core EPYC)
        self._encoded_buckets: msgspec.Raw | None = None
        # (timeframe, its length, its buckets) for the loops that touch every timeframe per minute
        self._by_timeframe = tuple((t, t.ms, self._buckets[t.name]) for t in self.timeframes)
        self._dirty: dict[tuple[TimeframeName, str, int], None] = {}  # forming buckets changed since take_live
        # (symbol, minute) of the forming minutes whose buckets are all in `_dirty` (`note_live`): a symbol
        # is noted at every live update, and marking its four buckets again each time was most of the cost
        self._noted: dict[tuple[str, int], None] = {}
        self._next_close = _NEVER  # watermark at which the earliest open bucket closes
        self._settled_at = 0  # the watermark the last `settle` saw
        # new final minutes not folded into their buckets yet, in the order they came (`add`), and the
        # watermark at which the first of them would close a bucket
        self._unfolded: dict[tuple[int, str], Bar] = {}
        self._unfolded_close = self._unfolded_first = _NEVER
        self._finest_ms = min((t.ms for t in self.timeframes), default=MINUTE_MS)  # its buckets end first

    # ---- input -------------------------------------------------------------------------

    def add(self, bar: Bar) -> list[Bar]:
        """A final 1-minute bar or revision, in the order the book emitted it; returns the coarse
        finals and revisions it causes (buckets already closed whose fields it changed)."""
        if not self.timeframes or bar.timeframe != "1m" or bar.status != "final":
            return []
        symbol, minute = bar.symbol, bar.timestamp
        live = self._live.get(minute)
        if live is not None and live.pop(symbol, None) is not None and not live:
            del self._live[minute]
        if minute + MINUTE_MS + self.lateness_ms < self.watermark:
            # Cannot happen with the book's lateness rule (its watermark is ahead of ours); a minute
            # this old would make a bucket from part of its minutes, so it changes nothing.
            return []
        unfolded = self._unfolded
        if (minute, symbol) not in unfolded:
            start = minute - minute % self._finest_ms
            if start + self._finest_ms + self.close_delay_ms > self.watermark and symbol not in self._recent.get(minute, ()):
                # A new minute whose buckets are all open: nothing goes out for it now, so it is folded
                # in later (`_fold_unfolded`, before anything reads the buckets), not in the step that
                # closed it, whose bars a dashboard waits for.
                if minute < self._unfolded_first:
                    self._unfolded_first = minute
                    self._unfolded_close = min(self._unfolded_close, start + self._finest_ms + self.close_delay_ms)
                unfolded[(minute, symbol)] = bar
                return []
        self._fold_unfolded()
        return self._merge(bar)

    def _merge(self, bar: Bar) -> list[Bar]:
        """`add` of a final minute into its buckets, now."""
        self._encoded_buckets = None
        symbol, minute = bar.symbol, bar.timestamp
        minutes = self._recent.get(minute)
        if minutes is None:
            minutes = self._recent[minute] = {}
        previous = minutes.get(symbol)
        minutes[symbol] = bar
        self._encoded_recent.pop(minute, None)
        out: list[Bar] = []
        t, o, h, low, c, v, pv, n = _summand(bar)
        for tf, ms, buckets in self._by_timeframe:
            start = minute - minute % ms
            bucket = buckets.get((symbol, start))
            if bucket is None:
                bucket = self._new_bucket(tf, symbol, start)  # its finals include this minute
                if bucket is None:
                    continue
            elif previous is None:
                bucket.finals.add(t, o, h, low, c, v, pv, n)  # a new minute: merged in
            else:
                bucket.finals = self._aggregate(bucket, tf)  # a revised one: from the others again
            if bucket.closed:
                revised = self._final(bucket)
                if revised is not None:
                    out.append(revised)
            else:
                self._dirty[(tf.name, symbol, start)] = None
        return out

    def advance(self, watermark: int) -> list[Bar]:
        """The partition's watermark moved here (never back): buckets whose last minute it closed
        become final (revision 0), minutes past the lateness settle, buckets past it go."""
        out = self.close_through(watermark)
        self.settle()
        return out

    def close_through(self, watermark: int) -> list[Bar]:
        """`advance` that leaves the settling for `settle` (the module's docstring says why): it is put
        off by at most a minute of watermark, and the minutes `add` put off are folded in here before
        a bucket of theirs closes (a replay where every step closes minutes does both here then), so
        what is held stays bounded."""
        if watermark <= self.watermark:
            return []
        if watermark - self._settled_at >= MINUTE_MS:
            self._settle()
        if watermark >= self._unfolded_close:  # a bucket of a minute not folded in yet closes
            self._fold_unfolded()
        self.watermark = watermark
        for minute in [m for m in self._live if m + MINUTE_MS + self.close_delay_ms <= watermark]:
            del self._live[minute]  # closed minutes: their final bars came (or the input ended)
        if watermark >= self._next_close:
            return self._close(lambda bucket, tf: bucket.start + tf.ms + self.close_delay_ms <= watermark)
        return []

    def settle(self) -> None:
        """The work a step that closed minutes left (`close_through`): the new minutes `add` put off
        go into their buckets, minutes past the allowed lateness into their buckets' settled sums, and
        spent buckets go."""
        self._fold_unfolded()
        self._settle()

    def _settle(self) -> None:
        if self._settled_at == self.watermark:
            return
        self._settled_at = watermark = self.watermark
        cutoff = watermark - MINUTE_MS - self.lateness_ms  # minutes before this can no longer be revised
        if self._unfolded_first < cutoff:
            self._fold_unfolded()  # settled sums add their minutes in time order: the put-off ones first
        settling = sorted(m for m in self._recent if m < cutoff)
        if settling:
            self._encoded_buckets = None
        for minute in settling:
            self._encoded_recent.pop(minute, None)
            for symbol, bar in self._recent.pop(minute).items():
                t, o, h, low, c, v, pv, n = _summand(bar)
                for _, ms, buckets in self._by_timeframe:
                    bucket = buckets.get((symbol, minute - minute % ms))
                    if bucket is not None:
                        bucket.settled.add(t, o, h, low, c, v, pv, n)
        if not settling:
            return
        for tf in self.timeframes:
            buckets = self._buckets[tf.name]
            spent = [k for k, b in buckets.items() if b.closed and b.start + tf.ms - MINUTE_MS < cutoff]
            for key in spent:
                del buckets[key]

    def close_all(self) -> list[Bar]:
        """End of a finite input: every open bucket is final now."""
        self._fold_unfolded()
        return self._close(lambda bucket, tf: True)

    def take_live(self, forming: Iterable[Bar] = ()) -> list[Bar]:
        """The forming 1-minute bars just published (changed since the last call) -> one live update
        per forming bucket changed since the last call (`note_live` included), its final minutes and
        forming ones together."""
        if not self.timeframes:
            return []
        self.note_live(forming)
        return self._live_bars()

    def note_live(self, forming: Iterable[Bar]) -> None:
        """Hold the forming 1-minute bars just published and mark their buckets changed, for the next
        `take_live`: the coarser timeframes' live updates may be sent less often than the minutes'."""
        if not self.timeframes:
            return
        self._fold_unfolded()
        closed_through = self.watermark - MINUTE_MS - self.close_delay_ms  # a minute starting at or before it is closed
        live, noted, dirty = self._live, self._noted, self._dirty
        for bar in forming:
            minute = bar.timestamp
            if minute <= closed_through:
                continue  # its minute is closed: its final bar is (or will be) the truth
            symbol = bar.symbol
            held = live.get(minute)
            if held is None:
                held = live[minute] = {}
            held[symbol] = bar
            key = (symbol, minute)
            if key in noted:
                continue  # its buckets are marked already, and stay so until take_live (they are open)
            marked = True
            for tf, ms, buckets in self._by_timeframe:
                start = minute - minute % ms
                if (symbol, start) in buckets or self._new_bucket(tf, symbol, start) is not None:
                    dirty[(tf.name, symbol, start)] = None
                else:
                    marked = False  # refused (or incomplete): tried again at the next note
            if marked:
                noted[key] = None

    def _live_bars(self) -> list[Bar]:
        # The hot part when many symbols trade: one record per changed bucket, merged inline (a copy
        # of the finals and a fold per forming minute cost twice as much).
        out: list[Bar] = []
        live = list(self._live.items())
        buckets, widths = self._buckets, {t.name: t.ms for t in self.timeframes}
        for name, symbol, start in self._dirty:
            bucket = buckets[name].get((symbol, start))
            if bucket is None or bucket.closed:
                continue
            end = start + widths[name]
            f = bucket.finals
            minutes, o, oa, h, lo, c, ca = f.minutes, f.open, f.open_at, f.high, f.low, f.close, f.close_at
            v, pv, pw, n = f.volume, f.priced_value, f.priced_volume, f.trades
            for minute, held_minutes in live:
                if start <= minute < end:
                    b = held_minutes.get(symbol)
                    if b is None:
                        continue
                    minutes += 1
                    if b.open is not None and (o is None or minute < oa):
                        o, oa = b.open, minute
                    if b.close is not None and (c is None or minute > ca):
                        c, ca = b.close, minute
                    if b.high is not None and (h is None or b.high > h):
                        h = b.high
                    if b.low is not None and (lo is None or b.low < lo):
                        lo = b.low
                    v += b.volume
                    if b.vwap is not None and b.volume > 0:
                        pv += b.vwap * b.volume
                        pw += b.volume
                    n += b.trades
            if minutes:
                out.append(Bar(symbol=symbol, timeframe=name, timestamp=start, open=o, high=h, low=lo, close=c,
                               volume=min(v, MAX_VOLUME), vwap=pv / pw if pw else None, trades=min(n, MAX_TRADES),
                               revision=0, status="live"))  # fmt: skip
        self._dirty.clear()
        self._noted.clear()
        return out

    # ---- state -------------------------------------------------------------------------

    @property
    def buckets(self) -> int:
        """Buckets built (a new minute's counts from when it is folded in: `settle`, the step after it closed)."""
        return sum(len(b) for b in self._buckets.values())

    @property
    def minutes(self) -> int:
        """Final and forming 1-minute bars held (what can still change a bucket)."""
        return sum(len(m) for m in self._recent.values()) + sum(len(m) for m in self._live.values()) + len(self._unfolded)

    def snapshot(self) -> bytes:
        """The rollup as msgpack (`_State`); the revisable minutes unchanged since the last snapshot
        are copied as they were encoded then."""
        self._fold_unfolded()
        encoded, count, parts = self._encoded_recent, 0, []
        for minute, bars in self._recent.items():
            kept = encoded.get(minute)
            if kept is None:
                kept = encoded[minute] = (len(bars), b"".join([_encoder.encode(_row(bar)) for bar in bars.values()]))
            count += kept[0]
            parts.append(kept[1])
        return _encoder.encode(
            _Written(
                STATE_VERSION,
                self.watermark,
                self.complete_from,
                self.refused,
                spliced_array(count, parts),
                [_row(bar) for bars in self._live.values() for bar in bars.values()],
                self._encoded_bucket_list(),
                list(self._dirty),
            )
        )

    def _encoded_bucket_list(self) -> msgspec.Raw:
        """Every bucket, as the msgpack array the snapshot holds (kept until a bucket changes)."""
        encoded = self._encoded_buckets
        if encoded is None:
            every = [bucket for buckets in self._buckets.values() for bucket in buckets.values()]
            encoded = self._encoded_buckets = msgspec.Raw(_encoder.encode(every))
        return encoded

    @classmethod
    def restore(
        cls, snapshot: bytes, timeframes: Sequence[TimeframeName], *, close_delay_ms: int, lateness_ms: int,
        max_buckets: int = 200_000,
    ) -> Rollup:  # fmt: skip
        """A rollup from `snapshot`. Timeframes added since it was written start with the buckets
        that begin after its watermark (the earlier ones lack minutes); removed ones are dropped."""
        try:
            version = _version_decoder.decode(snapshot).version
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"unreadable timeframe rollup snapshot: {exc}") from exc
        if version not in _decoders:
            raise ValueError(f"timeframe rollup snapshot version {version}; this flow restores {', '.join(map(str, _decoders))}")
        try:
            state = _decoders[version].decode(snapshot)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"unreadable timeframe rollup snapshot (version {version}): {exc}") from exc
        buckets = state.buckets if version == STATE_VERSION else list(map(_upgraded, state.buckets))
        recent, live = list(map(_bar, state.recent)), list(map(_bar, state.live))
        rollup = cls(timeframes, close_delay_ms=close_delay_ms, lateness_ms=lateness_ms, max_buckets=max_buckets)
        rollup.watermark, rollup.refused = state.watermark, state.refused
        newest = max((b.timestamp + MINUTE_MS + close_delay_ms for b in recent), default=0)
        added = first_complete(max(state.watermark, newest), close_delay_ms)
        rollup.complete_from = {t.name: state.complete_from.get(t.name, added) for t in rollup.timeframes}
        for bar in recent:
            rollup._recent.setdefault(bar.timestamp, {})[bar.symbol] = bar
        for bar in live:
            rollup._live.setdefault(bar.timestamp, {})[bar.symbol] = bar
        for bucket in buckets:
            if bucket.timeframe in rollup._buckets:
                rollup._buckets[bucket.timeframe][(bucket.symbol, bucket.start)] = bucket
        rollup._dirty = {key: None for key in state.dirty if key[0] in rollup._buckets}
        rollup._next_close = rollup._earliest_close()
        return rollup

    # ---- internals ---------------------------------------------------------------------

    def _new_bucket(self, tf: Timeframe, symbol: str, start: int) -> _Bucket | None:
        """A new bucket, with the final minutes held for it; None when it must not be published
        (incomplete) or cannot be held."""
        buckets = self._buckets[tf.name]
        if start < self.complete_from[tf.name]:
            return None
        if len(buckets) >= self.max_buckets:
            self.refused += 1
            return None
        end = start + tf.ms
        closed = end + self.close_delay_ms <= self.watermark
        if closed and end + self.lateness_ms < self.watermark:
            return None  # none of its minutes can be revised any more: nothing can reach it
        self._encoded_buckets = None
        bucket = buckets[(symbol, start)] = _Bucket(tf.name, symbol, start, _Agg(), _Agg(), closed=closed)
        bucket.finals = self._aggregate(bucket, tf)
        if not closed:
            self._next_close = min(self._next_close, end + self.close_delay_ms)
        return bucket

    def _fold_unfolded(self) -> None:
        """The new minutes `add` put off, into their buckets, as it would have then."""
        if self._unfolded:
            unfolded, self._unfolded, self._unfolded_close, self._unfolded_first = self._unfolded, {}, _NEVER, _NEVER
            for bar in unfolded.values():
                self._merge(bar)  # nothing goes out: its buckets were open, and none has closed since

    def _aggregate(self, bucket: _Bucket, tf: Timeframe) -> _Agg:
        """The bucket's settled minutes plus its revisable ones, in time order as `settle` folds them:
        the sums come out the same to the last bit wherever the split between the two falls, so
        settling later (`close_through`) cannot make a bucket look revised."""
        agg = bucket.settled.copy()
        start, end, symbol = bucket.start, bucket.start + tf.ms, bucket.symbol
        for minute in sorted(self._recent):
            if start <= minute < end:
                bar = self._recent[minute].get(symbol)
                if bar is not None:
                    agg.fold(bar)
        return agg

    def _final(self, bucket: _Bucket) -> Bar | None:
        """The bucket's final record if its fields changed since the last one (revision + 1), else None."""
        agg = bucket.finals
        if not agg.minutes:
            return None
        previous = bucket.emitted
        revision = 0 if previous is None else bucket.revision + 1
        record = agg.record(bucket.symbol, bucket.timeframe, bucket.start, revision, "final")
        fields = _fields(record)
        if previous is not None and previous == fields:
            return None
        bucket.revision, bucket.emitted = revision, fields
        return record

    def _close(self, due: Callable[[_Bucket, Timeframe], bool]) -> list[Bar]:
        self._encoded_buckets = None
        out: list[Bar] = []
        for tf in self.timeframes:
            for (symbol, start), bucket in self._buckets[tf.name].items():
                if not bucket.closed and due(bucket, tf):
                    bucket.closed = True
                    self._dirty.pop((tf.name, symbol, start), None)
                    record = self._final(bucket)
                    if record is not None:
                        out.append(record)
        self._next_close = self._earliest_close()
        return out

    def _earliest_close(self) -> int:
        return min(
            (b.start + tf.ms + self.close_delay_ms for tf in self.timeframes for b in self._buckets[tf.name].values()
             if not b.closed),
            default=_NEVER,
        )  # fmt: skip


_NEVER = 1 << 62


def first_complete(watermark: int, close_delay_ms: int) -> int:
    """The earliest bucket start none of whose minutes were final yet at `watermark`: where a rollup
    begun at that watermark (beside a book that already emitted final minutes) can vouch for its buckets."""
    return watermark - MINUTE_MS - close_delay_ms + 1 if watermark else 0


def _summand(bar: Bar) -> tuple[int, float | None, float | None, float | None, float | None, int, float | None, int]:
    """A final minute as `_Agg.add` takes it (`_fields` is what a record is compared by)."""
    v, vw = bar.volume, bar.vwap
    return bar.timestamp, bar.open, bar.high, bar.low, bar.close, v, vw * v if vw is not None and v > 0 else None, bar.trades


def _fields(bar: Bar) -> _Fields:
    """What a coarse record is compared by: a record whose fields are unchanged is not a revision."""
    return (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.vwap, bar.trades)


def parse_timeframes(value: str | Iterable[str]) -> tuple[TimeframeName, ...]:
    """BAR_TIMEFRAMES: a comma-separated list of timeframes to roll up ("" for none; 1m is always built).

    >>> parse_timeframes("5m, 1h,5m")
    ('5m', '1h')
    >>> parse_timeframes("2m")
    Traceback (most recent call last):
    ...
    ValueError: unknown timeframe '2m': BAR_TIMEFRAMES takes a comma-separated list of 5m, 15m, 1h, 1d (1m is always built)
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    if len(items) > 16:
        raise ValueError(f"{len(items)} timeframes: BAR_TIMEFRAMES takes at most {len(ROLLED_UP)} of {', '.join(ROLLED_UP)}")
    out: dict[TimeframeName, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"timeframe {item!r} is not a string")
        name = item.strip()
        if not name or name == "1m":
            continue
        if name not in ROLLED_UP:
            raise ValueError(
                f"unknown timeframe {name[:20]!r}: BAR_TIMEFRAMES takes a comma-separated list of "
                f"{', '.join(ROLLED_UP)} (1m is always built)"
            )
        out[name] = None
    return tuple(out)
