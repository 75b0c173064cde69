"""Mutation fuzzing: valid records turned into the hostile ones the outside world sends.

`Mutator.mutate(seed)` takes one valid record (JSON bytes) and returns a variant made by one to
three operators, byte-level (bit flips, interesting bytes, insertions, deletions, truncation,
splicing with another record) or structural (a field replaced by an extreme value, removed,
duplicated, nested, an unknown field added), or a whole-record replacement (a tombstone, empty,
random bytes, a ~1 MB record). Extreme values include what JSON libraries disagree on: integers
past int64/uint64, 1e308 and 1e999, `NaN`/`Infinity` literals, `-0`, lone surrogates as
escapes, invalid UTF-8 inside strings, deep nesting, huge strings, Unicode and control
characters. Deterministic for a given `random.Random`.

>>> import random
>>> m = Mutator(random.Random(1), [b'{"a":1}'])
>>> isinstance(m.mutate(b'{"ev":"T","sym":"AAPL","p":1.5}'), (bytes, type(None)))
True
>>> dumps({"p": Raw(b"NaN"), "s": 2**64})
b'{"p":NaN,"s":18446744073709551616}'
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import orjson

MEGABYTE = 1_048_576


class Raw:
    """Bytes written into a JSON document verbatim (for what no encoder emits: NaN, 1e999, bad escapes)."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r})"


def dumps(value: Any, ascii_only: bool = True) -> bytes:
    """JSON with Python's own number and string rules (any int size, NaN/Infinity) plus `Raw` pieces."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return b"{" + b",".join(_key(k, ascii_only) + b":" + dumps(v, ascii_only) for k, v in value.items()) + b"}"
    if isinstance(value, (list, tuple)):
        return b"[" + b",".join(dumps(v, ascii_only) for v in value) + b"]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    if isinstance(value, float):
        if math.isnan(value):
            return b"NaN"
        if math.isinf(value):
            return b"Infinity" if value > 0 else b"-Infinity"
        return repr(value).encode()
    if value is True:
        return b"true"
    if value is False:
        return b"false"
    if value is None:
        return b"null"
    if isinstance(value, int):
        return str(value).encode()
    return json.dumps(str(value)).encode()


def _key(key: Any, ascii_only: bool) -> bytes:
    return key.text if isinstance(key, Raw) else json.dumps(str(key), ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def deep(depth: int, opener: bytes = b"[") -> Raw:
    closer = b"]" if opener == b"[" else b"}"
    if opener == b"{":
        return Raw(b'{"a":' * depth + b"1" + closer * depth)
    return Raw(opener * depth + closer * depth)


YEAR_2099_MS = 4_070_908_800_000  # 2099-01-01
YEAR_10000_MS = 253_402_300_800_000  # 10000-01-01
NS_NOW = 1_796_000_000_000_000_000  # a nanosecond timestamp where milliseconds are expected

# Values a field may be replaced with. Callables are drawn lazily (big ones are built on use).
EXTREMES: tuple[Any, ...] = (
    None,
    "",
    " ",
    "0",
    "100",
    "1e3",
    "null",
    "NaN",
    "true",
    True,
    False,
    [],
    {},
    [None],
    {"": None},
    0,
    -0.0,
    -1,
    1,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**63 + 1,
    2**64 - 1,
    2**64,
    2**64 + 1,
    -(2**63),
    -(2**63) - 1,
    -(2**64),
    10**30,
    10**400,
    0.5,
    100.5,
    1e-300,
    5e-324,
    1e308,
    -1e308,
    1.7976931348623157e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    Raw(b"NaN"),
    Raw(b"Infinity"),
    Raw(b"-Infinity"),
    Raw(b"1e999"),
    Raw(b"-1e999"),
    Raw(b"1e-999"),
    Raw(b"-0"),
    Raw(b"00"),
    Raw(b"01"),
    Raw(b"1."),
    Raw(b".5"),
    Raw(b"+1"),
    Raw(b"0x10"),
    Raw(b"1_000"),
    Raw(b'"\\ud800"'),
    Raw(b'"\\udfff\\ud800"'),
    Raw(b'"a\\u0000b"'),
    Raw(b'"\xff\xfe"'),
    Raw(b'"\xc3"'),
    Raw(b'"\xed\xa0\x80"'),
    Raw(b'"\\x41"'),
    Raw(b"'AAPL'"),
    Raw(b"undefined"),
    Raw(b""),
    YEAR_2099_MS,
    YEAR_10000_MS,
    NS_NOW,
    2**62,
    4_102_444_800_000,
    "AAPL",
    "aapl",
    "ÄPPL",
    "AAPL\n",
    "AA PL",
    "AAPL*",
    "AAPL:x",
    "A.B.C",
    "🚀",
    "\u202eLPAA",
    "A\u200bB",
    "\x00",
    "\x7f",
    "\ud800",
    "x" * 21,
    "A" * 300,
    "2099-01-01T00:00:00Z",
    "+inf",
    "-Infinity",
    lambda r: "x" * r.choice((10_000, 100_000, MEGABYTE)),  # huge string
    lambda r: deep(r.choice((50, 1_000, 10_000, 100_000))),  # deep nesting
    lambda r: deep(r.choice((50, 1_000, 10_000)), b"{"),
    lambda r: [r.randint(-(2**70), 2**70) for _ in range(r.randint(0, 50))],
    lambda r: "".join(chr(r.randint(0, 0x10FFFF)) for _ in range(r.randint(1, 30))),
    lambda r: r.uniform(-1e12, 1e12),
    lambda r: r.randint(-(2**65), 2**65),
)

INTERESTING_BYTES = b'\x00\xff\x7f\x80"\\{}[],:0-.eE \n\t'


def draw_extreme(rng: random.Random) -> Any:
    value = EXTREMES[int(rng.random() * len(EXTREMES))]
    return value(rng) if callable(value) else value


class Mutator:
    """Mutates valid records; `corpus` supplies partners for splicing and shapes for whole replacements."""

    def __init__(self, rng: random.Random, corpus: Sequence[bytes], huge_ratio: float = 0.002) -> None:
        self.rng = rng
        self.corpus = list(corpus)
        self.huge_ratio = huge_ratio
        self._byte_ops: tuple[Callable[[bytes], bytes], ...] = (
            self._flip_bits, self._set_interesting, self._insert, self._delete, self._truncate, self._duplicate,
            self._splice,
        )  # fmt: skip

    def mutate(self, record: bytes) -> bytes | None:
        r = self.rng.random()
        if r < 0.04:
            return self._replacement(record)
        out = self._structural(record) if r < 0.55 else record
        for _ in range(self.rng.choice((0, 1, 1, 2, 3)) if out is not record else self.rng.choice((1, 1, 2, 3))):
            out = self._byte_ops[int(self.rng.random() * len(self._byte_ops))](out)
        return out

    # -- whole-record replacement ----------------------------------------------------------

    def _replacement(self, record: bytes) -> bytes | None:
        rng = self.rng
        choice = rng.randrange(12)
        if choice == 0:
            return None  # a tombstone
        if choice == 1:
            return b""
        if choice == 2:
            return rng.choice((b"null", b"[]", b"{}", b"0", b'""', b"true", b"[null]", b"[{}]", b"\xef\xbb\xbf" + record))
        if choice == 3:
            return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
        if choice == 4:
            return b"\x00" * rng.randint(1, 4096)
        if choice == 5:
            return b"[" + record + b"]"  # a frame where one event is expected (or a frame of one)
        if choice == 6:
            return record + record  # two documents back to back
        if choice == 7:
            return b" \t\r\n" * rng.randint(1, 10) + record + b"\n"
        if choice == 8 and rng.random() < self.huge_ratio * 50:
            return self._huge(record)
        if choice == 9:
            return dumps(deep(rng.choice((100, 10_000, 200_000))))
        if choice == 10:
            return record[: rng.randint(0, len(record))]
        return self._structural(record)

    def _huge(self, record: bytes) -> bytes:
        """About 1 MB: the record with a huge string in an unknown field (or in place of its first field)."""
        parsed = _loads(record)
        size = self.rng.choice((MEGABYTE - 4096, MEGABYTE, MEGABYTE + 65536))
        if isinstance(parsed, dict):
            parsed = dict(parsed)
            parsed["pad" if self.rng.random() < 0.5 else next(iter(parsed), "pad")] = "x" * size
            return dumps(parsed)
        return record + b" " * size

    # -- structural ------------------------------------------------------------------------

    def _structural(self, record: bytes) -> bytes:
        parsed = _loads(record)
        if parsed is None:
            return self._flip_bits(record)
        rng = self.rng
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            parsed = self._change(parsed, depth=0)
        return dumps(parsed, ascii_only=rng.random() < 0.7)

    def _change(self, value: Any, depth: int) -> Any:
        rng = self.rng
        if isinstance(value, list) and value and depth < 4:
            i = rng.randrange(len(value))
            op = rng.randrange(6)
            value = list(value)
            if op == 0:
                del value[i]
            elif op == 1:
                value.insert(i, draw_extreme(rng))
            elif op == 2:
                value.append(value[i])  # a repeated element (a duplicate event in a frame)
            else:
                value[i] = self._change(value[i], depth + 1)
            return value
        if isinstance(value, dict) and value and depth < 4:
            value = dict(value)
            keys = list(value)
            key = keys[rng.randrange(len(keys))]
            op = rng.randrange(10)
            if op <= 4:
                inner = value[key]
                value[key] = (
                    self._change(inner, depth + 1)
                    if isinstance(inner, (dict, list)) and rng.random() < 0.5
                    else draw_extreme(rng)
                )
            elif op == 5:
                del value[key]
            elif op == 6:
                value[rng.choice(("zz", "", "ev", "sym", key + key, "\u00e9", "__proto__"))] = draw_extreme(rng)
            elif op == 7:  # the same key twice: JSON parsers keep the first, the last, or refuse
                return Raw(dumps(value)[:-1] + b"," + dumps(key) + b":" + dumps(draw_extreme(rng)) + b"}")
            elif op == 8:
                value[key] = [value[key]] if rng.random() < 0.5 else {"v": value[key]}
            else:
                value = dict(reversed(list(value.items())))
            return value
        return draw_extreme(rng)

    # -- byte level ------------------------------------------------------------------------

    def _flip_bits(self, data: bytes) -> bytes:
        if not data:
            return bytes([self.rng.getrandbits(8)])
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            i = self.rng.randrange(len(out))
            out[i] ^= 1 << self.rng.randrange(8)
        return bytes(out)

    def _set_interesting(self, data: bytes) -> bytes:
        if not data:
            return data
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 3)):
            out[self.rng.randrange(len(out))] = INTERESTING_BYTES[self.rng.randrange(len(INTERESTING_BYTES))]
        return bytes(out)

    def _insert(self, data: bytes) -> bytes:
        i = self.rng.randint(0, len(data))
        piece = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 8)))
        return data[:i] + piece + data[i:]

    def _delete(self, data: bytes) -> bytes:
        if len(data) < 2:
            return data
        i = self.rng.randrange(len(data))
        return data[:i] + data[i + self.rng.randint(1, 16) :]

    def _truncate(self, data: bytes) -> bytes:
        return data[: self.rng.randint(0, max(0, len(data) - 1))]

    def _duplicate(self, data: bytes) -> bytes:
        if not data:
            return data
        i = self.rng.randrange(len(data))
        j = min(len(data), i + self.rng.randint(1, 32))
        return data[:j] + data[i:j] + data[j:]

    def _splice(self, data: bytes) -> bytes:
        other = self.corpus[self.rng.randrange(len(self.corpus))] if self.corpus else data
        return data[: self.rng.randint(0, len(data))] + other[self.rng.randint(0, len(other)) :]


def _loads(record: bytes) -> Any:
    try:
        return orjson.loads(record)
    except orjson.JSONDecodeError:
        return None
