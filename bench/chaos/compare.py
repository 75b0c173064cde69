"""What a chaos run should have produced, what it did, and the difference, bar by bar and row by row.

- Bars: the independent oracle (`tests.support.reference.reference_bars`) over exactly the trades that
  were published and are good (the synthetic feed's labels), against `ohlcv_1min`. A bar the
  table lacks, or has with other values, is lost; one whose volume or trade count is higher
  than the oracle's is duplicated (a trade counted twice); a bar the oracle does not have is
  unexpected.
- Redis: the newest revision per (symbol, minute) on the final-bar channel against the table.
- Detection: `events`, `indicator_values` and `alerts` against an uninterrupted run's, row by row
  (same ids, same values).
- Dead letters: each published record that should be refused must have a dead letter (matched by
  `dlq.topic`/`dlq.partition`/`dlq.offset`) of an expected kind; a good record must have none.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import orjson
import psycopg

from bench.chaos.live import Record
from connectors.kafka.settings import KafkaSettings
from schemas.timeframes import TIMEFRAMES

VALID_LABELS = frozenset({"trade", "out_of_order", "late", "duplicate"})
FIELDS = ("open", "high", "low", "close", "volume", "vwap", "trades")
DETECTION_TABLES = ("events", "indicator_values", "alerts")
KEYS = {"events": 3, "indicator_values": 3, "alerts": 3}  # primary key columns (ORDER BY 1, 2, 3)
Bars = dict[tuple[str, int], dict[str, Any]]


def oracle_bars(records: Iterable[Record], delivered_only: bool = True) -> Bars:
    """The reference bars of the good trades among `records` (by default those the broker acknowledged)."""
    from tests.support.reference import reference_bars

    trades = [orjson.loads(r.value) for r in records  # type: ignore[arg-type]
              if r.label in VALID_LABELS and (r.offset is not None or not delivered_only)]  # fmt: skip
    if not trades:
        return {}
    frame = reference_bars(trades)
    return {(row["symbol"], row["timestamp"]): row for row in frame.iter_rows(named=True)}


def table_bars(conn: psycopg.Connection, since_ms: int = 0) -> Bars:
    """`ohlcv_1min` from `since_ms` on (what came before is the seeded history, not the feed's)."""
    rows = conn.execute(
        "SELECT symbol, (extract(epoch from timestamp) * 1000)::bigint, open::float8, high::float8, low::float8, "
        "close::float8, volume, vwap::float8, trades, revision FROM ohlcv_1min WHERE timestamp >= to_timestamp(%s)",
        (since_ms / 1000,),
    ).fetchall()
    names = ("symbol", "timestamp", *FIELDS, "revision")
    return {(r[0], r[1]): dict(zip(names, r, strict=True)) for r in rows}


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def same_bar(a: dict[str, Any], b: dict[str, Any], fields: Iterable[str] = FIELDS) -> bool:
    return all(_same(a.get(f), b.get(f)) for f in fields)


def compare_bars(expected: Bars, written: Bars, limit: int = 5) -> dict[str, Any]:
    """Lost, duplicated and unexpected bars of `written` against `expected`, with a few examples each."""
    lost, duplicated, examples = [], [], {"lost": [], "duplicated": [], "unexpected": []}
    for key, want in expected.items():
        got = written.get(key)
        if got is not None and same_bar(want, got):
            continue
        doubled = got is not None and (
            (got["trades"] or 0) > (want["trades"] or 0) or (got["volume"] or 0) > (want["volume"] or 0)
        )
        (duplicated if doubled else lost).append(key)
        bucket = examples["duplicated" if doubled else "lost"]
        if len(bucket) < limit:
            bucket.append({"bar": f"{key[0]} {_iso(key[1])}", "expected": _fields(want), "written": _fields(got)})
    unexpected = [k for k in written if k not in expected]
    examples["unexpected"] = [{"bar": f"{k[0]} {_iso(k[1])}", "written": _fields(written[k])} for k in unexpected[:limit]]
    return {
        "bars_expected": len(expected), "bars_written": len(written), "bars_lost": len(lost),
        "bars_duplicated": len(duplicated), "bars_unexpected": len(unexpected),
        "bar_examples": {k: v for k, v in examples.items() if v},
    }  # fmt: skip


def caught_up(expected: Bars, written: Bars) -> bool:
    """Every expected bar is written, with at least its trades (values may still be revised upwards)."""
    return all(k in written and (written[k]["trades"] or 0) >= (v["trades"] or 0) for k, v in expected.items())


def compare_redis(newest: Bars, written: Bars, limit: int = 5) -> dict[str, Any]:
    """The newest revision per bar on the final-bar channel against the table (revision included)."""
    missing = [k for k in written if k not in newest]
    stale = [k for k in written if k in newest and not same_bar(written[k], newest[k], (*FIELDS, "revision"))]
    extra = [k for k in newest if k not in written]
    return {
        "redis_bars": len(newest), "redis_missing": len(missing), "redis_stale": len(stale), "redis_extra": len(extra),
        "redis_examples": [{"bar": f"{k[0]} {_iso(k[1])}", "table": _fields(written[k], True),
                            "redis": _fields(newest.get(k), True)} for k in (missing + stale)[:limit]],
    }  # fmt: skip


# how long a row's bar lasts, by its timeframe (none, e.g. highs and lows on trades: an instant)
_BAR_LENGTH = ("CASE timeframe "
               + " ".join(f"WHEN '{t.name}' THEN interval '{t.ms // 1000} seconds'" for t in TIMEFRAMES.values())
               + " ELSE interval '0' END")  # fmt: skip


def detection_rows(conn: psycopg.Connection, closed_until: datetime | None = None) -> dict[str, dict[tuple, tuple]]:
    """Every detection row, or only those on bars that ended by `closed_until`: a tailing run stopped
    by a signal leaves its open 5m/1h/1d buckets open, while a run that reads to the end of its
    input closes them there (and detects on them), so the two are compared on the closed ones."""
    out: dict[str, dict[tuple, tuple]] = {}
    for table in DETECTION_TABLES:
        if closed_until is None:
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
        else:
            rows = conn.execute(f"SELECT * FROM {table} WHERE timestamp + {_BAR_LENGTH} <= %s", (closed_until,)).fetchall()
        out[table] = {tuple(r[: KEYS[table]]): tuple(r) for r in rows}
    return out


def closed_until(conn: psycopg.Connection) -> datetime | None:
    """The end of the newest final minute: every bucket that ended by then was closed by the watermark."""
    return conn.execute("SELECT max(timestamp) + interval '1 minute' FROM ohlcv_1min").fetchone()[0]


def compare_detection(expected: dict[str, dict[tuple, tuple]], written: dict[str, dict[tuple, tuple]],
                      symbols: set[str]) -> dict[str, Any]:  # fmt: skip
    """Row by row, per table, for the feed's symbols (poison bars of other symbols are not compared)."""
    report: dict[str, Any] = {}
    for table in DETECTION_TABLES:
        want = {k: v for k, v in expected[table].items() if k[0] in symbols}
        got = {k: v for k, v in written[table].items() if k[0] in symbols}
        missing = [k for k in want if k not in got]
        extra = [k for k in got if k not in want]
        different = [k for k in want if k in got and got[k] != want[k]]
        report[table] = {"expected": len(want), "written": len(got), "missing": len(missing), "extra": len(extra),
                         "different": len(different),
                         "examples": [_row(want.get(k), got.get(k)) for k in (missing + different + extra)[:3]]}  # fmt: skip
    return report


def detection_ok(report: dict[str, Any]) -> bool:
    return all(t["missing"] == 0 and t["extra"] == 0 and t["different"] == 0 for t in report.values())


def _messages(kafka: KafkaSettings, topic: str, partitions: int | None, timeout_s: float) -> Iterator[Any]:
    """Every message of `topic` from its start to its end (all partitions, or the first `partitions`)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from connectors.kafka import clients

    consumer = clients.consumer(kafka, {"group.id": "chaos-read", "enable.partition.eof": True,
                                        "enable.auto.commit": False, "fetch.max.bytes": 52_428_800})  # fmt: skip
    try:
        numbers = (
            range(partitions)
            if partitions is not None
            else list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        )
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in numbers])
        ended: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(ended) < len(numbers) and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                if m.error() is None:
                    yield m
                else:
                    ended.add(m.partition())
    finally:
        consumer.close()


def read_dead_letters(
    kafka: KafkaSettings, topic: str, partitions: int, timeout_s: float = 20.0
) -> list[tuple[dict[str, str], bytes | None]]:
    """Every dead letter on `topic`: its headers (text) and value."""
    return [
        ({k: (v or b"").decode("utf-8", "replace") for k, v in (m.headers() or [])}, m.value())
        for m in _messages(kafka, topic, partitions, timeout_s)
    ]


def settle_deliveries(kafka: KafkaSettings, records: list[Record], timeout_s: float = 20.0) -> int:
    """Give each record whose delivery report failed or never came the place the broker gave it.

    Across an outage a producer may lose the broker's answer to a write that did land (the
    broker stored it; the retry is refused or the report carries an error). The flow then sees a
    record the feeder thinks unpublished: the oracle must count what the topic holds, not what
    the reports said. Matched by value among the records of the same topic and key; returns how
    many records were settled this way.
    """
    pending: dict[tuple[str, bytes | None, bytes | None], list[Record]] = {}
    for r in records:
        if r.offset is None:
            pending.setdefault((r.topic, r.key, r.value), []).append(r)
    known = {(r.topic, r.partition, r.offset) for r in records if r.offset is not None}
    settled = 0
    for topic in sorted({t for t, _, _ in pending}):
        for m in _messages(kafka, topic, None, timeout_s):
            waiting = pending.get((topic, m.key(), m.value()))
            if waiting and (topic, m.partition(), m.offset()) not in known:
                record = waiting.pop(0)
                record.partition, record.offset = m.partition(), m.offset()
                settled += 1
    return settled


def check_dead_letters(records: list[Record], letters: list[tuple[dict[str, str], bytes | None]]) -> dict[str, Any]:
    """Dead letters by kind, those expected, and every record that did not get what it should."""
    by_source: dict[tuple[str, int, int], set[str]] = {}
    repeats = 0
    for headers, _ in letters:
        try:
            source = (headers.get("dlq.topic", ""), int(headers.get("dlq.partition") or -1), int(headers.get("dlq.offset") or -1))
        except ValueError:
            source = (headers.get("dlq.topic", ""), -1, -1)
        kinds = by_source.setdefault(source, set())
        if kinds:
            repeats += 1
        kinds.add(headers.get("dlq.kind", "(none)"))
    seen = Counter(kind for kinds in by_source.values() for kind in kinds)
    expected: Counter = Counter()
    problems: list[str] = []
    good_refused: Counter = Counter()
    poison: dict[str, str] = {}
    for r in records:
        if r.offset is None:
            if r.expect is not None or r.label.startswith("poison:"):
                problems.append(f"{r.label}: not accepted by the broker ({r.error})")
            continue
        got = by_source.get((r.topic, r.partition, r.offset), set())  # type: ignore[arg-type]
        if r.label.startswith("poison:"):
            poison[r.label[7:]] = ",".join(sorted(got)) or "none"
        if r.any_outcome:
            continue
        if r.expect is None:
            if got:
                good_refused.update(got)
            continue
        expected[r.expect[0]] += 1
        if not got:
            problems.append(f"{r.label}: no dead letter (expected {'/'.join(r.expect)})")
        elif not got & set(r.expect):
            problems.append(f"{r.label}: dead-lettered as {'/'.join(sorted(got))}, expected {'/'.join(r.expect)}")
    for kind, n in good_refused.items():
        problems.append(f"{n} good records dead-lettered as {kind}")
    feed_problems = [p for p in problems if not p.startswith("poison:")]
    shown = [p for p in problems if p.startswith("poison:")] + _summarise(feed_problems)
    return {"dead_letters": dict(seen), "dead_letters_expected": dict(expected), "dead_letter_repeats": repeats,
            "good_records_dead_lettered": dict(good_refused), "poison_outcomes": poison,
            "dead_letter_problems": shown}  # fmt: skip


def _summarise(problems: list[str]) -> list[str]:
    """Feed records' problems grouped by what went wrong (there may be thousands)."""
    counts = Counter(p.split(": ", 1)[1] if ": " in p else p for p in problems)
    return [f"{n} feed records: {what}" if not what[0].isdigit() else what for what, n in counts.most_common()]


def _iso(ms: int) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(ms / 1000))
    except (OverflowError, OSError, ValueError):
        return str(ms)


def _fields(bar: dict[str, Any] | None, revision: bool = False) -> dict[str, Any] | None:
    if bar is None:
        return None
    return {f: bar.get(f) for f in (*FIELDS, *(("revision",) if revision else ()))}


def _row(want: tuple | None, got: tuple | None) -> dict[str, str]:
    return {"expected": repr(want)[:300], "written": repr(got)[:300]}
