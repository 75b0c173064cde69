"""The timeframe rollup (flows/timeframes.py) against an independent computation from the 1-minute bars,
directly (table-driven) and through the bar flow's partition step (trades in, every timeframe out),
including revisions, minutes arriving late within the allowed lateness, batching and restarts."""

from __future__ import annotations

import functools
import itertools
import random
from collections import defaultdict

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.kafka.source import RawBatch
from flows import partition
from flows.detect.settings import DetectionSettings
from flows.partition import PartitionLogic
from flows.settings import Settings, SettingsError, load
from flows.timeframes import MAX_VOLUME, Rollup, first_complete, parse_timeframes
from schemas.bars import Bar
from schemas.prices import Price
from schemas.timeframes import TIMEFRAMES

M = 60_000
DAY0 = 1_704_240_000_000  # 2024-01-03 00:00 UTC
T0 = DAY0 - 40 * M  # 23:20 UTC: runs cross an hour and a UTC day
TFS = ("5m", "15m", "1h", "1d")
DELAY, LATENESS = 2_000, 5 * M
FIELDS = ("open", "high", "low", "close", "volume", "vwap", "trades")


NONE = object()


def minute(symbol: str, m: int, *, o=10.0, h=None, low=None, c=None, v=100, vwap=None, n=1, rev=0, status="final") -> Bar:
    """A 1-minute bar `m` minutes after T0; all prices None when `o` is None (volume-only trades);
    `vwap=NONE` for a minute without one."""
    return Bar(symbol=symbol, timestamp=T0 + m * M, open=o, high=h if h is not None else o, low=low if low is not None else o,
               close=c if c is not None else o, volume=v, vwap=None if vwap is NONE else (vwap if vwap is not None else o),
               trades=n, revision=rev, status=status)  # fmt: skip


def reference(minutes: dict[tuple[str, int], Bar], tf: str, symbol: str, start: int) -> tuple | None:
    """The database's rule, written out plainly: the bucket's fields from its latest 1-minute bars."""
    width = TIMEFRAMES[tf].ms
    rows = sorted((b for (s, t), b in minutes.items() if s == symbol and start <= t < start + width), key=lambda b: b.timestamp)
    if not rows:
        return None
    opens = [b.open for b in rows if b.open is not None]
    closes = [b.close for b in rows if b.close is not None]
    highs = [b.high for b in rows if b.high is not None]
    lows = [b.low for b in rows if b.low is not None]
    priced = [b for b in rows if b.vwap is not None and b.volume > 0]
    weight = sum(b.volume for b in priced)
    return (
        opens[0] if opens else None,
        max(highs) if highs else None,
        min(lows) if lows else None,
        closes[-1] if closes else None,
        sum(b.volume for b in rows),
        sum(b.vwap * b.volume for b in priced) / weight if weight else None,  # type: ignore[operator]
        sum(b.trades for b in rows),
    )


def fields(bar: Bar) -> tuple:
    return tuple(getattr(bar, f) for f in FIELDS)


def close_enough(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None:
        return a == b
    return all(
        x == y or (x is not None and y is not None and abs(x - y) <= 1e-9 * max(1.0, abs(y))) for x, y in zip(a, b, strict=True)
    )


def rollup(tfs=TFS, **kw) -> Rollup:
    return Rollup(tfs, close_delay_ms=kw.pop("close_delay_ms", DELAY), lateness_ms=kw.pop("lateness_ms", LATENESS), **kw)


# ------------------------------------------------------------------------------ table-driven


FIELD_CASES = {
    "plain": [minute("A", 0, o=10, h=11, low=9, c=10.5, v=100, vwap=10.2, n=3),
              minute("A", 2, o=10.5, h=12, low=10, c=11, v=50, vwap=11.1, n=2)],
    "out of order": [minute("A", 4, o=13, c=14), minute("A", 1, o=11, h=20, c=12), minute("A", 3, o=9, low=1)],
    "first minute volume-only: open from the next": [minute("A", 0, o=None, v=70), minute("A", 1, o=12, v=30)],
    "last minute volume-only: close from the one before": [minute("A", 3, o=12, c=12.5), minute("A", 4, o=None)],
    "zero-volume minute: no weight in vwap": [minute("A", 0, o=10, v=0, vwap=50.0), minute("A", 1, o=11, v=10, vwap=11.0)],
    "no priced minute: vwap None": [minute("A", 0, o=None, v=0)],
    "corrected close (prices, no volume)": [minute("A", 0, o=10, v=100), minute("A", 1, o=20, v=0, vwap=NONE, n=0)],
}  # fmt: skip


@pytest.mark.parametrize("case", FIELD_CASES)
def test_a_closed_bucket_follows_the_database_rule(case):
    r = rollup(("5m",))
    bars = FIELD_CASES[case]
    for bar in bars:
        assert r.add(bar) == []  # the bucket is still open
    (final,) = r.advance(T0 + 5 * M + DELAY)
    assert (final.timeframe, final.timestamp, final.revision, final.status) == ("5m", T0, 0, "final")
    assert close_enough(fields(final), reference({(b.symbol, b.timestamp): b for b in bars}, "5m", "A", T0))


@pytest.mark.parametrize(
    ("watermark", "closes"),
    [(T0 + 5 * M, False), (T0 + 5 * M + DELAY - 1, False), (T0 + 5 * M + DELAY, True)],
    ids=["minute end", "one ms before the close delay", "close delay"],
)
def test_a_bucket_is_final_when_the_watermark_closes_its_last_minute(watermark, closes):
    r = rollup(("5m",))
    r.add(minute("A", 1))
    assert bool(r.advance(watermark)) is closes


def test_revisions_count_changes_only_and_late_minutes_revise_a_closed_bucket():
    r = rollup(("5m", "15m"))
    r.add(minute("A", 0, o=10))
    assert [b.timeframe for b in r.advance(T0 + 5 * M + DELAY)] == ["5m"]
    assert r.add(minute("A", 0, o=10, rev=1)) == []  # the 1m bar was revised, its fields stayed: no change
    (five,) = r.add(minute("A", 0, o=10, h=30, rev=2))  # a late trade: a new high; 15m is still open
    assert (five.timeframe, five.revision, five.high) == ("5m", 1, 30)
    (five,) = r.add(minute("A", 2, o=5, rev=0))  # a late trade opened a new minute in the closed bucket
    assert (five.revision, five.low, five.volume) == (2, 5, 200)
    (fifteen,) = r.advance(T0 + 15 * M + DELAY)
    assert (fifteen.timeframe, fifteen.revision, fifteen.high, fifteen.low) == ("15m", 0, 30, 5)


def test_late_minute_opens_a_closed_bucket_and_spent_buckets_go():
    r = rollup(("5m",))
    r.add(minute("A", 0))
    r.advance(T0 + 6 * M + DELAY)
    (late,) = r.add(minute("B", 3, o=7))  # B had no bar in the bucket when it closed: its first final
    assert (late.symbol, late.revision, late.open) == ("B", 0, 7)
    assert r.buckets == 2
    r.advance(T0 + 5 * M + LATENESS + 1)  # the bucket's last minute is past the lateness: nothing can revise it
    assert r.buckets == 0 and r.minutes == 0
    assert r.add(minute("A", 1, o=99, rev=1)) == []  # too old to be (the book refuses such trades anyway)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), settle_every=st.integers(1, 6), lateness=st.sampled_from([LATENESS, M // 2]))
def test_work_put_off_to_a_later_step_changes_nothing_the_rollup_sends(seed, settle_every, lateness):
    """`add` puts off folding a new minute of open buckets and `close_through` (the step that closes a
    minute) the settling, both until `settle` or something reads the buckets: the same input gives the
    same coarse bars, live ones included, and the same snapshot once settled, as a rollup that folds
    each minute at once (`note_live(())` after every `add`) and settles as it advances; minutes held
    stay bounded even when settle is never called. A lateness shorter than a bucket settles minutes
    before their bucket closes."""
    rng = random.Random(seed)
    now_, later, never = (rollup(lateness_ms=lateness) for _ in range(3))
    got: dict[str, list] = {"now": [], "later": [], "never": []}
    for m in range(40):
        for symbol in "AB":
            for _ in range(rng.choice((1, 1, 2))):  # a minute, sometimes its revision (late trades)
                back = rng.choice((0, 0, 0, 1, 2, 4))  # minutes closed a while ago, within the lateness
                bar = minute(symbol, max(0, m - back), o=rng.uniform(9, 11), v=rng.randint(0, 50), rev=rng.randint(0, 3))
                for r, out in ((now_, got["now"]), (later, got["later"]), (never, got["never"])):
                    out += r.add(bar)
                now_.note_live(())  # reads the buckets: folds the minute in now
        watermark = T0 + (m + 1) * M + DELAY
        got["now"] += now_.advance(watermark)
        got["later"] += later.close_through(watermark)
        got["never"] += never.close_through(watermark)
        if m % settle_every == 0:
            later.settle()
        # C only ever trades in forming minutes: its closed ones must go all the same
        forming = [minute("A", m + 1, o=rng.uniform(9, 11), status="live"), minute("C", m + 1, status="live")]
        live_now = rng.random() < 0.5  # (live updates are throttled: steps in between do not read the buckets)
        for r, out in ((now_, got["now"]), (later, got["later"]), (never, got["never"])):
            if live_now:
                out += r.take_live(forming)
            assert r.minutes <= 3 * (lateness // M + 6)  # per symbol: the revisable minutes, one more, the forming one
        assert never.minutes <= now_.minutes + 2  # at most one more minute of A and B held
    assert got["later"] == got["now"] and got["never"] == got["now"]
    later.settle()
    never.settle()
    assert later.snapshot() == now_.snapshot() == never.snapshot()


def test_live_buckets_combine_final_and_forming_minutes_once_per_call():
    r = rollup(("5m", "1h"))
    r.add(minute("A", 0, o=10, v=100))
    forming = minute("A", 1, o=12, v=5, status="live")
    live = r.take_live([forming])
    assert sorted((b.timeframe, b.status, b.open, b.close, b.volume) for b in live) == [
        ("1h", "live", 10, 12, 105), ("5m", "live", 10, 12, 105)]  # fmt: skip
    assert r.take_live([]) == []  # nothing changed since
    r.add(minute("A", 1, o=12, v=6))  # the forming minute is final now
    assert {b.volume for b in r.take_live([])} == {106}
    r.advance(T0 + 5 * M + DELAY)
    assert [b.timeframe for b in r.take_live([])] == []  # 5m closed; 1h unchanged


def test_forming_minutes_noted_between_coarse_updates_give_one_update_with_the_latest():
    """LIVE_COARSE_UPDATE_INTERVAL_S: the minutes' live bars are noted every interval, the coarse ones
    sent less often, each bucket once, with what the minutes said last (a later minute included)."""
    r = rollup(("5m",))
    r.add(minute("A", 0, o=10, v=100))
    r.note_live([minute("A", 1, o=12, v=5, status="live")])
    r.note_live([minute("A", 1, o=12, v=9, status="live"), minute("B", 1, o=50, v=1, status="live")])
    r.add(minute("A", 1, o=12, v=9))  # that minute is final, the next forms
    r.note_live([minute("A", 2, o=13, v=2, status="live")])
    live = r.take_live()
    assert sorted((b.symbol, b.open, b.close, b.volume) for b in live) == [("A", 10, 13, 111), ("B", 50, 50, 1)]
    assert r.take_live() == []


def test_sums_saturate_at_the_bar_bounds():
    r = rollup(("1d",))
    for m in range(3):
        r.add(minute("A", m, v=MAX_VOLUME, n=2**30))
    (final,) = r.close_all()
    assert final.volume == MAX_VOLUME and final.trades == 2**31 - 1
    msgspec.json.decode(msgspec.json.encode(final), type=Bar)  # within the schema's bounds


def test_buckets_beyond_the_limit_are_refused_not_built():
    r = rollup(("5m",), max_buckets=2)
    for symbol in "ABC":
        r.add(minute(symbol, 0))
    r.settle()  # the step after: new minutes of open buckets are folded in there
    assert (r.buckets, r.refused) == (2, 1)
    assert sorted(b.symbol for b in r.close_all()) == ["A", "B"]


def test_snapshot_restores_the_same_rollup_and_a_timeframe_added_publishes_complete_buckets_only():
    r = rollup(("5m",))
    r.add(minute("A", 0))
    r.add(minute("A", 7, o=3))
    r.advance(T0 + 8 * M + DELAY)
    r.take_live([minute("A", 8, o=4, status="live")])
    back = Rollup.restore(r.snapshot(), ("5m", "1h"), close_delay_ms=DELAY, lateness_ms=LATENESS)
    assert back.complete_from["1h"] == first_complete(T0 + 8 * M + DELAY, DELAY)
    assert back.take_live([]) == r.take_live([])
    steps = [lambda x: x.add(minute("A", 8, o=4)), lambda x: x.add(minute("A", 1, o=50, rev=1)),
             lambda x: x.advance(T0 + 10 * M + DELAY), lambda x: x.close_all()]  # fmt: skip
    for step in steps:
        assert step(back) == step(r)  # 1h: its bucket (23:00) began before the snapshot, never published
    with pytest.raises(ValueError, match="unreadable"):
        Rollup.restore(b"\x93garbage", TFS, close_delay_ms=DELAY, lateness_ms=LATENESS)


def afresh(r: Rollup) -> bytes:
    """The rollup's snapshot, encoded whole from its state (no encoding kept from an earlier one)."""
    from flows import timeframes

    row = timeframes._row
    return timeframes._encoder.encode(timeframes._State(
        timeframes.STATE_VERSION, r.watermark, r.complete_from, r.refused,
        [row(b) for bars in r._recent.values() for b in bars.values()], [row(b) for bars in r._live.values() for b in bars.values()],
        [b for buckets in r._buckets.values() for b in buckets.values()], list(r._dirty),
    ))  # fmt: skip


def test_a_snapshot_reuses_the_encoding_of_revisable_minutes_only_while_they_are_unchanged():
    """The bytes are those of encoding the whole state afresh after every kind of change: a new
    minute, a revision, a late minute, settling past the lateness (more than 15 bars a minute:
    msgpack's longer array header), and a restore of them gives the same rollup."""
    r = rollup()
    symbols = [f"S{i}" for i in range(20)]
    steps = [
        *[lambda x, s=s: x.add(minute(s, 0)) for s in symbols],
        lambda x: x.add(minute("S1", 1, o=11.0)),
        lambda x: x.add(minute("S1", 0, o=12.0, rev=1)),  # a revision of a minute already encoded
        lambda x: x.advance(T0 + 2 * M + DELAY),
        lambda x: x.add(minute("S2", 1, o=9.0)),  # a late minute into one already encoded
        lambda x: x.take_live([minute("S3", 2, o=4.0, status="live")]),
        lambda x: x.advance(T0 + 9 * M + DELAY),  # minutes 0-1 settle: their encodings go
        lambda x: x.add(minute("S1", 8, o=13.0)),
    ]
    for step in steps:
        step(r)
        assert r.snapshot() == afresh(r)
        assert r.snapshot() == afresh(r)  # and again, from the encodings kept
        assert set(r._encoded_recent) <= set(r._recent), "kept encodings of settled minutes (memory grows)"
    back = Rollup.restore(r.snapshot(), TFS, close_delay_ms=DELAY, lateness_ms=LATENESS)
    assert afresh(back) == afresh(r)
    assert back.add(minute("S1", 8, o=14.0, rev=1)) == r.add(minute("S1", 8, o=14.0, rev=1))
    assert back.snapshot() == r.snapshot() == afresh(r)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_the_buckets_encoding_kept_between_snapshots_is_the_buckets_own_after_any_step(seed):
    """A snapshot keeps every bucket's encoding until a bucket changes: after any mix of new minutes,
    revisions, late minutes, live notes and updates, closes and settling, with or without a snapshot
    between them, its bytes are those of the state encoded whole."""
    rng = random.Random(seed)
    r = rollup()
    watermark = T0
    for m in range(30):
        step = rng.choice(("new", "revision", "late", "live", "note", "close", "settle", "advance", "snapshot"))
        symbol = rng.choice("ABC")
        if step == "new":
            r.add(minute(symbol, m, o=rng.uniform(9, 11), v=rng.randint(0, 50)))
        elif step in ("revision", "late"):
            r.add(
                minute(
                    symbol,
                    max(0, m - rng.randint(1, 5)),
                    o=rng.uniform(9, 11),
                    rev=rng.randint(0, 2) if step == "revision" else 0,
                )
            )
        elif step in ("live", "note"):
            forming = [minute(symbol, m + 1, o=rng.uniform(9, 11), status="live")]
            r.take_live(forming) if step == "live" else r.note_live(forming)
        elif step in ("close", "advance"):
            watermark = max(watermark, T0 + m * M + DELAY + rng.randint(0, 2) * M)
            r.close_through(watermark) if step == "close" else r.advance(watermark)
        elif step == "settle":
            r.settle()
        if rng.random() < 0.6:
            assert r.snapshot() == afresh(r), step
    assert r.snapshot() == afresh(r)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=512),
    # an array of a snapshot's eight fields: any version number, then anything
    st.builds(lambda version, rest: b"\x98" + msgspec.msgpack.encode(version) + rest,
              st.one_of(st.integers(-(2**63), 2**64 - 1), st.sampled_from([1, 2, 3])), st.binary(max_size=256)),
))  # fmt: skip
def test_a_rollup_snapshot_of_arbitrary_bytes_is_refused_with_a_reason_or_restored(data):
    """A recovery store's bytes, damaged or of any version number: a ValueError saying why, nothing else."""
    try:
        Rollup.restore(data, TFS, close_delay_ms=DELAY, lateness_ms=LATENESS)
    except ValueError as exc:
        assert "timeframe rollup snapshot" in str(exc)


@pytest.mark.parametrize("n", [0, 15, 16, 65_535, 65_536])
def test_the_spliced_array_header_is_msgpacks_own_at_every_size(n):
    from flows.snapshots import array_header, spliced_array

    encoded = msgspec.msgpack.encode([None] * n)
    assert encoded == array_header(n) + b"\xc0" * n
    assert msgspec.msgpack.encode(spliced_array(n, [b"\xc0"] * n)) == encoded


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_snapshot_restores_to_the_same_rollup(version):
    """Recovery stores written before minutes were encoded as arrays (2: buckets as arrays, minutes and
    published records as maps) or before buckets were (1: maps throughout) still resume, to the same state."""
    r = rollup()
    for step in (lambda x: x.add(minute("A", 0, o=10.0)), lambda x: x.add(minute("B", 3, o=5.0)),
                 lambda x: x.add(minute("A", 0, o=12.0, rev=1)), lambda x: x.advance(T0 + 5 * M + DELAY),
                 lambda x: x.add(minute("A", 6, o=11.0)), lambda x: x.take_live([minute("B", 7, o=6.0, status="live")])):  # fmt: skip
        step(r)
    buckets = [b for held in r._buckets.values() for b in held.values()]
    assert any(b.emitted is not None for b in buckets) and any(not b.closed for b in buckets)
    assert r._live, "a forming minute is part of the state written"

    def emitted(b) -> Bar | None:  # what versions 1 and 2 held: the whole record published last
        if b.emitted is None:
            return None
        o, h, low, c, v, vwap, n = b.emitted
        return Bar(symbol=b.symbol, timeframe=b.timeframe, timestamp=b.start, open=o, high=h, low=low, close=c, volume=v,
                   vwap=vwap, trades=n, revision=b.revision, status="final")  # fmt: skip

    def bucket(b) -> dict | list:  # version 1: every field of a bucket and of its sums by name; 2: arrays
        if version == 2:
            return [b.timeframe, b.symbol, b.start, b.settled, b.finals, b.closed, b.revision, emitted(b)]
        return {"timeframe": b.timeframe, "symbol": b.symbol, "start": b.start, "settled": msgspec.structs.asdict(b.settled),
                "finals": msgspec.structs.asdict(b.finals), "closed": b.closed, "revision": b.revision, "emitted": emitted(b)}  # fmt: skip

    def written(number: int) -> bytes:
        return msgspec.msgpack.encode([
            number, r.watermark, r.complete_from, r.refused, [b for bars in r._recent.values() for b in bars.values()],
            [b for bars in r._live.values() for b in bars.values()], [bucket(b) for b in buckets], list(r._dirty),
        ])  # fmt: skip

    back = Rollup.restore(written(version), TFS, close_delay_ms=DELAY, lateness_ms=LATENESS)
    assert back.snapshot() == r.snapshot()
    for step in (lambda x: x.add(minute("A", 1, o=30.0)), lambda x: x.advance(T0 + 20 * M + DELAY), lambda x: x.close_all()):
        assert step(back) == step(r)
    with pytest.raises(ValueError, match="version 4; this flow restores 1, 2, 3"):
        Rollup.restore(written(4), TFS, close_delay_ms=DELAY, lateness_ms=LATENESS)


def test_a_snapshot_holds_a_minute_as_an_array_in_under_half_the_bytes_of_a_map():
    """The reason for version 3: most of a snapshot is revisable minutes, and a map of a bar is mostly names."""
    from flows import timeframes

    bar = minute("BRK.A", 0, o=612_345.25, h=612_400.5, low=612_000.0, c=612_111.75, v=12_345, vwap=612_222.125, n=321)
    row = timeframes._encoder.encode(timeframes._row(bar))
    assert len(row) < len(timeframes._encoder.encode(bar)) / 2
    assert timeframes._bar(msgspec.msgpack.decode(row, type=timeframes._Minute)) == bar


def test_bar_timeframes_setting_is_validated_with_the_reason(monkeypatch):
    assert parse_timeframes("") == ()
    assert parse_timeframes("1m,1d,5m") == ("1d", "5m")
    with pytest.raises(ValueError, match="unknown timeframe '1w'"):
        parse_timeframes("5m,1w")
    with pytest.raises(ValueError, match="at most"):
        parse_timeframes(",".join(["5m"] * 100))
    monkeypatch.setenv("BAR_TIMEFRAMES", "5m,1 h")
    with pytest.raises(SettingsError, match="BAR_TIMEFRAMES: Value error, unknown timeframe '1 h'"):
        load()
    monkeypatch.setenv("BAR_TIMEFRAMES", " 1d , 5m ")
    assert load().bar_timeframes == ("1d", "5m")
    assert load().as_env()["BAR_TIMEFRAMES"] == "1d,5m"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e400", "3601", "", "5s"])
def test_the_coarse_live_interval_refuses_what_is_not_a_sane_interval(monkeypatch, value):
    monkeypatch.setenv("LIVE_COARSE_UPDATE_INTERVAL_S", value)
    with pytest.raises(SettingsError, match="LIVE_COARSE_UPDATE_INTERVAL_S"):
        load()


def test_the_coarse_live_interval_is_read(monkeypatch):
    monkeypatch.setenv("LIVE_COARSE_UPDATE_INTERVAL_S", "0.5")
    assert load().live_coarse_update_interval_s == 0.5


# ------------------------------------------------------------------------------ through the partition step

SYMBOLS = ("AAA", "BBB", "CCC")
CONDITIONS = (None, None, None, [14, 37], [10, 14], [17, 32])  # all fields; volume only; high/low + volume


@functools.cache
def flow_settings() -> Settings:
    return Settings(bar_close_delay_s=DELAY / 1000, allowed_lateness_s=LATENESS / 1000, live_update_interval_s=3600,
                    health_interval_s=3600, idle_advance_s=3600, bar_timeframes=TFS)  # fmt: skip


def trades(seed: int, n: int) -> list[bytes]:
    """Trades over ~70 minutes from 23:20 UTC, mostly in time order; some late, within the lateness
    (revisions, and new bars in closed minutes) or beyond it (refused)."""
    rng = random.Random(seed)
    clock, out = T0, []
    for i in range(n):
        clock += rng.randint(0, 50_000)
        t = clock - (rng.randint(0, LATENESS + 90_000) if rng.random() < 0.15 else 0)
        event = {"ev": "T", "sym": rng.choice(SYMBOLS), "x": 4, "i": str(i), "z": 3, "p": round(rng.uniform(9, 11), 2),
                 "s": rng.randint(1, 500), "t": max(t, T0), "q": i}  # fmt: skip
        conditions = rng.choice(CONDITIONS)
        if conditions is not None:
            event["c"] = conditions
        out.append(orjson.dumps(event))
    return out


def run(values: list[bytes], cuts: list[int], restart_at: int | None = None) -> list[Bar | Price]:
    """The partition step over `values` in batches split at `cuts`; optionally restarted from its
    snapshot after batch `restart_at`. Returns its bars and prices, in order."""
    s = flow_settings()
    logic = PartitionLogic(s, DetectionSettings(enabled=False), None)
    out: list = []
    bounds = [0, *sorted(set(cuts)), len(values)]
    for n, (a, b) in enumerate(itertools.pairwise(bounds)):
        if a < b:
            out += logic.on_batch([RawBatch("t", 0, range(a, b), values[a:b])])[0]
        if n == restart_at and logic.key != "?":  # a partition step has state once it saw its partition
            logic = PartitionLogic(s, DetectionSettings(enabled=False), logic.snapshot())
    out += logic.on_eof()[0]
    return [o for o in out if isinstance(o, Bar | Price)]


def check_against_the_minutes(out: list) -> None:
    """Every coarse final, when emitted, equals the rollup of the 1-minute finals emitted before it;
    revisions per bucket count 0, 1, 2, ...; the last of each equals the rollup of the last minutes."""
    minutes: dict[tuple[str, int], Bar] = {}
    revisions: dict[tuple, int] = defaultdict(lambda: -1)
    latest: dict[tuple, Bar] = {}
    for bar in out:
        if not isinstance(bar, Bar) or bar.status != "final":
            continue
        if bar.timeframe == "1m":
            minutes[(bar.symbol, bar.timestamp)] = bar
            continue
        key = (bar.timeframe, bar.symbol, bar.timestamp)
        assert bar.revision == revisions[key] + 1, key
        revisions[key] = bar.revision
        assert close_enough(fields(bar), reference(minutes, bar.timeframe, bar.symbol, bar.timestamp)), key
        latest[key] = bar
    expected = {(tf, s, t - t % TIMEFRAMES[tf].ms) for (s, t) in minutes for tf in TFS}
    assert set(latest) == expected
    for (tf, s, start), bar in latest.items():
        assert close_enough(fields(bar), reference(minutes, tf, s, start))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(20, 300), cuts=st.lists(st.integers(0, 300), max_size=12),
       other=st.lists(st.integers(0, 300), max_size=12), restart=st.integers(0, 12))  # fmt: skip
def test_streaming_timeframes_equal_the_minutes_rollup_whatever_the_batching_and_restarts(seed, n, cuts, other, restart):
    values = trades(seed, n)
    cuts = [c for c in cuts if c < n]
    out = run(values, cuts)
    check_against_the_minutes(out)
    finals = [b for b in out if isinstance(b, Bar) and b.status == "final"]
    assert any(b.timeframe == "1d" for b in finals) and any(b.timeframe == "5m" for b in finals)
    # the same bars, revisions included, in the same order, however the input was batched, and across a restart
    again = [
        b for b in run(values, [c for c in other if c < n], restart_at=restart) if isinstance(b, Bar) and b.status == "final"
    ]
    assert again == finals


def test_the_partition_step_publishes_live_coarse_bars_and_last_prices():
    s = flow_settings().model_copy(update={"live_update_interval_s": 1e-9, "live_coarse_update_interval_s": 1e-9})
    t = DAY0 + 3 * M + 1_000
    batch = [orjson.dumps({"ev": "T", "sym": "AAA", "x": 4, "i": str(i), "z": 3, "p": p, "s": 10 * (i + 1), "t": t + i, "q": i})
             for i, p in enumerate((10.0, 10.5, 9.8))]  # fmt: skip
    slow = PartitionLogic(s.model_copy(update={"live_coarse_update_interval_s": 3600}), DetectionSettings(enabled=False), None)
    out, _ = slow.on_batch([RawBatch("t", 0, range(3), batch)])
    assert [b.timeframe for b in out if isinstance(b, Bar) and b.status == "live"] == ["1m"]  # the coarse ones wait
    logic = PartitionLogic(s, DetectionSettings(enabled=False), None)
    out, _ = logic.on_batch([RawBatch("t", 0, range(3), batch)])
    live = sorted((b.timeframe, b.close, b.volume) for b in out if isinstance(b, Bar) and b.status == "live")
    assert live == [("15m", 9.8, 60), ("1d", 9.8, 60), ("1h", 9.8, 60), ("1m", 9.8, 60), ("5m", 9.8, 60)]
    (price,) = [p for p in out if isinstance(p, Price)]
    assert (price.symbol, price.price, price.size, price.timestamp, price.session) == ("AAA", 9.8, 30, t + 2, "2024-01-02")
    assert (price.open, round(price.change, 9)) == (10.0, -0.2)
    late = orjson.dumps({"ev": "T", "sym": "AAA", "x": 4, "i": "x", "z": 3, "p": 11.0, "s": 7, "t": t - 1, "q": 9})
    out, _ = logic.on_batch([RawBatch("t", 0, range(3, 4), [late])])
    assert not [p for p in out if isinstance(p, Price)], "earlier in event time: not the last price"


def test_a_step_that_closes_minutes_puts_the_rollups_folding_and_coarse_live_updates_off_for_a_second(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(partition.time, "monotonic", lambda: now[0])
    s = flow_settings().model_copy(update={"live_update_interval_s": 1e-9, "live_coarse_update_interval_s": 1e-9})
    logic = PartitionLogic(s, DetectionSettings(enabled=False), None)
    t = DAY0 + 3 * M

    def feed(*times: int) -> list[Bar]:
        values = [orjson.dumps({"ev": "T", "sym": "AAA", "x": 4, "i": str(at), "z": 3, "p": 10.0, "s": 10, "t": at, "q": 0})
                  for at in times]  # fmt: skip
        out, _ = logic.on_batch([RawBatch("t", 0, range(len(values)), values)])
        return [b for b in out if isinstance(b, Bar)]

    feed(t + 1_000)
    now[0] += 0.01
    closing = feed(t + M + DELAY)  # closes minute 3 (inside its buckets): its final bar leaves now
    assert [(b.timeframe, b.status) for b in closing] == [("1m", "final"), ("1m", "live")]
    assert logic.rollup._unfolded, "folding it into its buckets waits"
    now[0] += partition.ROLLUP_WAITS_S / 2
    assert "5m" not in {b.timeframe for b in feed(t + M + DELAY + 1)}, "no coarse live update during the wait"
    assert logic.rollup._unfolded
    now[0] += partition.ROLLUP_WAITS_S / 2
    after = feed(t + M + DELAY + 2)
    assert not logic.rollup._unfolded, "the first step after the wait that closes nothing folds"
    live = {b.timeframe: b for b in after if b.status == "live"}
    assert set(live) == {"1m", "5m", "15m", "1h", "1d"}
    assert (live["5m"].volume, live["1d"].volume) == (40, 40)  # minute 3's 10 and minute 4's 30 so far


def test_a_replay_whose_every_step_closes_minutes_gets_coarse_live_updates_and_holds_a_waits_live_minutes_at_most(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(partition.time, "monotonic", lambda: now[0])
    s = flow_settings().model_copy(update={"live_update_interval_s": 1e-9, "live_coarse_update_interval_s": 1e-9})
    logic = PartitionLogic(s, DetectionSettings(enabled=False), None)
    coarse_live, held = [], []
    for minute in range(40):
        now[0] += partition.ROLLUP_WAITS_S / 3
        at = DAY0 + minute * M + DELAY  # closes the minute before
        values = [orjson.dumps({"ev": "T", "sym": sym, "x": 4, "i": f"{sym}{at}", "z": 3, "p": 10.0, "s": 10, "t": at, "q": 0})
                  for sym in ("AAA", "BBB")]  # fmt: skip
        out, _ = logic.on_batch([RawBatch("t", 0, range(2), values)])
        coarse_live.append(any(isinstance(b, Bar) and b.status == "live" and b.timeframe != "1m" for b in out))
        held.append(len(logic.unnoted_live))
    assert sum(coarse_live[1:]) >= 9, coarse_live  # about once per wait, as every step closes minutes
    assert max(held) <= 2 * 3, held  # a wait's live minutes at most (two symbols, three steps a wait)


def test_an_older_recovery_snapshot_restores_without_publishing_incomplete_buckets():
    values = trades(7, 200)
    s = flow_settings()
    logic = PartitionLogic(s, DetectionSettings(enabled=False), None)
    logic.on_batch([RawBatch("t", 0, range(100), values[:100])])
    old = logic.snapshot()[:4]  # what the flow's previous version stored
    back = PartitionLogic(s, DetectionSettings(enabled=False), old)
    out = back.on_batch([RawBatch("t", 0, range(100, 200), values[100:])])[0] + back.on_eof()[0]
    coarse = [b for b in out if isinstance(b, Bar) and b.timeframe != "1m" and b.status == "final"]
    since = first_complete(logic.book.watermark, DELAY)
    assert coarse and all(b.timestamp >= since for b in coarse)


def test_a_bucket_closes_in_the_batch_whose_trade_closes_its_last_minute_and_late_trades_revise_it():
    logic = PartitionLogic(flow_settings(), DetectionSettings(enabled=False), None)

    def feed(*trades: tuple[str, int, float]) -> list[Bar]:
        values = [orjson.dumps({"ev": "T", "sym": s, "x": 4, "i": f"{s}{t}", "z": 3, "p": p, "s": 10, "t": t, "q": 0})
                  for s, t, p in trades]  # fmt: skip
        out, _ = logic.on_batch([RawBatch("t", 0, range(len(values)), values)])
        return [b for b in out if isinstance(b, Bar) and b.status == "final" and b.timeframe != "1m"]

    assert feed(("AAA", T0 + 1_000, 10.0), ("AAA", T0 + 4 * M + 1_000, 11.0), ("BBB", T0 + 5 * M + DELAY - 1, 1.0)) == []
    (five,) = feed(("BBB", T0 + 5 * M + DELAY, 1.0))  # closes minute 4, hence the bucket: its rev 0 comes now
    assert (five.symbol, five.timeframe, five.revision, five.open, five.close, five.volume) == ("AAA", "5m", 0, 10, 11, 20)
    (revised,) = feed(("AAA", T0 + 2 * M, 30.0))  # a late trade inside it (a new minute): the 15m bucket is still open
    assert (revised.timeframe, revised.revision, revised.high, revised.volume) == ("5m", 1, 30, 30)
    assert feed(("CCC", T0 + 6 * M + DELAY, 1.0)) == []  # BBB's minute 5 closes; its bucket [5, 10) stays open


def test_a_silent_partition_closes_a_bucket_whose_last_minutes_had_no_trade(monkeypatch):
    """No bar in the bucket's last minutes, so no minute closes to mark its end: the watermark of a
    silent, caught-up partition (following the wall clock) closes it."""
    from flows import partition

    clock = [1000.0]
    monkeypatch.setattr(partition.time, "monotonic", lambda: clock[0])
    logic = PartitionLogic(flow_settings().model_copy(update={"idle_advance_s": 1.0}), DetectionSettings(enabled=False), None)

    def batch(*events: dict) -> list[Bar]:
        values = [orjson.dumps({"ev": "T", "x": 4, "z": 3, "s": 10, "q": 0, **e}) for e in events]
        out, _ = logic.on_batch([RawBatch("t", 0, range(len(values)), values, caught_up=not values)])
        return [b for b in out if isinstance(b, Bar) and b.timeframe == "5m" and b.status == "final"]

    assert batch({"sym": "AAA", "i": "1", "p": 10.0, "t": T0 + 3 * M}) == []
    assert batch({"sym": "BBB", "i": "2", "p": 5.0, "t": T0 + 4 * M + 30_000, "c": [15]}) == []  # moves event time only
    assert batch() == []  # caught up
    for _ in range(20):
        clock[0] += 2
        assert batch() == []
    out, _ = logic.on_notify()  # 40 s idle: the watermark follows, past the bucket's end + delay
    assert [(b.symbol, b.timeframe, b.revision) for b in out if isinstance(b, Bar) and b.status == "final"] == [("AAA", "5m", 0)]
