"""Hypothesis strategies for the records the pipeline takes from outside, valid and hostile alike.

Each strategy draws records that are shaped like the real thing (the wire's field names, the
right event tags) but whose values range over everything JSON can carry and more: any integer
size, NaN/Infinity literals, Unicode, extreme times. Encoded with `mutate.dumps`, which writes
what the stdlib/orjson encoders refuse to.
"""

from __future__ import annotations

import csv
import io
import time

from hypothesis import strategies as st

from bench.chaos.mutate import NS_NOW, YEAR_2099_MS, YEAR_10000_MS, Raw, dumps

SYMBOLS = ("AAPL", "MSFT", "BRK.A", "BACpL", "X", "GOOGL")
CONDITION_CODES = (0, 1, 2, 7, 10, 12, 14, 15, 16, 17, 22, 32, 37, 41, 52, 53)  # mostly known codes

_now_ms = int(time.time() * 1000)

EXTREME_INTS = st.sampled_from(
    (0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, -(2**63) - 1, 10**30, 10**400)
)
RAW_LITERALS = st.sampled_from(
    (Raw(b"NaN"), Raw(b"Infinity"), Raw(b"-Infinity"), Raw(b"1e999"), Raw(b"-0"), Raw(b'"\\ud800"'),
     Raw(b'"\xff"'), Raw(b"[" * 5000 + b"]" * 5000))
)  # fmt: skip

ints = st.one_of(st.integers(-(2**70), 2**70), EXTREME_INTS, st.integers(0, 1000))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0.0001, 10_000.0))
text = st.one_of(st.text(max_size=30), st.sampled_from(("", " ", "\x00", "\ud800", "🚀", "A" * 25)))
scalar = st.one_of(st.none(), st.booleans(), ints, floats, text, RAW_LITERALS)
anything = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
                        max_leaves=8)  # fmt: skip

symbols = st.one_of(st.sampled_from(SYMBOLS), st.from_regex(r"[A-Z][A-Za-z0-9.\-]{0,21}", fullmatch=True), text, scalar)
times = st.one_of(
    st.integers(_now_ms - 3_600_000, _now_ms + 3_600_000),
    st.integers(-(2**64), 2**65),
    st.sampled_from((0, 1, -1, YEAR_2099_MS, YEAR_10000_MS, NS_NOW, 2**62, 2**63 - 1, 2**63)),
    scalar,
)
prices = st.one_of(st.floats(0.0001, 100_000.0), floats, ints, scalar)
sizes = st.one_of(st.integers(0, 1_000_000), ints, floats, scalar)
conditions = st.one_of(st.lists(st.one_of(st.sampled_from(CONDITION_CODES), ints), max_size=5), scalar)


def _maybe(value: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(value, anything)


TRADE = st.fixed_dictionaries(
    {"ev": st.one_of(st.just("T"), st.sampled_from(("Q", "A", "AM", "status", "t", "")), text), "sym": symbols,
     "x": _maybe(st.integers(0, 30)), "i": st.one_of(st.text(max_size=12), ints), "p": prices, "s": sizes,
     "t": times},
    optional={"z": _maybe(st.integers(1, 3)), "c": conditions, "q": _maybe(ints), "trfi": _maybe(st.integers(0, 300)),
              "trft": times, "ds": _maybe(text), "zz": anything},
)  # fmt: skip
QUOTE = st.fixed_dictionaries(
    {"ev": st.one_of(st.just("Q"), text), "sym": symbols, "bp": prices, "ap": prices, "t": times},
    optional={"bx": ints, "bs": sizes, "ax": ints, "as": sizes, "c": _maybe(ints), "i": conditions, "q": ints, "z": ints},
)  # fmt: skip
AGG = st.fixed_dictionaries(
    {"ev": st.one_of(st.sampled_from(("A", "AM")), text), "sym": symbols, "v": sizes, "o": prices, "c": prices,
     "h": prices, "l": prices, "s": times, "e": times},
    optional={"av": sizes, "op": prices, "vw": prices, "a": prices, "z": prices},
)  # fmt: skip
STATUS = st.fixed_dictionaries({"ev": st.just("status"), "status": st.one_of(st.sampled_from(
    ("connected", "auth_success", "success", "auth_failed", "auth_timeout", "max_connections", "error")), text),
    "message": text})  # fmt: skip
EVENT = st.one_of(TRADE, TRADE, QUOTE, AGG, STATUS, anything)
BAR = st.fixed_dictionaries(
    {"symbol": symbols, "timestamp": times, "open": _maybe(prices), "high": _maybe(prices), "low": _maybe(prices),
     "close": _maybe(prices), "volume": sizes, "vwap": _maybe(prices), "trades": sizes,
     "revision": st.one_of(st.integers(0, 5), ints), "status": st.one_of(st.sampled_from(("final", "live")), text)},
    optional={"version": ints, "timeframe": st.one_of(st.just("1m"), text), "offset": ints, "epoch": text,
              "kind": text, "id": text, "confidence": floats},
)  # fmt: skip
CLIENT = st.one_of(
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from(("subscribe", "unsubscribe", "ping")), text)},
                          optional={"symbols": st.one_of(st.lists(symbols, max_size=6), scalar),
                                    "kinds": st.one_of(st.lists(st.one_of(st.sampled_from(("live", "bar", "pattern",
                                                                                           "alert")), text), max_size=4), scalar),
                                    "min_confidence": _maybe(floats), "id": anything,
                                    "positions": st.one_of(st.dictionaries(text, st.fixed_dictionaries(
                                        {"epoch": _maybe(text), "offset": _maybe(ints)}), max_size=3), scalar)}),
    anything,
)  # fmt: skip


@st.composite
def encoded(draw: st.DrawFn, shape: st.SearchStrategy) -> bytes:
    """One record of `shape`, as JSON bytes (ASCII-escaped or raw UTF-8)."""
    return dumps(draw(shape), ascii_only=draw(st.booleans()))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """A WebSocket frame: a JSON array of events (or, sometimes, not an array at all)."""
    events = draw(st.lists(EVENT, min_size=0, max_size=8))
    if draw(st.integers(0, 9)) == 0:
        return dumps(draw(anything))
    return dumps(events, ascii_only=draw(st.booleans()))


CSV_COLUMNS = {
    "trades": ("ticker", "conditions", "correction", "exchange", "id", "participant_timestamp", "price",
               "sequence_number", "sip_timestamp", "size", "tape", "trf_id", "trf_timestamp"),
    "quotes": ("ticker", "ask_exchange", "ask_price", "ask_size", "bid_exchange", "bid_price", "bid_size", "conditions",
               "indicators", "participant_timestamp", "sequence_number", "sip_timestamp", "tape", "trf_timestamp"),
    "minute_aggs": ("ticker", "volume", "open", "close", "high", "low", "window_start", "transactions"),
}  # fmt: skip
csv_field = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(("", "NaN", "inf", "-inf", "1e999", '"', '","', "a\nb", "\x00", "null", "14,41", "1e308",
                     str(2**63), str(2**64), "-1", "🚀", '{"x":1}')),
)  # fmt: skip


@st.composite
def csv_rows(draw: st.DrawFn, kind: str) -> bytes:
    """One flat-file row of `kind`: its columns, any text in each."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([draw(csv_field) for _ in CSV_COLUMNS[kind]])
    return out.getvalue().encode("utf-8", "surrogatepass")
