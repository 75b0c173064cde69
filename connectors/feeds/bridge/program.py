"""The bridge as a program: settings, the spool lock and Kafka checked, then serve until stopped.

`python -m connectors.feeds.bridge` and `tickstock-bridge` run `run()`: `main()` with a `--help`,
and its `Exit` printed. Exit codes: 0 after a clean stop; 2 for a
bad setting (the message names it) or a refused API key; 3 when another connection holds the
account's slot; 4 when Kafka refuses the bridge (a missing topic, authorization); 5 when records
read could be neither delivered nor spooled. Library code raises (`SettingsError`,
`SpoolError`, `KafkaUnavailable`, `BridgeFatal`, `KafkaRefused`); only `main()` turns that
into a message and an exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from typing import Final

from confluent_kafka import KafkaException

from connectors.backoff import backoff_s
from connectors.feeds.bridge.monitoring import beat, start_ops_server
from connectors.feeds.bridge.publish import KafkaRefused
from connectors.feeds.bridge.relay import Bridge
from connectors.feeds.bridge.session import BridgeFatal
from connectors.feeds.bridge.settings import load_settings
from connectors.feeds.bridge.spool import Spool, SpoolError
from connectors.kafka.admin import KafkaUnavailable, reporting_admin
from connectors.kafka.settings import KafkaSettings
from connectors.monitoring.logs import configure_logging
from connectors.monitoring.server import CannotServe
from connectors.settings import SettingsError

log = logging.getLogger("tickstock.bridge")

PROGRAM: Final = "polygon_bridge"  # how its messages start
EXIT_BAD_SETTINGS: Final = 2
EXIT_KAFKA_REFUSED: Final = 4


class Exit(SystemExit):
    """How `main()` ends the program with a message: the exit code, and the message as its text."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


async def serve(bridge: Bridge, spool: Spool) -> int:
    """Run until SIGTERM/SIGINT, a fatal status or Kafka refusing us; stop within the stop timeout."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    feed = asyncio.ensure_future(bridge.feed(spool))
    pump = asyncio.ensure_future(bridge.pump())
    stop = asyncio.ensure_future(signalled.wait())
    heartbeat = asyncio.ensure_future(beat())
    await asyncio.wait({feed, pump, stop}, return_when=asyncio.FIRST_COMPLETED)
    for task in (feed, pump, stop, heartbeat):
        task.cancel()
    outcomes = await asyncio.gather(feed, pump, stop, heartbeat, return_exceptions=True)
    code = 0
    bug: BaseException | None = None
    for outcome in outcomes:
        if isinstance(outcome, BridgeFatal) and not code:
            print(f"{PROGRAM}: {outcome}", file=sys.stderr)
            code = outcome.code
        elif isinstance(outcome, KafkaRefused) and not code:
            print(f"{PROGRAM}: Kafka refuses the bridge's records ({outcome}); check the topics, "
                  "KAFKA_BOOTSTRAP_SERVERS and the broker's authorization", file=sys.stderr)  # fmt: skip
            code = EXIT_KAFKA_REFUSED
        elif isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            bug = bug or outcome
    if signalled.is_set():
        log.info("stopping: signal received")
    code = await bridge.stop(spool) or code
    log.info(bridge.stats.line(bridge.in_flight()))
    if bug is not None:
        raise bug  # a bug of ours: crash loudly, after what was read is in Kafka or the spool
    return code


def wait_for_kafka(settings: KafkaSettings, topics: list[str]) -> None:
    """Wait (backing off, forever) until Kafka answers; KafkaUnavailable if topics are missing."""
    admin, errors = reporting_admin(settings)
    attempt = 0
    while True:
        try:
            existing = set(admin.list_topics(timeout=5).topics)
            break
        except KafkaException as exc:
            delay = backoff_s(attempt, 0.5, 30.0)
            attempt += 1
            log.warning("Kafka unreachable at KAFKA_BOOTSTRAP_SERVERS=%r (%s); retrying in %.1f s",
                        settings.kafka_bootstrap_servers, errors.why(admin, exc), delay)  # fmt: skip
            time.sleep(delay)
    missing = [t for t in topics if t not in existing]
    if missing:
        raise KafkaUnavailable(f"missing Kafka topics {missing} at {settings.kafka_bootstrap_servers}; "
                               "create them (make topics)")  # fmt: skip


def main() -> int:
    """The exit code; raises `Exit` (a SystemExit, code 2) for a bad setting, before anything runs."""
    try:
        bridge_settings, settings = load_settings()
        configure_logging(bridge_settings, "bridge")
        spool = Spool(bridge_settings.bridge_spool_dir)
        try:
            spool.lock()
        except SpoolError as exc:
            raise SettingsError(f"bad settings: {exc}") from None
    except SettingsError as exc:
        raise Exit(EXIT_BAD_SETTINGS, f"{PROGRAM}: {exc}") from None
    topics = [settings.topic_trades, settings.topic_quotes, settings.topic_second_aggs, settings.topic_minute_aggs,
              settings.topic_dead_letter]  # fmt: skip
    try:
        wait_for_kafka(settings, topics)
    except KafkaUnavailable as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return EXIT_KAFKA_REFUSED
    bridge = Bridge(bridge_settings, settings)
    try:
        ops = start_ops_server(bridge, bridge_settings.ops_host, bridge_settings.bridge_ops_port)
    except CannotServe as exc:
        raise Exit(EXIT_BAD_SETTINGS, f"{PROGRAM}: {exc}") from None
    try:
        return asyncio.run(serve(bridge, spool))
    finally:
        if ops is not None:
            ops.stop()


def run(argv: list[str] | None = None) -> int:
    """The program: no arguments (the settings are environment variables), `--help` says so."""
    argparse.ArgumentParser(
        prog="tickstock-bridge",
        description="Relay Polygon's (Massive's) WebSocket stream into Kafka until SIGTERM/SIGINT.",
        epilog="Settings are environment variables: MASSIVE_API_KEY (or POLYGON_API_KEY), BRIDGE_* and the Kafka ones "
        "(KAFKA_BOOTSTRAP_SERVERS, TOPIC_*); see the README. Exit codes: 0 stopped, 2 bad setting or refused key, "
        "3 connection slot taken, 4 Kafka refused, 5 records neither delivered nor spooled.",
    ).parse_args(argv)
    try:
        return main()
    except Exit as exc:
        print(exc, file=sys.stderr)
        return int(exc.code or 0)
