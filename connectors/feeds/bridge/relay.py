"""Live bridge: Massive (Polygon) stocks WebSocket -> Kafka, one event per message, key = symbol.

Run it with ``python -m connectors.feeds.bridge`` (settings: `connectors.feeds.bridge.settings`,
plus the Kafka/topic variables of `connectors.kafka.settings.KafkaSettings`). The bridge has
three parts: `session` (the WebSocket, reconnected forever), `publish` (Kafka, nothing lost, the
spool on stop) and this relay between them, which turns each frame into records.

Why the relay is built this way:
- Events are forwarded untouched: a frame is split by `connectors.feeds.bridge.frames` (two C
  calls for a well-formed frame) into each event's exact byte slice and the few fields the
  bridge reads (`ev`/`sym`/`t`/`e`). Per event there is one `produce` call and no Python
  callback, and the event-time gap is sampled once per frame.
- Any frame is survived: what is not an event (not JSON, not UTF-8, no `ev`, a `sym` that is
  not a symbol, too large for Kafka) goes to the dead-letter topic with the reason, built by
  `connectors.kafka.dead_letter.letter` (bounded: a prefix, the size and a hash), and every good
  event of the same frame is still forwarded, once.
- Memory is bounded whatever the feed sends: the window, the retry queues (they hold only
  records that left the window), the frame size, the remembered symbols and the counters by
  event type (`connectors.feeds.bridge.health`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from confluent_kafka import KafkaException

from connectors.feeds.bridge.frames import Head, event_ms
from connectors.feeds.bridge.frames import split_frame as _split
from connectors.feeds.bridge.health import OTHER, Stats, power_of_two
from connectors.feeds.bridge.publish import Publisher
from connectors.feeds.bridge.session import Session
from connectors.feeds.bridge.settings import BridgeSettings
from connectors.feeds.bridge.spool import Spool
from connectors.kafka.settings import KafkaSettings
from schemas.symbols import RULE, is_symbol

log = logging.getLogger("tickstock.bridge")

MAX_SYMBOLS_REMEMBERED: Final = 100_000  # valid symbols seen (US equities: ~12k); beyond, checked each time


class Bridge(Publisher, Session):
    """Frames in, Kafka records out; owns the producer, the counters and the reconnect loop."""

    def __init__(self, bridge: BridgeSettings, settings: KafkaSettings) -> None:
        self.cfg = bridge
        self.topics = {
            "T": settings.topic_trades,
            "Q": settings.topic_quotes,
            "A": settings.topic_second_aggs,
            "AM": settings.topic_minute_aggs,
        }
        self.stats = Stats()
        Publisher.__init__(self, settings)
        Session.__init__(self)
        self.symbols: set[str] = set()  # valid symbols seen (bounded)

    async def on_frame(self, frame: str | bytes) -> None:
        """Hand every event of a frame to Kafka; returns (lets the client read on) only then."""
        heads, raws, refused = _split(frame)
        while (self.retry or self.letters or self.fatal_error) and not self._may_produce():
            await self._wait_for_room()  # failed records first: they are older, and in the window
        for piece in refused:
            self._dead_letter(piece.raw, piece.reason, "")
        if self.gap_since is not None:
            self._resumed(heads)
        done = 0
        try:
            done = self._forward(heads, raws, 0)
            while done < len(heads):
                await self._wait_for_room()
                if self._may_produce():
                    done = self._forward(heads, raws, done)
        except asyncio.CancelledError:
            self._keep_unsent(heads, raws, done)
            raise
        self.stats.count_frame(heads)
        for head in reversed(heads):  # the frame's last event samples the gap
            if head.ev in self.topics:
                t = event_ms(head)
                if t:
                    self.stats.sample_gap(t)
                    if t > self.last_event_ms:
                        self.last_event_ms = t
                break
        if self.fatal_status is not None:
            raise self.fatal_status

    def _forward(self, heads: list[Head], raws: list[Any], start: int) -> int:
        """Produce events `start:`; returns how far it got (less than all when the window filled)."""
        produce = self.producer.produce
        topics = self.topics
        symbols = self.symbols
        n = len(heads)
        i = start
        other = 0  # statuses, ignored types, dead letters (which count themselves)
        topic: str | None = None
        sym = ""
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - `i` is where to resume
                    head = heads[i]
                    topic = topics.get(head.ev)
                    sym = head.sym
                    if topic is not None and (sym in symbols or self._admit(sym)):
                        produce(topic, raws[i], sym)
                    else:
                        self._other(head, raws[i])
                        other += 1
                i = n
            except BufferError:
                break  # the window is full: on_frame waits for room, then resumes at `i`
            except KafkaException as exc:
                assert topic is not None
                if not self._refused_at_produce(exc.args[0], (topic, sym.encode(), bytes(raws[i]), None)):
                    break  # on_frame waits, then resumes at `i`: stop reading rather than drop the event
                self.stats.not_forwarded[self.stats.label(heads[i].ev)] += 1  # its dead letter went instead
                i += 1
        self.stats.handed += i - start - other
        return i

    def _admit(self, sym: str) -> bool:
        if not is_symbol(sym):
            return False
        if len(self.symbols) < MAX_SYMBOLS_REMEMBERED:
            self.symbols.add(sym)
        return True

    def _keep_unsent(self, heads: list[Head], raws: list[Any], start: int) -> None:
        """A stop interrupted a frame: what it had not handed over yet goes to the spool."""
        for i in range(start, len(heads)):
            head = heads[i]
            topic = self.topics.get(head.ev)
            if topic is not None and is_symbol(head.sym):
                self.unsent.append((topic, head.sym.encode(), bytes(raws[i]), None))
            elif head.ev != "status":
                self._other(head, raws[i], hand=False)

    def _other(self, head: Head, raw: Any, hand: bool = True) -> None:
        """What is not an event to forward: a status, a type without a topic, or bad input."""
        ev = head.ev
        if ev == "status":
            self._status(head.status, head.message)
            return
        label = self.stats.label(ev)
        if ev in self.topics:
            reason = f"{ev} event without a symbol (sym)" if not head.sym else \
                f"{ev} event whose sym {head.sym[:40]!r} is not a symbol ({RULE})"  # fmt: skip
            self._dead_letter(bytes(raw), reason, self.topics[ev], hand)
        elif ev:
            self.stats.ignored += 1
            if self.stats.not_forwarded[label] == 0 or (label == OTHER and power_of_two(self.stats.ignored)):
                log.warning("feed sends %.40r events, which have no topic; counting them, not forwarding", ev)
        else:
            self._dead_letter(bytes(raw), "event without an event type (ev)", "", hand)
        self.stats.not_forwarded[label] += 1

    def _dead_letter(self, raw: bytes, reason: str, topic: str, hand: bool = True) -> None:
        """Bad input goes to the dead-letter topic with the reason, like the flow's (never dropped)."""
        record = self._letter(raw, "malformed", reason, topic, None)
        if not hand or not self._hand(record):
            self.letters.append(record)  # produced as soon as there is room
        self.stats.dead_letters["malformed"] += 1
        self.stats.handed += 1
        if power_of_two(self.stats.dead_letters["malformed"]):
            log.warning("dead-lettered %s (%d so far): %.200r", reason, self.stats.dead_letters["malformed"], raw)

    async def feed(self, spool: Spool) -> None:
        await self.produce_spool(spool)
        await self.run()


def split_frame(frame: bytes | str) -> list[tuple[Head, bytes]]:
    """A frame's events with their original JSON bytes (no re-encoding); what is not an event left out."""
    split = _split(frame)
    return [(head, bytes(raw)) for head, raw in zip(split.heads, split.raws, strict=True)]
