"""Backfill: one past day from Polygon flat files into the production tables, beside the live flow.

    python -m flows.backfill --date 2026-11-02 --flat-files DIR [--symbols AAPL,MSFT] [--no-detection]

Replaying a past day into the live topics cannot work: the live flow's watermark is today, so
every old trade is `too_late`. A backfill is therefore a run of its own (docs/backfill.md):

- **Its own topics**, `backfill.<day>.<run id>.*`, created at start and deleted at the end (the
  dead-letter topic is kept when it holds anything, and named in the report). The day's trades
  files under DIR (`trades_v1`, named by the day) are read, checked and published there by the
  replay (`connectors.feeds.replay`); bad rows become dead letters with their file, row and reason.
- **Its own bar flow** (and detection flow, unless `--no-detection`), the live flows' own steps
  composed with sinks of the backfill's, run to the end of the input, not tailing.
- **No Redis at all**: old bars on the live channels would look like new ones to dashboards, and
  nobody reads another namespace (`connectors.sinks.backfill`).
- **No recovery store**: a killed backfill is simply run again. Its input is a file and its writes
  are idempotent, so a second run converges on the same rows; the topics a killed run left are
  named at the next start of that day, `--delete-leftovers` removes them.
- **Idempotent with the tables**: a bar whose values equal the stored one is not written (whatever
  the revisions), a differing one replaces it with revision + 1 (`connectors.postgres.backfill`).
- **Aggregates**: on plain PostgreSQL and TimescaleDB >= 2.18 the rollup triggers (0004) keep
  every timeframe current as the minutes are written, and `latest_bars` only moves forward in
  time; continuous aggregates (TimescaleDB before 2.18) are refreshed over the day afterwards.

A day the live flow may still revise (it ends, in New York, less than ALLOWED_LATENESS_S ago),
a day no trades file holds, a day a retention policy would drop again, and unreadable files are
errors with exit code 2, before anything is published; a service that cannot be reached, 1;
SIGINT or SIGTERM, 130 (the run's topics deleted on the way out).
Composition only; the console entry point is `flows.backfill:main`.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from connectors.feeds.flat_files import FlatFileError, kind_of
from connectors.feeds.flat_files.checks import file_day
from connectors.feeds.replay import replay
from connectors.kafka.admin import KafkaUnavailable, ensure_topics
from connectors.kafka.dead_letter import KIND, REASON, SOURCE_OFFSET, SOURCE_TOPIC, dead_letter_sink, letter_key
from connectors.kafka.settings import KafkaSettings
from connectors.kafka.sink import Record, TopicSink
from connectors.kafka.source import KafkaBatchSource
from connectors.kafka.topics import delete_topics, read_to_end, topics_named
from connectors.postgres import backfill as tables
from connectors.postgres.backfill import Tally
from connectors.settings import DAY_S, SettingsError
from connectors.sinks.backfill import backfill_bar_sink, backfill_event_sink
from connectors.unavailable import ServiceUnavailable
from flows import settings as flow_settings
from flows.detect import settings as detect_settings
from flows.detect.operators import detect_on_bars, gate_bars
from flows.detect.settings import DetectionConfigError, DetectionSettings
from flows.partition import partition_bars
from flows.settings import Settings
from schemas.bars import Bar, encode_bar
from schemas.symbols import RULE, is_symbol

log = logging.getLogger("tickstock.backfill")

NEW_YORK = ZoneInfo("America/New_York")
PREFIX = "backfill"
RUN_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_FLAT_SUFFIXES = (".csv.gz", ".csv")
SHOWN_LETTERS = 5  # dead letters quoted in the report


class BackfillError(ValueError):
    """The backfill cannot run as asked (the day, the files, the symbols); the message says why."""


# --- the day and its files -----------------------------------------------------------------------


def day_window(day: date) -> tuple[datetime, datetime]:
    """The trading day in New York (Polygon's flat-file day), as UTC instants [start, end)."""
    start = datetime(day.year, day.month, day.day, tzinfo=NEW_YORK)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=NEW_YORK)
    return start.astimezone(UTC), end.astimezone(UTC)


def live_until(day: date, settings: Settings) -> datetime:
    """Until when the live flow may still revise the day's bars: its end plus the close delay and lateness."""
    return day_window(day)[1] + timedelta(seconds=settings.bar_close_delay_s + settings.allowed_lateness_s)


def trade_files(root: Path, day: date) -> list[Path]:
    """The trades flat files of `day` under `root` (Polygon's layout: trades_v1/YYYY/MM/YYYY-MM-DD.csv.gz,
    or any tree whose file or folder names say trades and the day); BackfillError when there are none."""
    if not root.is_dir():
        raise BackfillError(f"--flat-files {root}: no such directory")
    days: dict[date, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or not path.name.endswith(_FLAT_SUFFIXES):
            continue
        try:
            if kind_of(path.relative_to(root)) != "trades":
                continue
        except ValueError:
            continue  # not a flat-file name
        window = file_day(path)
        if window is not None:
            days.setdefault(datetime.fromtimestamp((window[0] + window[1]) / 2000, UTC).date(), []).append(path)
    if day in days:
        return days[day]
    if not days:
        raise BackfillError(f"--flat-files {root}: no trades flat file (trades_v1/.../YYYY-MM-DD.csv.gz) in it")
    held = sorted(days)
    near = [d.isoformat() for d in held if abs((d - day).days) <= 7][:10]
    hint = f"; near it: {', '.join(near)}" if near else ""
    raise BackfillError(
        f"no trades flat file for {day.isoformat()} under {root}: it holds {len(held)} day(s) of trades, "
        f"{held[0].isoformat()} to {held[-1].isoformat()}{hint}"
    )


# --- its settings, topics and flows --------------------------------------------------------------


def backfill_settings(live: Settings, day: date, run_id: str) -> Settings:
    """The live settings with the run's own topics, reading to the end from the start.

    The watermark may jump as far as the file's day allows: the flat-file checks keep every
    trade within the file's day, the input is in event-time order, and a quiet stretch of the
    day (pre-market, late evening) longer than ALLOWED_LATENESS_S must not be held as `future`.
    """
    base = f"{PREFIX}.{day.isoformat()}.{run_id}"
    return live.model_copy(
        update={
            "topic_trades": f"{base}.trades",
            "topic_quotes": f"{base}.quotes",
            "topic_second_aggs": f"{base}.aggs.second",
            "topic_minute_aggs": f"{base}.aggs.minute",
            "topic_dead_letter": f"{base}.deadletter",
            "topic_bars": f"{base}.bars",
            "bar_source": "trades",
            "kafka_tail": False,
            "kafka_start": "earliest",
            "watermark_max_jump_s": 3 * DAY_S,
            "bar_timeframes": (),  # the database rolls the day's minutes up itself; nothing is streamed
        }
    )


def _bar_record(bar: Bar) -> Record:
    return bar.symbol, encode_bar(bar), None


def bar_flow(s: Settings, detection: DetectionSettings, tally: Tally) -> Dataflow:
    """The live bar flow's partition step between the backfill's trades topic and its sinks."""
    flow = Dataflow("backfill_ohlcv")
    source = KafkaBatchSource(s, [s.topic_trades], start="earliest", tail=False,
                              batch_size=s.kafka_batch_size)  # fmt: skip
    out = partition_bars(op.input("ticks", flow, source), s, detection)
    op.output("final_bars", out.final_bars, backfill_bar_sink(s, tally))
    if detection.bar_detection_on():
        op.output("bars_topic", out.final_bars, TopicSink(s, s.topic_bars, _bar_record))
    letters = op.key_on("dead_letters_by_partition", out.dead_letters, letter_key)
    op.output("dead_letters", letters, dead_letter_sink(s, s.topic_dead_letter))
    if detection.enabled and detection.highlow.enabled:
        op.output("highs_and_lows", out.highs_and_lows, backfill_event_sink(s))
    return flow  # live bars and health stay in the flow: their lines are logged, nothing is published


def detection_flow(s: Settings, detection: DetectionSettings) -> Dataflow:
    """The live detection flow's steps over the backfill's bars topic."""
    flow = Dataflow("backfill_detection")
    source = KafkaBatchSource(s, [s.topic_bars], start="earliest", tail=False,
                              batch_size=s.kafka_batch_size)  # fmt: skip
    gate = gate_bars("gate", op.input("bars", flow, source), s)
    events = detect_on_bars("detect", gate.bars, s, detection)
    op.output("detection", events, backfill_event_sink(s))
    letters = op.key_on("dead_letters_by_partition", gate.dead_letters, letter_key)
    op.output("dead_letters", letters, dead_letter_sink(s, s.topic_dead_letter))
    return flow


def _run_flow(flow: Dataflow, workers: int) -> None:
    from bytewax.run import cli_main

    cli_main(flow, workers_per_process=workers)


# --- one run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    kind: str
    reason: str
    source: str  # the file (replay) or the topic (flows)
    offset: str  # the row (replay) or the offset (flows)


@dataclass
class Report:
    day: date
    run_id: str
    files: list[Path]
    trades: int = 0  # published
    tally: Tally = field(default_factory=Tally)
    stored_before: int = 0
    stored_after: int = 0
    detection: bool = False
    aggregates: str = ""
    dead_letters: list[DeadLetter] = field(default_factory=list)
    kept_topic: str | None = None
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds of: replay, bars, detection, refresh

    def lines(self) -> list[str]:
        t = self.tally
        out = [
            f"backfill {self.day.isoformat()} (run {self.run_id}): {len(self.files)} trades file(s), "
            f"{self.trades:,} trades in {self.seconds:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in self.phases.items())})",
            f"bars: {t.bars:,} from the files: {t.inserted:,} new, {t.corrected:,} corrected (revision + 1), "
            f"{t.unchanged:,} unchanged; ohlcv_1min holds {self.stored_after:,} bars of the day "
            f"(before: {self.stored_before:,})",
            f"detection: {'on' if self.detection else 'off'}; aggregates: {self.aggregates}",
        ]
        if self.dead_letters:
            kinds = Counter(d.kind for d in self.dead_letters)
            out.append(f"dead letters: {len(self.dead_letters):,} ({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))})"
                       f" on topic {self.kept_topic} (kept)")  # fmt: skip
            out += [f"  {d.kind}: {d.source} at {d.offset}: {d.reason}" for d in self.dead_letters[:SHOWN_LETTERS]]
        else:
            out.append("dead letters: none")
        return out


def leftover_runs(kafka: KafkaSettings, day: date) -> dict[str, list[str]]:
    """Topics of earlier runs of `day` that did not finish (their trades topic is still there), by run id."""
    prefix = f"{PREFIX}.{day.isoformat()}."
    topics = topics_named(kafka, prefix)
    unfinished = {t[len(prefix) :].split(".", 1)[0] for t in topics if t.endswith(".trades")}
    return {run: [t for t in topics if t.startswith(f"{prefix}{run}.")] for run in sorted(unfinished)}


def _dead_letters(s: Settings) -> list[DeadLetter]:
    out = []
    for m in read_to_end(s, s.topic_dead_letter):
        headers = cast(list[tuple[str, bytes | None]], m.headers() or [])  # confluent-kafka's are (str, bytes) pairs
        h = {k: (v or b"").decode("utf-8", "replace") for k, v in headers}
        out.append(DeadLetter(h.get(KIND, "?"), h.get(REASON, ""), h.get(SOURCE_TOPIC, ""), h.get(SOURCE_OFFSET, "")))
    return out


def check_day(day: date, live: Settings, surroundings: tables.Surroundings, now: datetime) -> None:
    """BackfillError when the live flow may still revise the day, or retention would drop it again."""
    until = live_until(day, live)
    if now < until:
        raise BackfillError(
            f"{day.isoformat()} is not over for the live flow until {until:%Y-%m-%d %H:%M} UTC (its end in New York "
            f"plus BAR_CLOSE_DELAY_S and ALLOWED_LATENESS_S): the live flow may still revise its bars"
        )
    if surroundings.retention is not None and day_window(day)[1] < now - surroundings.retention:
        raise BackfillError(
            f"ohlcv_1min's retention policy drops chunks older than {surroundings.retention}: the bars of "
            f"{day.isoformat()} would be dropped at its next run (TIMESCALE_RETENTION_BARS)"
        )


def backfill(
    day: date,
    flat_files: Path,
    *,
    live: Settings,
    detection: DetectionSettings,
    symbols: Sequence[str] | None = None,
    run_id: str | None = None,
    workers: int = 1,
    delete_leftovers: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    say: Callable[[str], None] = lambda line: log.info("%s", line),
) -> Report:
    """Backfill `day` (see the module docstring); returns what it did. BackfillError, FlatFileError,
    ServiceUnavailable (and its subclasses) when it cannot."""
    started = time.monotonic()
    run_id = run_id or f"{datetime.now(UTC):%H%M%S}-{uuid.uuid4().hex[:6]}"
    files = trade_files(flat_files, day)
    around = tables.surroundings(live.database_url)
    check_day(day, live, around, now())
    s = backfill_settings(live, day, run_id)
    leftovers = leftover_runs(s, day)
    if leftovers:
        names = ", ".join(t for topics in leftovers.values() for t in topics)
        if delete_leftovers:
            delete_topics(s, [t for topics in leftovers.values() for t in topics])
            say(f"deleted the topics of unfinished earlier runs of {day.isoformat()}: {names}")
        else:
            say(f"earlier runs of {day.isoformat()} did not finish; their topics are still there ({names}): "
                "run again with --delete-leftovers to delete them")  # fmt: skip
    report = Report(day, run_id, files, detection=detection.bar_detection_on())
    window = day_window(day)
    report.stored_before = tables.stored_bars(live.database_url, symbols, *window)
    try:
        ensure_topics(s)
        say(f"backfill {day.isoformat()}: run {run_id}, topics {PREFIX}.{day.isoformat()}.{run_id}.*, "
            f"{len(files)} file(s): {', '.join(map(str, files))}")  # fmt: skip
        mark = time.monotonic()

        def phase(name: str) -> None:
            nonlocal mark
            report.phases[name], mark = time.monotonic() - mark, time.monotonic()

        report.trades = replay(files, kind="trades", settings=s, symbols=symbols)
        phase("replay")
        if report.trades == 0 and symbols is not None:
            raise BackfillError(f"no trades of {', '.join(symbols)} in {', '.join(map(str, files))}")
        _run_flow(bar_flow(s, detection, report.tally), workers)
        phase("bars")
        if report.detection:
            _run_flow(detection_flow(s, detection), workers)
            phase("detection")
        report.aggregates = _refresh(live.database_url, around, report.tally)
        phase("refresh")
        report.stored_after = tables.stored_bars(live.database_url, symbols, *window)
        report.dead_letters = _dead_letters(s)
    finally:
        keep = [s.topic_dead_letter] if report.dead_letters else []
        report.kept_topic = keep[0] if keep else None
        try:  # as far as their creation got
            ours = topics_named(s, f"{PREFIX}.{day.isoformat()}.{run_id}.")
        except KafkaUnavailable:
            ours = s.topics()
        deleted = delete_topics(s, [t for t in ours if t not in keep])
        failed = {t: why for t, why in deleted.items() if why}
        if failed:
            say(f"could not delete topics {failed}")
    report.seconds = time.monotonic() - started
    return report


def _refresh(url: str, around: tables.Surroundings, tally: Tally) -> str:
    if around.timescaledb is None:
        return "plain PostgreSQL: every timeframe reads the rollup, kept by triggers as the minutes were written"
    if not around.aggregates:
        return f"TimescaleDB {around.timescaledb}: every timeframe reads the rollup, kept by triggers (nothing to refresh)"
    if tally.first_ms is None or tally.last_ms is None:
        return f"TimescaleDB {around.timescaledb}: no bars, nothing to refresh"
    start = datetime.fromtimestamp(tally.first_ms // 86_400_000 * 86_400, UTC)
    end = datetime.fromtimestamp((tally.last_ms // 86_400_000 + 1) * 86_400, UTC)
    tables.refresh_aggregates(url, around.aggregates, start, end)
    return f"TimescaleDB {around.timescaledb}: refreshed {', '.join(around.aggregates)} over [{start:%Y-%m-%d}, {end:%Y-%m-%d})"


# --- the command ---------------------------------------------------------------------------------


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day YYYY-MM-DD: {text[:40]!r}") from None


def _symbols(text: str) -> list[str]:
    symbols = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in symbols if not is_symbol(s)]
    if bad or not symbols:
        raise argparse.ArgumentTypeError(f"not symbols ({RULE}): {', '.join(repr(b[:40]) for b in bad) or 'none given'}")
    return sorted(set(symbols))


def _run_id(text: str) -> str:
    if not RUN_ID.fullmatch(text):
        raise argparse.ArgumentTypeError("1-32 lower-case letters, digits or '-', a letter or digit first")
    return text


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 64, not {text[:20]!r}")
    return n


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.backfill` (console script `tickstock-backfill`): 0 done, 1 a service failed, 2 bad input,
    130 stopped (SIGINT or SIGTERM) before the end."""
    parser = argparse.ArgumentParser(prog="python -m flows.backfill", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--date", type=_day, required=True, help="the day to backfill, YYYY-MM-DD (New York)")
    parser.add_argument("--flat-files", type=Path, required=True, help="directory holding trades_v1/ flat files")
    parser.add_argument("--symbols", type=_symbols, default=None, help="comma-separated; default: every symbol")
    parser.add_argument("--detection", action=argparse.BooleanOptionalAction, default=True,
                        help="run the detection flow too (default: on; DETECT_* settings apply)")  # fmt: skip
    parser.add_argument("--workers", type=_workers, default=1, help="Bytewax workers in this process (default 1)")
    parser.add_argument("--run-id", type=_run_id, default=None, help="names the run's topics (default: time + random)")
    parser.add_argument("--delete-leftovers", action="store_true", help="delete the topics unfinished runs of the day left")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a stop unwinds like Ctrl-C: the run's topics are deleted
    try:
        live = flow_settings.load()
        detection = detect_settings.load() if args.detection else DetectionSettings(enabled=False)
        report = backfill(args.date, args.flat_files, live=live, detection=detection, symbols=args.symbols,
                          run_id=args.run_id, workers=args.workers, delete_leftovers=args.delete_leftovers,
                          say=lambda line: print(f"backfill: {line}", file=sys.stderr))  # fmt: skip
    except (BackfillError, FlatFileError, SettingsError, DetectionConfigError) as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 2
    except ServiceUnavailable as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("backfill: stopped before the end; its topics are deleted, run it again to finish the day", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    for line in report.lines():
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
