"""Replay Polygon flat files (trades_v1, quotes_v1, minute_aggs_v1; gzipped CSV) into Kafka.

``python -m connectors.feeds.replay FILE... [--speed 10] [--kind trades]``. The files are read
and checked first (`connectors.feeds.flat_files`: a file that cannot be read is an error
naming it, exit code 2, before anything is published); their events are then merged and
published in event-time order (so per symbol too), key = symbol, as fast as possible or
`--speed` times real time, to the topics of `connectors.kafka.settings.KafkaSettings`.

A row that cannot become a valid feed event, or an event too large for Kafka, goes to the
dead-letter topic with the reason (`connectors.kafka.dead_letter`); its headers name the file
(`dlq.topic`) and the row (`dlq.offset`, 1 = the first row after the header), and its value is
the row's fields as JSON. The other rows are published, once. Kafka refusing or not
acknowledging events is a `ReplayError` (exit code 1).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import cast

import polars as pl

from connectors.feeds.flat_files import SCHEMAS, FlatFileError, Kind, flat_file, kind_of, merge
from connectors.kafka.admin import KafkaUnavailable
from connectors.kafka.settings import KafkaSettings
from connectors.settings import load


class ReplayError(KafkaUnavailable):
    """Kafka refused an event (other than for its size) or did not acknowledge every event."""


def _paced(events: pl.DataFrame, speed: float | None) -> Iterator[tuple[str, str, str, int, int]]:
    started, first = time.monotonic(), None
    for kind, key, value, t, row, file in events.select("kind", "key", "value", "t", "row", "file").iter_rows():
        if speed:
            first = t if first is None else first
            ahead = started + (t - first) / 1000 / speed - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
        yield kind, key, value, row, file


def replay(
    paths: list[Path],
    speed: float | None = None,
    kind: Kind | None = None,
    settings: KafkaSettings | None = None,
    report: dict[str, object] | None = None,
    symbols: Collection[str] | None = None,
) -> int:
    """Publish the files' events merged in event-time order (idempotent producer, key = symbol),
    and their refused rows to the dead-letter topic; returns how many events. Every file is read
    and checked before anything is published (FlatFileError otherwise). `report`, when given,
    receives the dead letters by kind. `symbols`, when given, keeps only their events and refused
    rows (a refused row without a valid ticker is nobody's: left out). ReplayError when Kafka
    refuses or loses events."""
    from confluent_kafka import KafkaError, KafkaException

    from connectors.kafka.dead_letter import letter
    from connectors.kafka.producer import make_producer, produce_when_room

    s = settings or load(KafkaSettings)
    topics = {"trades": s.topic_trades, "quotes": s.topic_quotes, "minute_aggs": s.topic_minute_aggs}
    files = [(path, k, flat_file(path, k)) for path in paths for k in [kind or kind_of(path)]]
    producer, delivery = make_producer(s, idempotent=True)
    dead: Counter[str] = Counter()

    def dead_letter(value: bytes, why: str, source: str, row: int | None, key: str | None, dead_kind: str) -> None:
        m = letter(value, kind=dead_kind, reason=why, topic=source, partition=None, offset=row,
                   key=key.encode() if key else None)  # fmt: skip
        while True:
            try:
                headers = cast(list[tuple[str, str | bytes | None]], m.headers)  # only read; ours are bytes
                producer.produce(s.topic_dead_letter, m.value, m.key, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        dead[dead_kind] += 1

    wanted = None if symbols is None else set(symbols)
    for path, _, f in files:
        for row, dead_kind, why, key, value in f.refused.iter_rows():
            if wanted is None or key in wanted:
                dead_letter(value.encode(), why, str(path), row, key, dead_kind)
    events = merge([(k, f) for _, k, f in files])
    if wanted is not None:
        events = events.filter(pl.col("key").is_in(sorted(wanted)))
    n = 0
    for k, key, value, row, file in _paced(events, speed):
        try:
            try:
                producer.produce(topics[k], value, key)
            except BufferError:
                produce_when_room(producer, topics[k], key.encode(), value.encode())
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise ReplayError(f"Kafka refused an event for {topics[k]} ({err})") from None
            dead_letter(value.encode(), f"Kafka refused the event: {err.name()}: {err.str()}",
                        str(files[file][0]), row, key, "too_large")  # fmt: skip
            continue
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60) or delivery.failed:
        raise ReplayError(f"{delivery.failed} events not delivered ({delivery.first_error})")
    if report is not None:
        report["dead_letters"] = dict(dead)
    return n


def _speed(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.feeds.replay", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--speed", type=_speed, default=None, help="times real time (default: as fast as possible)")
    parser.add_argument("--kind", choices=list(SCHEMAS), default=None, help="default: from the file name")
    args = parser.parse_args(argv)
    started = time.monotonic()
    report: dict[str, object] = {}
    try:
        n = replay(args.files, args.speed, args.kind, report=report)
    except (FlatFileError, ValueError) as exc:  # ValueError: also SettingsError
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    dead = report.get("dead_letters")
    refused = f"; {sum(dead.values())} rows dead-lettered {dead}" if isinstance(dead, dict) and dead else ""
    print(f"replayed {n} events in {elapsed:.1f} s ({n / max(elapsed, 1e-9):,.0f} events/s){refused}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
