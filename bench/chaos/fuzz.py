"""Fuzzing every decoder that takes outside data: what it accepts, refuses, and what escapes it.

Each `Target` wraps one decoder the way the pipeline calls it and classifies every record:

- accepted: decoded (or applied) and passed on;
- refused: the decoder's documented refusal (a `Reject` from the bar book, a dead letter from
  the detection flow's decoding, `BadMessage` from the gateway, `None` from the Redis parser,
  `msgspec.ValidationError`/`DecodeError` from the schema decoders, a polars error for a flat
  file, `BridgeFatal` for a fatal feed status);
- crash: any other exception (counted per record; the signature is the exception type and the
  innermost project frame);
- violation: no exception, but an output the rest of the pipeline cannot live with (a watermark
  moved beyond the wall clock by more than an hour, a bar the sink cannot store, a dead letter
  larger than the producer's limit or of an unknown kind, a future-dated bar passed on to the
  detectors, replayed event text that is not JSON or says another symbol, a bridge that never
  returns from a frame).

Records come from two sources per target: mutation fuzzing of valid records (`mutate.Mutator`)
and property-based generation (`strategies`, run by hypothesis without shrinking: every example
is counted, none stops the run).

Over 400 lines on purpose: one small `Target` per decoder, side by side, so a reader compares how
each is called and judged in one file; splitting them would scatter one table.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
import traceback
import weakref
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson

from bench.chaos import strategies
from bench.chaos.mutate import Mutator

ROOT = Path(__file__).resolve().parents[2]
KAFKA_MAX_MESSAGE_BYTES = 1_000_000  # librdkafka's message.max.bytes default: a bigger record cannot be produced
BIGINT_MAX = 2**63 - 1
INTEGER_MAX = 2**31 - 1
FUTURE_MS = 3_600_000  # an event this far past the wall clock is never real (live or replayed): it must be refused
MSGSPEC_ERRORS = (msgspec.ValidationError, msgspec.DecodeError)


@dataclass
class Tally:
    """What one decoder did with its records."""

    records: int = 0
    mutated: int = 0
    generated: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: int = 0
    violations: int = 0
    crash_kinds: Counter = field(default_factory=Counter)
    violation_kinds: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def crash(self, exc: BaseException, record: Any, stage: str = "") -> None:
        self.crashes += 1
        signature = (f"{stage}: " if stage else "") + _signature(exc)
        self.crash_kinds[signature] += 1
        self.examples.setdefault(signature, f"{type(exc).__name__}: {str(exc)[:200]} <- {_show(record)}")

    def violation(self, what: str, record: Any) -> None:
        self.violations += 1
        self.violation_kinds[what] += 1
        self.examples.setdefault(what, _show(record))

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records, "mutated": self.mutated, "generated": self.generated, "accepted": self.accepted,
            "refused": self.refused, "crashes": self.crashes, "violations": self.violations,
            "crash_kinds": dict(self.crash_kinds.most_common()), "violation_kinds": dict(self.violation_kinds.most_common()),
            "examples": self.examples, "seconds": round(self.seconds, 1),
        }  # fmt: skip


def _signature(exc: BaseException) -> str:
    """`Type at file:line (function)`, the innermost frame of this project (not of a library)."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if f.filename.startswith(str(ROOT)) and "/bench/chaos/" not in f.filename]
    where = mine[-1] if mine else (frames[-1] if frames else None)
    at = (
        f" at {Path(where.filename).relative_to(ROOT) if where.filename.startswith(str(ROOT)) else Path(where.filename).name}:{where.lineno} ({where.name})"
        if where
        else ""
    )
    return f"{type(exc).__name__}{at}"


def _show(record: Any, limit: int = 300) -> str:
    text = repr(record)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


class Target:
    """One decoder under fuzz. `check` classifies a batch of records into the tally."""

    name = ""
    batch = (1, 1)  # how many records per call
    nullable = False  # whether None (a Kafka tombstone) is a possible input; else it is fed as b""

    def __init__(self) -> None:
        self.tally = Tally()

    def seeds(self) -> list[Any]:
        raise NotImplementedError

    def mutate(self, mutator: Mutator, record: Any) -> Any:
        return mutator.mutate(record)

    def generated(self) -> Any:
        """The hypothesis strategy of one record."""
        raise NotImplementedError

    def check(self, records: list[Any]) -> None:
        raise NotImplementedError

    def corpus(self, seeds: Sequence[Any]) -> list[bytes]:
        return [s for s in seeds if isinstance(s, bytes)]


# ---- seeds: valid records of every kind ------------------------------------------------------


class Seeds:
    """Valid records built once from the synthetic feed, the bar book and the detectors."""

    def __init__(self) -> None:
        from connectors.feeds.synthetic import generate
        from flows.book import BarBook
        from schemas.bars import encode_bar
        from schemas.conditions import ConditionRules

        self.now_ms = int(time.time() * 1000)
        start = self.now_ms - 20 * 60_000
        feed = list(generate(seed=7, symbols=40, rate=60.0, count=4000, start_ms=start, quote_ratio=0.2,
                             second_aggs=True, late_ratio=0.01, out_of_order_ratio=0.02))  # fmt: skip
        self.trades = [e.value for e in feed if e.topic_kind == "trades"]
        self.quotes = [e.value for e in feed if e.topic_kind == "quotes"]
        self.second_aggs = [e.value for e in feed if e.topic_kind == "second_aggs"]
        self.minute_aggs = [v.replace(b'"ev":"A"', b'"ev":"AM"', 1) for v in self.second_aggs[:300]]
        book = BarBook(ConditionRules.load())
        finals, _ = book.apply(self.trades)
        lives = book.take_live()
        finals += book.close_all()
        self.bars = [encode_bar(b) for b in finals] + [encode_bar(b) for b in lives]
        self.bar_series = _walk_bars(self.now_ms)
        self.events = _detected(self.bar_series)
        self.statuses = [b'{"ev":"status","status":"connected","message":"Connected Successfully"}',
                         b'{"ev":"status","status":"auth_success","message":"authenticated"}',
                         b'{"ev":"status","status":"success","message":"subscribed to: T.*"}']  # fmt: skip
        events = self.trades + self.quotes + self.second_aggs + self.minute_aggs
        rng = random.Random(3)
        self.frames = []
        for _ in range(600):
            picked = [events[rng.randrange(len(events))] for _ in range(rng.randint(1, 7))]
            if rng.random() < 0.05:
                picked.insert(0, rng.choice(self.statuses))
            self.frames.append(b"[" + b",".join(picked) + b"]")


def _walk_bars(now_ms: int) -> list[bytes]:
    """200 consecutive final bars of three symbols (a random walk), so the detectors warm up and fire."""
    from schemas.bars import Bar, encode_bar

    rng = random.Random(5)
    out = []
    start = now_ms - now_ms % 60_000 - 200 * 60_000
    closes = {"AAPL": 190.0, "MSFT": 410.0, "X": 25.0}
    for i in range(200):
        for symbol, last in closes.items():
            o = last
            c = max(0.01, o * (1 + rng.gauss(0, 0.004)))
            h, low = max(o, c) * (1 + abs(rng.gauss(0, 0.002))), min(o, c) * (1 - abs(rng.gauss(0, 0.002)))
            closes[symbol] = c
            volume = rng.randint(100, 5000) * (8 if rng.random() < 0.03 else 1)
            out.append(encode_bar(Bar(symbol=symbol, timestamp=start + i * 60_000, open=o, high=h, low=low, close=c,
                                      volume=volume, vwap=(o + c) / 2, trades=volume // 100 + 1, revision=0,
                                      status="final")))  # fmt: skip
    return out


def _detected(bars: list[bytes]) -> list[bytes]:
    """Detection records of every kind, from the detectors themselves over `bars`."""
    from flows.detect.bar_detector import BarDetector, DetectionParams
    from flows.detect.settings import DetectionSettings
    from schemas.bars import decode_bar
    from schemas.events import encode_event

    params = DetectionParams(DetectionSettings())
    detectors: dict[str, BarDetector] = {}
    out: list[bytes] = []
    for raw in bars:
        bar = decode_bar(raw)
        detector = detectors.setdefault(bar.symbol, BarDetector(bar.symbol, params))
        out += [encode_event(e) for e in detector.on_bar(bar)]
    return out


# ---- the bar book ----------------------------------------------------------------------------


class BookTarget(Target):
    """`BarBook.apply` on raw Kafka values, as the bar flow's step calls it (session highs/lows on).

    Around it, what the step does with the results: a dead letter per `Reject`
    (`connectors.kafka.dead_letter.dead_letter`), each final bar encoded for Redis and the bars topic,
    the session high/low detector fed and its references resolved, snapshots that must encode
    and restore.
    """

    batch = (1, 32)
    nullable = True

    def __init__(self, seeds: Seeds, source: str) -> None:
        super().__init__()
        from connectors.kafka.dead_letter import dead_letter
        from connectors.kafka.source import RawBatch
        from flows.book import BarBook
        from flows.detect.highlow import SessionExtremes
        from flows.detect.settings import HighLowSettings
        from schemas.bars import encode_bar
        from schemas.conditions import ConditionRules
        from schemas.events import encode_event
        from schemas.sessions import Reference
        from schemas.status import DEAD_LETTER_KINDS

        self.name = f"book.apply({source})"
        self.source = source
        self._seeds = seeds.trades if source == "trades" else seeds.second_aggs
        self._BarBook, self._rules, self._SessionExtremes = BarBook, ConditionRules.load(), SessionExtremes
        self._highlow, self._Reference = HighLowSettings(), Reference
        self._dead_letter, self._RawBatch, self._encode_bar, self._encode_event = dead_letter, RawBatch, encode_bar, encode_event
        self._kinds = set(DEAD_LETTER_KINDS)
        self._offset = 0
        self._batches = 0
        self._reset()

    def _reset(self) -> None:
        self.extremes = self._SessionExtremes(self._highlow)
        self.book = self._BarBook(self._rules, source=self.source, on_trade=self.extremes.observe)

    def _restore(self, snapshot: bytes, extremes: bytes) -> None:
        self.extremes = self._SessionExtremes.restore(extremes, self._highlow)
        self.book = self._BarBook.restore(snapshot, self._rules, close_delay_ms=2000, lateness_ms=900_000,
                                          source=self.source, on_trade=self.extremes.observe)  # fmt: skip

    def seeds(self) -> list[bytes]:
        return self._seeds

    def generated(self) -> Any:
        shape = strategies.TRADE if self.source == "trades" else strategies.AGG
        return strategies.encoded(strategies.st.one_of(shape, shape, shape, strategies.anything))

    def check(self, records: list[Any]) -> None:
        self._batches += 1
        if self._batches % 400 == 0:
            self._reset()  # keep the book small: the fuzz is about inputs, not about a long history
        before = self._snapshot(records)
        try:
            self._apply(records)
        except Exception:  # noqa: BLE001 - attributed record by record below
            self._restore(*before)
            for record in records:
                single = self._snapshot(record)
                try:
                    self._apply([record])
                except Exception as exc:  # noqa: BLE001 - this is what the fuzzer counts
                    self.tally.crash(exc, record, "apply")
                    self._restore(*single)
        if self._batches % 25 == 0:
            self._restore(*self._snapshot(records))

    def _snapshot(self, records: Any) -> tuple[bytes, bytes]:
        """The book's and the detector's snapshots, as the flow takes them each epoch; a failure is a crash."""
        try:
            return self.book.snapshot(), self._resolved_snapshot()
        except Exception as exc:  # noqa: BLE001 - the flow could not snapshot this state: its step would fail
            self.tally.crash(exc, records, "snapshot")
            self._reset()
            return self.book.snapshot(), self._resolved_snapshot()

    def _resolved_snapshot(self) -> bytes:
        self._resolve()
        return self.extremes.snapshot()

    def _resolve(self) -> None:
        waiting = self.extremes.waiting()
        if waiting:
            self.extremes.resolve({s: self._Reference(None, None, []) for s in waiting})

    def _apply(self, records: list[Any]) -> None:
        """One batch through the book; raises what escapes (the caller attributes it)."""
        finals, rejects = self.book.apply(records)
        offsets = range(self._offset, self._offset + len(records))
        self._offset += len(records)
        batch = self._RawBatch("fuzz.trades", 0, offsets, records)
        refused = set()
        for r in rejects:
            refused.add(r.index)
            if r.kind not in self._kinds:
                self.tally.violation(f"reject kind {r.kind!r} is not a dead-letter kind", records[r.index])
            letter = self._dead_letter(batch, r.index, r.kind, r.reason)
            if letter.value is not None and len(letter.value) > KAFKA_MAX_MESSAGE_BYTES:
                self.tally.violation("dead letter larger than the producer's message.max.bytes", _show(records[r.index], 80))
        for bar in finals:
            self._encode_bar(bar)
            if bar.volume > BIGINT_MAX or bar.trades > INTEGER_MAX:
                self.tally.violation("final bar whose volume/trades overflow their columns (BIGINT/INTEGER)", bar)
            if not 0 <= bar.timestamp < 253_402_300_800_000:
                self.tally.violation("final bar outside the years 1970-9999", bar)
        self._resolve()
        for event in self.extremes.take():
            self._encode_event(event)
        limit = int(time.time() * 1000) + FUTURE_MS
        if self.book.watermark > limit:
            self.tally.violation("a record moved the watermark more than an hour past the wall clock", records)
            self._reset()
        self.tally.refused += len(refused)
        self.tally.accepted += len(records) - len(refused)


# ---- the detection flow ------------------------------------------------------------------------


class BarsOfTarget(Target):
    """The detection flow's gate (`flows.detect.operators.BarGate`) on raw bars-topic values; accepted bars go on to `DetectorTarget`."""

    name = "detection.BarGate"
    batch = (1, 16)
    nullable = True

    def __init__(self, seeds: Seeds, detector: DetectorTarget) -> None:
        super().__init__()
        from bytewax.connectors.kafka import KafkaSinkMessage

        from connectors.kafka.source import RawBatch
        from flows.detect.operators import BarGate
        from flows.settings import Settings
        from schemas.status import DEAD_LETTER_KINDS

        gate = BarGate(Settings(), None)  # one partition's gate, its watermark and held bars carried on
        self._seeds = seeds.bar_series + seeds.bars
        self._bars_of, self._RawBatch, self._Letter = (lambda batch: gate.on_batch([batch])[0]), RawBatch, KafkaSinkMessage
        self._kinds = {k.encode() for k in DEAD_LETTER_KINDS}
        self.detector = detector
        self._offset = 0

    def seeds(self) -> list[bytes]:
        return self._seeds

    def generated(self) -> Any:
        return strategies.encoded(strategies.st.one_of(strategies.BAR, strategies.BAR, strategies.anything))

    def check(self, records: list[Any]) -> None:
        first = self._offset
        self._offset += len(records)
        try:
            out = self._bars_of(self._RawBatch("fuzz.bars", 0, range(first, first + len(records)), records))
        except Exception:  # noqa: BLE001 - attributed record by record
            for i, record in enumerate(records):
                try:
                    self._classify([record], self._bars_of(self._RawBatch("fuzz.bars", 0, [first + i], [record])))
                except Exception as exc:  # noqa: BLE001
                    self.tally.crash(exc, record)
            return
        self._classify(records, out)

    def _classify(self, records: list[Any], out: list[Any]) -> None:
        refused = 0
        bars = []
        limit = int(time.time() * 1000) + FUTURE_MS
        for item in out:
            if isinstance(item, self._Letter):
                refused += 1
                kind = dict(item.headers).get("dlq.kind")
                if kind not in self._kinds:
                    self.tally.violation(f"dead letter of unknown kind {kind!r}", item.value)
                if item.value is not None and len(item.value) > KAFKA_MAX_MESSAGE_BYTES:
                    self.tally.violation("dead letter larger than the producer's message.max.bytes", _show(item.value, 80))
            else:
                _, bar = item
                bars.append(bar)
                if bar.timestamp > limit:
                    self.tally.violation("a bar dated more than an hour past the wall clock was passed to the detectors", bar)
        self.tally.refused += refused
        self.tally.accepted += len(records) - refused
        self.detector.feed(bars)


class DetectorTarget(Target):
    """`BarDetector.on_bar` (the detection step) on every bar the gate accepted, snapshots included."""

    name = "detection.on_bar"

    def __init__(self) -> None:
        super().__init__()
        from flows.detect.bar_detector import BarDetector, DetectionParams
        from flows.detect.settings import DetectionSettings
        from schemas.events import encode_event

        self._BarDetector, self._params, self._encode = BarDetector, DetectionParams(DetectionSettings()), encode_event
        self.detectors: dict[str, Any] = {}
        self._seen = 0

    def seeds(self) -> list[Any]:
        return []

    def feed(self, bars: Iterable[Any]) -> None:
        for bar in bars:
            self.tally.records += 1
            self._seen += 1
            if len(self.detectors) > 500:
                self.detectors.clear()
            detector = self.detectors.get(bar.symbol)
            try:
                if detector is None:
                    detector = self.detectors[bar.symbol] = self._BarDetector(bar.symbol, self._params)
                for event in detector.on_bar(bar):
                    self._encode(event)
                if self._seen % 50 == 0:
                    self.detectors[bar.symbol] = self._BarDetector.restore(bar.symbol, detector.snapshot(), self._params)
                self.tally.accepted += 1
            except Exception as exc:  # noqa: BLE001
                self.tally.crash(exc, bar)
                self.detectors.pop(bar.symbol, None)


# ---- schemas -----------------------------------------------------------------------------------


class SchemaTarget(Target):
    """A schema decoder whose refusal is `msgspec.ValidationError` / `DecodeError`."""

    def __init__(self, name: str, decode: Callable[[Any], Any], seeds: list[bytes], shape: Any) -> None:
        super().__init__()
        self.name, self._decode, self._seeds, self._shape = name, decode, seeds, shape

    def seeds(self) -> list[bytes]:
        return self._seeds

    def generated(self) -> Any:
        return self._shape

    def check(self, records: list[Any]) -> None:
        for record in records:
            try:
                self._decode(record)
                self.tally.accepted += 1
            except MSGSPEC_ERRORS:
                self.tally.refused += 1
            except Exception as exc:  # noqa: BLE001
                self.tally.crash(exc, record)


# ---- the gateway -------------------------------------------------------------------------------


class ClientMessageTarget(Target):
    """`connectors.gateway.protocol.decode_client` on WebSocket text (str) and binary (bytes) frames."""

    name = "gateway.decode_client"

    def __init__(self) -> None:
        super().__init__()
        from connectors.gateway.protocol import BadMessage, decode_client

        self._decode, self._Bad = decode_client, BadMessage
        self._flip = random.Random(11)

    def seeds(self) -> list[bytes]:
        return [
            b'{"type":"subscribe","symbols":["AAPL","msft"],"kinds":["live","bar","pattern"],"min_confidence":0.8}',
            b'{"type":"subscribe","symbols":["*"],"positions":{"tickstock.market.ohlcv.AAPL":{"epoch":"17","offset":4}}}',
            b'{"type":"unsubscribe","symbols":["AAPL"],"kinds":["live"]}',
            b'{"type":"ping","id":1}', b'{"type":"ping","id":"abc"}', b'{"type":"ping"}',
            b'{"type":"subscribe","symbols":["BRK.B","BF-B"],"kinds":["alert","indicator","highlow","trend","surge"]}',
        ]  # fmt: skip

    def generated(self) -> Any:
        return strategies.encoded(strategies.CLIENT)

    def check(self, records: list[Any]) -> None:
        for record in records:
            raw: str | bytes = record
            if self._flip.random() < 0.5:  # a text frame: websockets hands over valid UTF-8 as str
                try:
                    raw = record.decode("utf-8")
                except UnicodeDecodeError:
                    raw = record
            try:
                self._decode(raw)
                self.tally.accepted += 1
            except self._Bad:
                self.tally.refused += 1
            except Exception as exc:  # noqa: BLE001
                self.tally.crash(exc, raw)


class RedisMessageTarget(Target):
    """`ChannelMap.parse(channel, data)` (and `channel_symbol`) on what the gateway's subscription receives."""

    name = "gateway.ChannelMap.parse"

    def __init__(self, seeds: Seeds) -> None:
        super().__init__()
        from connectors.gateway.fanout import ChannelMap
        from schemas.channels import Channels

        self.channels = Channels("tickstock")
        self.map = ChannelMap(self.channels)
        pairs: list[tuple[str, bytes]] = []
        for n, raw in enumerate(seeds.bars[:400]):
            symbol = orjson.loads(raw)["symbol"]
            data = b'{"offset":%d,"epoch":"1796117645000001",' % (n + 1) + raw[1:]
            pairs.append((self.channels.ohlcv_for(symbol) if b'"final"' in raw else self.channels.live_for(symbol), data))
        for n, raw in enumerate(seeds.events[:600]):
            record = orjson.loads(raw)
            data = b'{"offset":%d,"epoch":"1796117645000001",' % (n + 1) + raw[1:]
            channel = self.channels.indicators if record["kind"] == "indicator" else self.channels.events_for(record["symbol"])
            pairs.append((channel, data))
        self._seeds = pairs
        self._rng = random.Random(13)

    def seeds(self) -> list[tuple[str, bytes]]:
        return self._seeds

    def corpus(self, seeds: Sequence[Any]) -> list[bytes]:
        return [data for _, data in seeds]

    def mutate(self, mutator: Mutator, record: Any) -> Any:
        channel, data = record
        r = self._rng.random()
        if r < 0.2:
            channel = self._channel(channel)
        if r > 0.1:
            data = mutator.mutate(data)
        return channel, data

    def _channel(self, channel: str) -> str:
        rng = self._rng
        prefix = rng.choice((self.channels.live_for(""), self.channels.ohlcv_for(""), self.channels.events_for(""),
                             self.channels.indicators, "", "tickstock.", "other."))  # fmt: skip
        tail = rng.choice(("", "*", "AAPL", "aapl", "ÄPPL", "🚀", "A" * 5000, "AAPL.extra.parts", "\x00", "a b",
                           "".join(chr(rng.randint(1, 0xD7FF)) for _ in range(rng.randint(1, 20)))))  # fmt: skip
        return prefix + tail if rng.random() < 0.8 else channel + tail

    def generated(self) -> Any:
        st = strategies.st
        channel = st.one_of(st.sampled_from([c for c, _ in self._seeds[:50]]), st.text(max_size=60))
        data = strategies.encoded(st.one_of(strategies.BAR, strategies.anything))
        return st.tuples(channel, data)

    def check(self, records: list[Any]) -> None:
        for channel, data in records:
            data = b"" if data is None else data  # a Redis message is never null
            try:
                self.map.channel_symbol(channel)
                message = self.map.parse(channel, data)
                if message is None:
                    self.tally.refused += 1
                else:
                    self.tally.accepted += 1
            except Exception as exc:  # noqa: BLE001
                self.tally.crash(exc, (channel, data))


# ---- the bridge --------------------------------------------------------------------------------


class SplitFrameTarget(Target):
    """`connectors.feeds.bridge.frames.split_frame` on WebSocket frames: it never raises, it returns what it refused."""

    name = "bridge.split_frame"

    def __init__(self, seeds: Seeds) -> None:
        super().__init__()
        from connectors.feeds.bridge.frames import split_frame

        self._split, self._seeds = split_frame, seeds.frames

    def seeds(self) -> list[bytes]:
        return self._seeds

    def generated(self) -> Any:
        return strategies.frames()

    def check(self, records: list[Any]) -> None:
        for record in records:
            try:
                split = self._split(record)
            except Exception as exc:  # noqa: BLE001
                self.tally.crash(exc, record)
                continue
            if split.refused:
                self.tally.refused += 1
            else:
                self.tally.accepted += 1


class _StubProducer:
    """Stands in for confluent-kafka's Producer: takes records, refuses what a real one would refuse."""

    def __init__(self) -> None:
        from confluent_kafka import KafkaError, KafkaException

        self._too_large = KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large"))
        self.produced = 0
        self.by_topic: Counter = Counter()

    def produce(self, topic: str, value: bytes | None = None, key: Any = None, **_: Any) -> None:
        size = len(value or b"") + len(key.encode() if isinstance(key, str) else key or b"")
        if size > KAFKA_MAX_MESSAGE_BYTES:
            raise self._too_large
        self.produced += 1
        self.by_topic[topic] += 1

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def purge(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __len__(self) -> int:
        return 0


class OnFrameTarget(Target):
    """`Bridge.on_frame` with a stub producer: every frame must return, whatever it holds.

    A frame counts as refused when the bridge dead-lettered any of it, or for a fatal status.
    """

    name = "bridge.Bridge.on_frame"
    STALL_S = 0.2

    def __init__(self, seeds: Seeds) -> None:
        super().__init__()
        import logging

        from connectors.feeds.bridge.relay import Bridge
        from connectors.feeds.bridge.session import BridgeFatal
        from connectors.feeds.bridge.settings import BridgeSettings
        from flows.settings import Settings

        logging.getLogger("tickstock.bridge").setLevel(logging.CRITICAL)  # its dead-letter warnings would flood
        self.bridge = Bridge(BridgeSettings(api_key="fuzz"), Settings())
        self.bridge.producer = _StubProducer()
        self._Fatal = BridgeFatal
        self._seeds = seeds.frames
        self._loop = asyncio.new_event_loop()
        self._text = random.Random(19)

    def seeds(self) -> list[bytes]:
        return self._seeds

    def generated(self) -> Any:
        return strategies.frames()

    def check(self, records: list[Any]) -> None:
        for record in records:
            frame: str | bytes = record
            if self._text.random() < 0.5:  # the client hands text frames over as str (valid UTF-8)
                frame = record.decode("utf-8", "replace")
            letters = self.bridge.producer.by_topic[self.bridge.dead_letter_topic]
            try:
                self._loop.run_until_complete(asyncio.wait_for(self.bridge.on_frame(frame), self.STALL_S))
                if self.bridge.producer.by_topic[self.bridge.dead_letter_topic] > letters:
                    self.tally.refused += 1  # (some of) its events went to the dead-letter topic
                else:
                    self.tally.accepted += 1
            except self._Fatal:
                self.tally.refused += 1
            except TimeoutError:
                self.tally.violation(
                    "on_frame never returned: a record the producer refuses is retried forever", _show(record, 120)
                )
                self.bridge.retry.clear()
            except Exception as exc:  # noqa: BLE001
                self.tally.crash(exc, record)


# ---- replay ------------------------------------------------------------------------------------


class ReplayTarget(Target):
    """`connectors.feeds.flat_files.flat_file_events`: flat-file rows (CSV) to the feed's event JSON.

    Every row of a file that parses must become one JSON object naming the row's ticker; a file
    polars cannot read is refused as a whole (counted per row).
    """

    name = "replay.flat_file_events"
    batch = (1, 64)  # rows per file: each file costs a polars read (~50 ms), so 20,000 rows in ~600 files, not ~2,400

    def __init__(self) -> None:
        super().__init__()
        import polars as pl

        from connectors.feeds import flat_files as replay
        from connectors.feeds.synthetic import generate
        from schemas.polygon import decode_event

        self._events, self._refusals = replay.flat_file_events, (pl.exceptions.PolarsError, ValueError)
        self._decode = decode_event
        self._dir = Path(tempfile.mkdtemp(prefix="tickstock-fuzz-replay-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        weakref.finalize(self, shutil.rmtree, self._dir, True)  # the flat files are scratch
        self._n = 0
        import gzip

        fixtures = ROOT / "tests" / "support" / "fixtures" / "flat"
        trades = gzip.decompress((fixtures / "trades_v1" / "2026-11-02.csv.gz").read_bytes()).splitlines()
        minutes = gzip.decompress((fixtures / "minute_aggs_v1" / "2026-11-02.csv.gz").read_bytes()).splitlines()
        self.headers = {
            "trades": trades[0],
            "minute_aggs": minutes[0],
            "quotes": ",".join(strategies.CSV_COLUMNS["quotes"]).encode(),
        }
        quotes = []
        for e in generate(seed=9, symbols=20, count=400, quote_ratio=0.9, duplicate_ratio=0, out_of_order_ratio=0, late_ratio=0):
            if e.topic_kind != "quotes":
                continue
            q = orjson.loads(e.value)
            ns = q["t"] * 1_000_000
            quotes.append(f"{q['sym']},{q['ax']},{q['ap']},{q['as']}.0,{q['bx']},{q['bp']},{q['bs']}.0,,,{ns - 5},"
                          f"{q['q']},{ns},{q['z']},".encode())  # fmt: skip
        self._seeds = [("trades", r) for r in trades[1:600]] + [("minute_aggs", r) for r in minutes[1:]] + \
            [("quotes", r) for r in quotes]  # fmt: skip
        self._rng = random.Random(17)

    def seeds(self) -> list[tuple[str, bytes]]:
        return self._seeds

    def corpus(self, seeds: Sequence[Any]) -> list[bytes]:
        return [row for _, row in seeds]

    def mutate(self, mutator: Mutator, record: Any) -> Any:
        kind, row = record
        rng = self._rng
        fields = row.split(b",")
        r = rng.random()
        if r < 0.6:  # a field replaced by hostile text
            i = rng.randrange(len(fields))
            fields[i] = rng.choice((b"", b"NaN", b"inf", b"-inf", b"1e999", b"1e308", b"-1", str(2**63).encode(),
                                    str(2**64).encode(), b'"', b'"a""b"', b'"14,41"', b"\xff\xfe", b"\xed\xa0\x80",
                                    "🚀".encode(), b"A" * rng.choice((30, 5000)), b'A","p":1e9,"x":"', b"a\\b",
                                    b"null", b"1.5e3", b" 12 ", b"0x1F", b"-0", b"\x00"))  # fmt: skip
            row = b",".join(fields)
        elif r < 0.8:  # a field too many or too few
            row = row + b",extra" if rng.random() < 0.5 else b",".join(fields[:-1])
        else:
            row = mutator.mutate(row) or b""
        return kind, row

    def generated(self) -> Any:
        st = strategies.st
        kind = st.sampled_from(("trades", "quotes", "minute_aggs"))
        return kind.flatmap(lambda k: st.tuples(st.just(k), strategies.csv_rows(k)))

    def check(self, records: list[Any]) -> None:
        by_kind: dict[str, list[bytes]] = {}
        for kind, row in records:
            by_kind.setdefault(kind, []).append(row.replace(b"\n", b" ").replace(b"\r", b" "))
        for kind, rows in by_kind.items():
            self._file(kind, rows)

    def _file(self, kind: str, rows: list[bytes]) -> None:
        """One flat file of `rows` through the replay's conversion."""
        self._n += 1
        path = self._dir / f"{kind}-{self._n % 64}.csv"
        path.write_bytes(self.headers[kind] + b"\n" + b"\n".join(rows) + b"\n")
        try:
            events = self._events(path, kind)  # type: ignore[arg-type]
        except self._refusals:
            self.tally.refused += len(rows)
            return
        except Exception as exc:  # noqa: BLE001
            self.tally.crash(exc, rows)
            return
        for key, value in zip(events["key"].to_list(), events["value"].to_list(), strict=True):
            if value is None:
                self.tally.violation("a row became a null value (replay would publish a tombstone)", rows)
                continue
            try:
                sym = orjson.loads(value).get("sym")
            except orjson.JSONDecodeError:
                self.tally.violation("a row became text that is not JSON", value)
                continue
            if sym != key:
                self.tally.violation("a row's fields rewrote the event (ticker text injected JSON)", value)
                continue
            self.tally.accepted += 1
        self.tally.refused += max(0, len(rows) - len(events))


# ---- the runner --------------------------------------------------------------------------------


def targets(seeds: Seeds | None = None) -> list[Target]:
    from schemas.bars import decode_bar
    from schemas.polygon import decode_event, decode_events

    seeds = seeds or Seeds()
    events = seeds.trades + seeds.quotes + seeds.second_aggs + seeds.minute_aggs + seeds.statuses
    detector = DetectorTarget()
    st = strategies.st
    return [
        BookTarget(seeds, "trades"),
        BookTarget(seeds, "second_aggs"),
        BarsOfTarget(seeds, detector),
        detector,
        ClientMessageTarget(),
        RedisMessageTarget(seeds),
        SplitFrameTarget(seeds),
        OnFrameTarget(seeds),
        SchemaTarget("schemas.polygon.decode_event", decode_event, events, strategies.encoded(strategies.EVENT)),
        SchemaTarget("schemas.polygon.decode_events", decode_events, seeds.frames, strategies.frames()),
        SchemaTarget(
            "schemas.bars.decode_bar",
            decode_bar,
            seeds.bars + seeds.bar_series,
            strategies.encoded(st.one_of(strategies.BAR, strategies.anything)),
        ),
        ReplayTarget(),
    ]


def mutation_fuzz(target: Target, records: int, rng: random.Random) -> None:
    """`records` mutated valid records through `target`, in batches of its size (a few left valid)."""
    seeds = target.seeds()
    if not seeds:
        return
    mutator = Mutator(rng, target.corpus(seeds))
    low, high = target.batch
    done = 0
    while done < records:
        n = min(records - done, rng.randint(low, high))
        batch = [seeds[rng.randrange(len(seeds))] for _ in range(n)]
        batch = [r if rng.random() < 0.15 else target.mutate(mutator, r) for r in batch]  # some stay valid: state moves on
        if not target.nullable:
            batch = [b"" if r is None else r for r in batch]
        target.tally.records += n
        target.tally.mutated += n
        target.check(batch)
        done += n


def property_fuzz(target: Target, examples: int, seed: int) -> None:
    """`examples` hypothesis examples (lists of generated records) through `target`; nothing is shrunk."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    try:
        shape = target.generated()
    except NotImplementedError:
        return
    low, high = target.batch

    @hypothesis_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate], derandomize=False,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.lists(shape, min_size=low, max_size=high))
    def run(records: list[Any]) -> None:
        target.tally.records += len(records)
        target.tally.generated += len(records)
        target.check(records)

    run()


def fuzz_target(target: Target, records: int, examples: int, seed: int) -> None:
    """Mutation fuzzing (`records` records) then property-based fuzzing (`examples` lists of records) of one target."""
    started = time.perf_counter()
    mutation_fuzz(target, records, random.Random(f"{seed}:{target.name}:mutation"))
    property_fuzz(target, examples, zlib.crc32(f"{seed}:{target.name}".encode()))
    target.tally.seconds = time.perf_counter() - started


def run_fuzz(records_per_target: int, examples_per_target: int, seed: int = 1, log: Callable[[str], None] = print,
             only: Sequence[str] = ()) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Fuzz every target (or those named in `only`); returns each one's tally by name.

    `detection.on_bar` is fed by the detection flow's gate (the bars it accepts) and reported after it.
    """
    results: dict[str, dict[str, Any]] = {}
    every = targets(Seeds())
    for target in every:
        if isinstance(target, DetectorTarget) or (only and target.name not in only):
            continue
        fuzz_target(target, records_per_target, examples_per_target, seed)
        results[target.name] = target.tally.as_dict()
        t = target.tally
        log(f"fuzz {target.name}: {t.records:,} records ({t.mutated:,} mutated, {t.generated:,} generated), "
            f"{t.accepted:,} accepted, {t.refused:,} refused, {t.crashes:,} crashes, {t.violations:,} violations "
            f"({t.seconds:.1f} s)")  # fmt: skip
        if isinstance(target, BarsOfTarget):
            d = target.detector.tally
            d.seconds = t.seconds
            results[target.detector.name] = d.as_dict()
            log(f"fuzz {target.detector.name}: {d.records:,} bars that the gate accepted, {d.crashes:,} crashes, "
                f"{d.violations:,} violations")  # fmt: skip
    return results
