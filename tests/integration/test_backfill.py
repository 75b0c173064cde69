"""Backfill (flows.backfill): a past day from flat files into the tables while the live flow runs.

The live flow runs as its own process on its own topics, tailing; the backfill runs beside it with
an unreachable Redis (it must not need one). Its day is compared with the independent reference
bars at 1 minute and coarser timeframes; the live day's bars, dead letters and `latest_bars` are
checked untouched; a second run rewrites no row. Then the revision rule against bars the live flow
wrote (same values: untouched; different values: corrected, revision + 1) on plain PostgreSQL and
the embedded TimescaleDB, the refresh of TimescaleDB's continuous aggregates (before 0004), and
hostile input: bad rows, a day the files do not hold, a day not over, symbols not in the files.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal

from connectors.feeds.synthetic import generate
from connectors.feeds.synthetic.config import DEFAULT_START_MS, FeedEvent
from connectors.kafka.settings import KafkaSettings
from connectors.kafka.topics import delete_topics, read_to_end, topics_named
from flows.backfill import Report, backfill, main
from flows.detect.settings import DetectionSettings
from flows.settings import Settings
from tests.support.bars import BAR_COLUMNS, ROOT, assert_same_bars, expected_bars
from tests.support.databases import Storage
from tests.support.fixtures.flat_files import gz, write_trades_flat_file
from tests.support.reference import reference_bars
from tests.support.rollups import EVERY, assert_views_match, reference, table
from tests.support.services import TEST_DATABASE_URL, base_settings, publish, read_topic, table_bars

pytestmark = [pytest.mark.integration, pytest.mark.cost(50)]

DAY = date(2026, 11, 2)  # the synthetic feed's default day (DEFAULT_START_MS: 09:30 New York)
NEXT_DAY_MS = DEFAULT_START_MS + 86_400_000  # the live flow's day (its late trades stamped before 09:30)
LIVE_DAY = datetime(2026, 11, 3, tzinfo=UTC)
LIVE_DAY_MS = int(LIVE_DAY.timestamp() * 1000)
NO_REDIS = "redis://127.0.0.1:1/0"  # nothing listens there: a backfill that touched Redis would fail
SEED, SYMBOLS = 31, 6


def day_trades(seconds: float = 6 * 60, **kw: object) -> list[bytes]:
    """A clean day of trades (a flat file has no duplicates nor late arrivals), realistic conditions."""
    options: dict[str, object] = {"seed": SEED, "symbols": SYMBOLS, "rate": 8.0, "seconds": seconds, "duplicate_ratio": 0,
                                  "out_of_order_ratio": 0, "late_ratio": 0} | kw  # fmt: skip
    return [e.value for e in generate(**options) if e.topic_kind == "trades"]


def flat_files(root: Path, values: list[bytes], day: date = DAY) -> Path:
    write_trades_flat_file(root / "trades_v1" / f"{day:%Y}" / f"{day:%m}" / f"{day.isoformat()}.csv.gz", values)
    return root


def minute_reference(values: list[bytes]) -> pl.DataFrame:
    return reference_bars([orjson.loads(v) for v in values]).select(BAR_COLUMNS).sort("symbol", "timestamp")


def bars_between(conn: psycopg.Connection, start_ms: int, end_ms: int) -> pl.DataFrame:
    return table_bars(conn).filter((pl.col("timestamp") >= start_ms) & (pl.col("timestamp") < end_ms))


def as_table(minute_bars: pl.DataFrame) -> pl.DataFrame:
    """Reference bars (epoch ms) in the shape `tests.support.rollups.table` reads a timeframe in."""
    return minute_bars.with_columns(pl.from_epoch("timestamp", time_unit="ms").dt.replace_time_zone("UTC"))


def assert_day_matches(conn: psycopg.Connection, values: list[bytes]) -> None:
    """The day's minutes (its UTC day: the synthetic trading hours are inside it) equal the reference,
    and so do its 5-minute and 1-hour bars."""
    expected = minute_reference(values)
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    assert_same_bars(bars_between(conn, int(start.timestamp() * 1000), LIVE_DAY_MS), expected)
    for view in ("ohlcv_5min", "ohlcv_1hour"):
        got = table(conn, view).filter((pl.col("timestamp") >= start) & (pl.col("timestamp") < LIVE_DAY))
        assert_frame_equal(got, reference(as_table(expected), EVERY[view]), check_dtypes=False, rel_tol=1e-9)
        assert got.height > 0


def xmins(conn: psycopg.Connection, tables: tuple[str, ...] = ("ohlcv_1min",)) -> dict[str, object]:
    """Each table's row versions: equal before and after means no row was rewritten."""
    return {t: conn.execute(f"SELECT string_agg(xmin::text, ',' ORDER BY ctid) FROM {t}").fetchone() for t in tables}


def latest(conn: psycopg.Connection) -> dict[str, datetime]:
    return dict(conn.execute("SELECT symbol, timestamp FROM latest_bars").fetchall())  # type: ignore[arg-type]


def no_topics_left(kafka: KafkaSettings) -> None:
    assert topics_named(kafka, f"backfill.{DAY.isoformat()}.") == []


def sentinels(events: list[FeedEvent], after_ms: int) -> list[FeedEvent]:
    """One regular trade per symbol `after_ms` past the feed's last trade: every bar before it closes."""
    symbols = sorted({e.key for e in events if e.topic_kind == "trades"})
    last = max(orjson.loads(e.value)["t"] for e in events if e.topic_kind == "trades")
    return [FeedEvent("trades", s, orjson.dumps({"ev": "T", "sym": s.decode(), "x": 4, "i": f"sentinel{n}", "z": 1,
                                                 "p": 10.0, "s": 100, "t": last + after_ms, "q": 1}), "trade", last)
            for n, s in enumerate(symbols)]  # fmt: skip


def start_live_flow(live: Settings, log: Path) -> subprocess.Popen:
    env = os.environ | live.as_env() | {"KAFKA_TAIL": "true"}
    command = [sys.executable, "-m", "bytewax.run", "flows.ohlcv:build_flow()"]
    with log.open("wb") as out:  # a file, not a pipe: a full pipe would stall the flow's logging
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], object], what: str, live: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (seen := condition()) is not True:
        assert live.poll() is None, f"the live flow ended: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what} ({seen}); the live flow said: {log.read_text()[-3000:]}"
        )
        time.sleep(0.2)


def run_backfill(live: Settings, root: Path, **kw: object) -> Report:
    options: dict[str, object] = {"live": live.model_copy(update={"redis_url": NO_REDIS}),
                                  "detection": DetectionSettings(enabled=False)} | kw  # fmt: skip
    return backfill(DAY, root, **options)  # type: ignore[arg-type]


def test_a_day_backfilled_while_the_live_flow_runs(settings: Settings, db: psycopg.Connection, tmp_path: Path) -> None:
    """~25 s here: the live flow's process start and two backfills of 6 symbols x 6 minutes, detection on."""
    day_values = day_trades()
    root = flat_files(tmp_path, day_values)
    live_events = [e for e in generate(seed=SEED, symbols=SYMBOLS, rate=8.0, seconds=6 * 60, start_ms=NEXT_DAY_MS,
                                       duplicate_ratio=0.01, out_of_order_ratio=0.03, late_ratio=0.01)
                   if e.topic_kind == "trades"]  # fmt: skip
    closing = sentinels(live_events, after_ms=180_000)
    live_end = orjson.loads(closing[0].value)["t"] // 60_000 * 60_000  # the sentinels' minute stays open
    expected_live = expected_bars(live_events)
    half = len(live_events) // 2

    log = tmp_path / "live.log"
    running = start_live_flow(settings, log)
    try:
        publish(settings, live_events[:half])
        wait_for(lambda: bars_between(db, LIVE_DAY_MS, live_end).height > 0 or "none", "the live flow's first bars", running, log)
        before = latest(db)
        assert all(t >= LIVE_DAY for t in before.values())

        report = run_backfill(settings, root, detection=DetectionSettings())
        assert report.tally.inserted == report.tally.bars == minute_reference(day_values).height
        assert report.tally.corrected == 0 and report.dead_letters == [] and report.trades == len(day_values)
        after = latest(db)  # latest_bars never goes back to the backfilled day
        assert all(after[s] >= before[s] for s in before), (before, after)

        publish(settings, live_events[half:] + closing)
        wait_for(lambda: (n := bars_between(db, LIVE_DAY_MS, live_end).height) == expected_live.height or f"{n} bars",
                 f"the live flow's {expected_live.height} bars", running, log)  # fmt: skip
    finally:
        running.send_signal(signal.SIGKILL)  # our own child; it has no recovery store to spare
        running.wait()

    assert_day_matches(db, day_values)
    assert_same_bars(bars_between(db, LIVE_DAY_MS, live_end), expected_live)  # the live day: intact
    assert read_topic(settings, settings.topic_dead_letter) == [], "nothing reached the live dead letters"
    assert all(t >= LIVE_DAY for t in latest(db).values())
    detected = {t: db.execute(f"SELECT count(*) FROM {t} WHERE timestamp < %s", (LIVE_DAY,))
                .fetchone()[0] for t in ("events", "indicator_values")}  # type: ignore[index]  # fmt: skip
    assert all(n > 0 for n in detected.values()), detected
    no_topics_left(settings)

    tables = ("ohlcv_1min", "events", "indicator_values", "alerts", "latest_bars")
    versions = xmins(db, tables)
    again = run_backfill(settings, root, detection=DetectionSettings())
    assert (again.tally.inserted, again.tally.corrected, again.tally.unchanged) == (0, 0, report.tally.bars)
    assert xmins(db, tables) == versions, "a second run rewrote rows"
    no_topics_left(settings)


def test_over_bars_the_live_flow_wrote_equal_ones_stay_and_different_ones_are_corrected(
    services: None, storage: Storage, tmp_path: Path
) -> None:
    """Both databases (~4 s each): the bars as the live flow would have left them (one reached the
    same values through revisions, one missed a trade, one is missing), and a newer day's bar."""
    day_values = day_trades(seconds=4 * 60)
    root = flat_files(tmp_path, day_values)
    live = base_settings(database_url=storage.url)
    storage.release()
    first = run_backfill(live, root)
    bars = first.tally.bars
    assert first.tally.inserted == bars == minute_reference(day_values).height

    conn = storage.conn
    (same, differ, gone), newer = (
        conn.execute(
            "SELECT symbol, timestamp FROM ohlcv_1min WHERE close IS NOT NULL ORDER BY timestamp, symbol LIMIT 3"
        ).fetchall(),
        datetime.fromtimestamp(NEXT_DAY_MS / 1000, UTC),
    )
    conn.execute("UPDATE ohlcv_1min SET revision = 2 WHERE (symbol, timestamp) = (%s, %s)", same)
    conn.execute("UPDATE ohlcv_1min SET close = close + 0.5, revision = 1 WHERE (symbol, timestamp) = (%s, %s)", differ)
    conn.execute("DELETE FROM ohlcv_1min WHERE (symbol, timestamp) = (%s, %s)", gone)
    conn.execute("INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades)"
                 " VALUES (%s, %s, 1, 1, 1, 1, 10, 1, 1)", (same[0], newer))  # fmt: skip
    untouched = conn.execute("SELECT xmin::text FROM ohlcv_1min WHERE (symbol, timestamp) = (%s, %s)", same).fetchone()
    storage.release()

    report = run_backfill(live, root)
    assert (report.tally.inserted, report.tally.corrected, report.tally.unchanged) == (1, 1, bars - 2)
    conn = storage.conn
    revision = "SELECT revision, xmin::text FROM ohlcv_1min WHERE (symbol, timestamp) = (%s, %s)"
    assert conn.execute(revision, same).fetchone() == (2, untouched[0]), "an equal bar keeps its row and revision"  # type: ignore[index]
    assert conn.execute(revision, differ).fetchone()[0] == 2, "a corrected bar: the stored revision + 1"  # type: ignore[index]
    assert conn.execute(revision, gone).fetchone()[0] == 0, "a missing bar: inserted"  # type: ignore[index]
    assert_day_matches(conn, day_values)
    assert_views_match(conn)  # every timeframe, through the rollup triggers
    assert conn.execute("SELECT timestamp FROM latest_bars WHERE symbol = %s", (same[0],)).fetchone() == (newer,), (
        "latest_bars went back to the backfilled day"
    )
    versions = xmins(conn, ("ohlcv_1min", "latest_bars"))
    storage.release()

    again = run_backfill(live, root)
    assert (again.tally.inserted, again.tally.corrected, again.tally.unchanged) == (0, 0, bars)
    assert xmins(storage.conn, ("ohlcv_1min", "latest_bars")) == versions, "a second run rewrote rows"
    storage.release()
    no_topics_left(live)


def test_continuous_aggregates_are_refreshed_over_the_day(services: None, fresh_timescale: str, tmp_path: Path) -> None:
    """TimescaleDB before 0004 (or before 2.18): 0002's continuous aggregates serve what they
    materialized below their watermark, so a backfilled day only appears once refreshed."""
    from infra.migrate import up

    up(fresh_timescale, to=3, log=lambda *_: None)
    with psycopg.connect(fresh_timescale, autocommit=True) as conn:
        # a later day is in and materialized: the aggregates' watermark is past the backfilled day
        conn.execute("INSERT INTO symbols VALUES ('AAPL')")
        conn.execute("INSERT INTO ohlcv_1min (symbol, timestamp, open, high, low, close, volume, vwap, trades)"
                     " VALUES ('AAPL', %s, 1, 1, 1, 1, 10, 1, 1)", (datetime.fromtimestamp(NEXT_DAY_MS / 1000, UTC),))  # fmt: skip
        for view in EVERY:
            conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, '2026-11-05')")
    day_values = day_trades(seconds=4 * 60)
    report = run_backfill(base_settings(database_url=fresh_timescale), flat_files(tmp_path, day_values))
    assert "refreshed ohlcv_15min, ohlcv_1day, ohlcv_1hour, ohlcv_5min over [2026-11-02, 2026-11-03)" in report.aggregates
    with psycopg.connect(fresh_timescale, autocommit=True) as conn:
        assert_day_matches(conn, day_values)


@pytest.fixture
def command_env(services: None, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> KafkaSettings:
    """The command's environment: the test database, no Redis; returns its Kafka settings."""
    monkeypatch.setenv("DATABASE_URL", TEST_DATABASE_URL)
    monkeypatch.setenv("REDIS_URL", NO_REDIS)
    return Settings()


def test_bad_rows_go_to_the_backfills_dead_letters_with_file_row_and_reason(
    command_env: KafkaSettings, db: psycopg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = day_trades(seconds=120)
    header, *rows = gzip.decompress(write_trades_flat_file(tmp_path / "good.csv.gz", values).read_bytes()).decode().splitlines()
    bad = ["A B" + rows[0][rows[0].index(",") :], "AAPL,,0"]  # rows 1 and 2: a ticker that is no symbol, a cut row
    path = gz(tmp_path / "trades_v1" / f"{DAY.isoformat()}.csv.gz", "\n".join([header, *bad, *rows]) + "\n")
    topic = f"backfill.{DAY.isoformat()}.hostile.deadletter"
    try:
        assert main(["--date", DAY.isoformat(), "--flat-files", str(tmp_path), "--no-detection", "--run-id", "hostile"]) == 0
        err = capsys.readouterr().err
        assert f"dead letters: 2 (malformed: 2) on topic {topic} (kept)" in err, err
        assert f"malformed: {path} at 1: ticker 'A B' is not a symbol" in err, err
        assert f"malformed: {path} at 2: exchange is missing" in err, err
        letters = {}
        for m in read_to_end(command_env, topic):
            headers = {k: (v or b"").decode() for k, v in m.headers()}
            letters[int(headers["dlq.offset"])] = (headers, orjson.loads(m.value()))
        assert sorted(letters) == [1, 2]
        assert "ticker 'A B' is not a symbol" in letters[1][0]["dlq.reason"] and letters[1][1]["ticker"] == "A B"
        headers, fields = letters[2]
        assert (headers["dlq.kind"], headers["dlq.reason"], headers["dlq.topic"]) == (
            "malformed",
            "exchange is missing",
            str(path),
        )
        assert fields["ticker"] == "AAPL" and fields["exchange"] is None
    finally:
        delete_topics(command_env, [topic])
    assert_same_bars(table_bars(db), minute_reference(values))  # every good row counted, once
    assert topics_named(command_env, f"backfill.{DAY.isoformat()}.") == []


def test_a_day_or_symbols_the_files_do_not_hold_are_precise_errors(
    command_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = flat_files(tmp_path / "flat", day_trades(seconds=60))
    flat_files(root, day_trades(seconds=60), day=date(2026, 11, 4))
    today = datetime.now(UTC).date()
    flat_files(tmp_path / "today", day_trades(seconds=60), day=today)

    def run(day: str, where: Path, *more: str) -> str:
        assert main(["--date", day, "--flat-files", str(where), "--no-detection", *more]) == 2
        return capsys.readouterr().err

    assert f"no trades flat file for 2026-10-30 under {root}: it holds 2 day(s) of trades, 2026-11-02 to 2026-11-04" in (
        run("2026-10-30", root)
    )
    assert "for 2026-11-03" in (err := run("2026-11-03", root)) and "near it: 2026-11-02, 2026-11-04" in err, err
    assert f"--flat-files {tmp_path / 'nope'}: no such directory" in run("2026-11-02", tmp_path / "nope")
    quotes = tmp_path / "quotes"
    gz(quotes / "quotes_v1" / "2026-11-02.csv.gz", "ticker,bid_price,ask_price,sip_timestamp\n")
    assert f"--flat-files {quotes}: no trades flat file (trades_v1/.../YYYY-MM-DD.csv.gz) in it" in run("2026-11-02", quotes)
    assert f"no trades of ZZZZ in {root}" in run("2026-11-02", root, "--symbols", "ZZZZ")
    assert f"{today.isoformat()} is not over for the live flow until" in run(today.isoformat(), tmp_path / "today")
    for bad in (
        ["--date", "2026-13-01"],
        ["--date", "2026-11-02", "--symbols", "a b"],
        ["--date", "2026-11-02", "--workers", "0"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main([*bad, "--flat-files", str(root)])
        assert exit_.value.code == 2
    capsys.readouterr()
    days = ("2026-10-30", "2026-11-02", "2026-11-03", today.isoformat())
    assert [t for t in topics_named(command_env, "backfill.") if t.split(".")[1] in days] == [], "nothing left behind"


def test_a_stopped_backfill_deletes_its_topics_and_a_killed_ones_are_named_then_deleted(
    command_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM mid-run: exit 130, no topic left. Topics of a run killed with -9 (made here by hand):
    the next run names them, --delete-leftovers deletes them. ~15 s (a process start)."""
    root = flat_files(tmp_path, day_trades(seconds=10 * 60, symbols=20, rate=25.0))
    prefix = f"backfill.{DAY.isoformat()}."
    env = os.environ | {"DATABASE_URL": TEST_DATABASE_URL, "REDIS_URL": NO_REDIS}
    command = [sys.executable, "-m", "flows.backfill", "--date", DAY.isoformat(), "--flat-files", str(root), "--no-detection",
               "--run-id", "stopped"]  # fmt: skip
    running = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        said = b""
        while f"topics {prefix}stopped.*".encode() not in said:  # its topics are made, the replay starts
            line = running.stderr.readline()  # type: ignore[union-attr]
            assert line, f"the backfill ended before it could be stopped: {said.decode()[-2000:]}"
            said += line
        running.send_signal(signal.SIGTERM)
        _, err = running.communicate(timeout=60)
    finally:
        running.kill()
    assert running.returncode == 130, err.decode()[-2000:]
    assert "stopped before the end; its topics are deleted" in err.decode()
    assert topics_named(command_env, prefix) == []

    from connectors.kafka.admin import ensure_topics
    from flows.backfill import backfill_settings

    killed = backfill_settings(Settings(), DAY, "killed")
    ensure_topics(killed)
    args = ["--date", DAY.isoformat(), "--flat-files", str(root), "--symbols", "ZZZZ", "--no-detection"]
    assert main(args) == 2  # no trades of ZZZZ: fails after the leftovers are looked at
    err = capsys.readouterr().err
    assert f"earlier runs of {DAY.isoformat()} did not finish; their topics are still there ({prefix}killed." in err, err
    assert f"{prefix}killed.trades" in topics_named(command_env, prefix)
    assert main([*args, "--delete-leftovers"]) == 2
    assert f"deleted the topics of unfinished earlier runs of {DAY.isoformat()}" in capsys.readouterr().err
    assert topics_named(command_env, prefix) == []
