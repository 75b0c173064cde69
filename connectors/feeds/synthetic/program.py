"""The synthetic feed as a program: generate (`connectors.feeds.synthetic.generator`), publish to Kafka.

``python -m connectors.feeds.synthetic [--count N | --seconds S] [--realtime] ...`` publishes to
the topics and broker of `connectors.kafka.settings.KafkaSettings` (environment variables), as
fast as possible or paced to the wall clock, with `connectors.kafka.producer`'s throughput
producer; it prints progress lines and a summary, and exits 1 if any record was not delivered.
Library code here raises (`KafkaUnavailable` for a missing broker or topic); only `main()` exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from connectors.feeds.synthetic.config import (
    DEFAULT_START_MS,
    LABELS,
    QUOTES,
    SECOND_AGG,
    SECOND_AGGS,
    TRADES,
    FeedConfig,
    FeedEvent,
)
from connectors.feeds.synthetic.generator import SyntheticFeed
from connectors.kafka.admin import KafkaUnavailable, admin_client, new_topics
from connectors.kafka.producer import Delivery, make_producer, produce_when_room
from connectors.kafka.settings import KafkaSettings
from connectors.settings import SettingsError, load

if TYPE_CHECKING:
    from confluent_kafka import Producer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m connectors.feeds.synthetic",
        description="Publish a synthetic Polygon feed to Kafka (topics and bootstrap from KafkaSettings/env).",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--symbols", type=int, default=4000)
    p.add_argument("--rate", type=float, default=2000.0, help="primary events per second of event time")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--count", type=int, help="primary events to send (default: until Ctrl-C)")
    stop.add_argument("--seconds", type=float, help="seconds of event time to send")
    p.add_argument("--start-ms", type=int, default=DEFAULT_START_MS, help="first event time (not with --realtime)")
    p.add_argument("--realtime", action="store_true", help="pace to the wall clock and stamp wall-clock times")
    p.add_argument("--duplicate-ratio", type=float, default=0.002)
    p.add_argument("--out-of-order-ratio", type=float, default=0.01)
    p.add_argument("--late-ratio", type=float, default=0.001)
    p.add_argument("--too-late-ratio", type=float, default=0.0)
    p.add_argument("--malformed-ratio", type=float, default=0.0)
    p.add_argument("--quotes", type=float, default=0.0, metavar="RATIO", help="fraction of events that are quotes")
    p.add_argument("--second-aggs", action="store_true", help="also publish per-second `A` aggregates")
    p.add_argument(
        "--condition-mix",
        choices=("realistic", "regular"),
        default="realistic",
        help="regular = only trades that update every bar field (A-built bars then equal trade-built bars)",
    )
    p.add_argument("--create-topics", action="store_true", help="create missing topics (KafkaSettings.topic_partitions)")
    p.add_argument("--no-idempotence", action="store_true", help="for brokers without idempotent producers")
    p.add_argument("--progress-s", type=float, default=2.0, help="seconds between progress lines")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace, start_ms: int) -> FeedConfig:
    return FeedConfig(
        seed=args.seed,
        symbols=args.symbols,
        rate=args.rate,
        start_ms=start_ms,
        count=args.count,
        seconds=args.seconds,
        duplicate_ratio=args.duplicate_ratio,
        out_of_order_ratio=args.out_of_order_ratio,
        late_ratio=args.late_ratio,
        too_late_ratio=args.too_late_ratio,
        malformed_ratio=args.malformed_ratio,
        quote_ratio=args.quotes,
        second_aggs=args.second_aggs,
        condition_mix=args.condition_mix,
    )


def check_kafka(settings: KafkaSettings, topics: list[str], create: bool) -> None:
    """Fail fast (KafkaUnavailable with a clear message) if the broker or topics are missing; with
    `create`, create the missing ones as the settings lay them out (`connectors.kafka.admin.new_topics`)."""
    from confluent_kafka import KafkaException

    bootstrap = settings.kafka_bootstrap_servers
    admin = admin_client(settings)  # quiet: one clear message, no retry spam
    try:
        metadata = admin.list_topics(timeout=5)
        existing = set(metadata.topics)
    except KafkaException as e:
        raise KafkaUnavailable(f"Kafka unreachable at KAFKA_BOOTSTRAP_SERVERS={bootstrap!r}: {e}") from None
    missing = [t for t in topics if t not in existing]
    if not missing:
        return
    if not create:
        raise KafkaUnavailable(f"missing Kafka topics {missing} at {bootstrap}; create them or pass --create-topics")
    futures = admin.create_topics(new_topics(settings, dict.fromkeys(missing), len(metadata.brokers)))
    for topic, future in futures.items():
        try:
            future.result(timeout=10)
        except KafkaException as e:
            raise KafkaUnavailable(f"could not create topic {topic!r}: {e}") from None
    print(f"created topics {missing} ({settings.topic_partitions} partitions)", file=sys.stderr)


def publish(
    feed: Iterator[FeedEvent], producer: Producer, delivery: Delivery, topics: dict[str, str], args: argparse.Namespace
) -> int:
    """Produce every event; returns the process exit code. Ctrl-C or SIGTERM stop cleanly."""
    sent = dict.fromkeys(LABELS, 0)
    started = last_report = time.monotonic()
    produce, poll, realtime, primary, n = producer.produce, producer.poll, args.realtime, 0, 0
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when a script started us with SIGINT ignored
    try:
        for topic_kind, key, value, label, clock in feed:
            if realtime:
                if label is not SECOND_AGG:
                    _pace(started, primary, args.rate)
                    primary += 1
                elif clock > (now_ms := _wall_ms()):  # the last second's aggregates, at the very end
                    time.sleep((clock - now_ms) / 1000)
            try:
                produce(topics[topic_kind], value, key)
            except BufferError:
                produce_when_room(producer, topics[topic_kind], key, value)
            sent[label] += 1
            n += 1
            if realtime or not n & 0x3FF:  # flat out: every 1024 records serve callbacks, maybe report
                poll(0)
                if delivery.fatal:
                    print(f"fatal producer error: {delivery.fatal} (try --no-idempotence)", file=sys.stderr)
                    break
                now = time.monotonic()
                if now - last_report >= args.progress_s:
                    last_report = now
                    total = sum(sent.values())
                    print(
                        f"sent {total:,} ({total / (now - started):,.0f}/s) in flight {len(producer):,} "
                        f"failed {delivery.failed:,}",
                        file=sys.stderr,
                        flush=True,
                    )
    except KeyboardInterrupt:
        print("interrupted, flushing", file=sys.stderr)
    unflushed = producer.flush(30)
    elapsed = time.monotonic() - started
    total = sum(sent.values())
    labels = " ".join(f"{label}={count:,}" for label, count in sent.items() if count)
    print(
        f"done: {total:,} events in {elapsed:.2f}s = {total / max(elapsed, 1e-9):,.0f} events/s; {labels}; "
        f"acked {total - delivery.failed - unflushed:,} failed {delivery.failed:,} unflushed {unflushed:,}"
        + (f"; first error: {delivery.first_error}" if delivery.first_error else ""),
        flush=True,
    )
    return 0 if delivery.failed == 0 and unflushed == 0 and not delivery.fatal else 1


def _pace(started: float, primary: int, rate: float) -> None:
    """Sleep until this primary event is due on the wall clock."""
    ahead = started + primary / rate - time.monotonic()
    if ahead > 0.001:
        time.sleep(ahead)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def main(argv: list[str] | None = None) -> int:
    from confluent_kafka import KafkaException

    args = parse_args(argv)
    try:
        settings = load(KafkaSettings)
    except SettingsError as e:
        print(f"synthetic: {e}", file=sys.stderr)
        return 2
    topics = {TRADES: settings.topic_trades, QUOTES: settings.topic_quotes, SECOND_AGGS: settings.topic_second_aggs}
    try:
        config = config_from_args(args, _wall_ms() if args.realtime else args.start_ms)
    except ValueError as e:
        raise SystemExit(f"bad options: {e}") from None
    needed = [topics[TRADES]] + [topics[QUOTES]] * (config.quote_ratio > 0) + [topics[SECOND_AGGS]] * config.second_aggs
    try:
        check_kafka(settings, needed, args.create_topics)
    except KafkaUnavailable as e:
        raise SystemExit(str(e)) from None
    try:
        producer, delivery = make_producer(settings, not args.no_idempotence)
    except KafkaException as e:
        raise SystemExit(f"cannot create Kafka producer: {e}") from None
    feed = iter(SyntheticFeed(config, _wall_ms if args.realtime else None))
    print(
        f"publishing to {settings.kafka_bootstrap_servers} {sorted(set(needed))} "
        f"({'real time' if args.realtime else 'as fast as possible'}), idempotence={not args.no_idempotence}",
        file=sys.stderr,
    )
    return publish(feed, producer, delivery, topics, args)
