"""Frames of the Massive (Polygon) WebSocket, split into events without trusting them.

A frame should be a JSON array of event objects. The bridge forwards each event's exact bytes,
so splitting never re-encodes; and since the feed is outside input, splitting never raises,
whatever the frame holds: any bytes, text or binary, invalid UTF-8, any nesting, any size,
numbers of any size. What is not an event comes back as a `Refused` piece with the reason,
and every readable event of the same frame comes back exactly once, in frame order.

Fast path (a well-formed frame, what the feed sends): two C calls decode it as its heads (the
few fields the bridge reads) and as the raw byte slices of its events. Anything else goes the
slow way: when the frame is not valid JSON, its array is cut into top-level elements by a
tokenizer that tracks only strings and brackets, so one element holding NaN, a bare word or
an unescaped control character does not take its neighbours with it; then each element is
decoded on its own. Only routing fields are typed strictly (`ev`, `sym` must be strings);
the times, status and message are read as whatever JSON value they hold, so a status with odd
fields is still a status.

>>> split = split_frame(b'[{"ev":"T","sym":"A","p":NaN}, {"ev":"T","sym":"B","p":1.5}, 7]')
>>> [bytes(raw) for raw in split.raws]
[b'{"ev":"T","sym":"B","p":1.5}']
>>> [reason for _, reason in split.refused]
['unreadable event: JSON is malformed: invalid character (byte 24)', 'unreadable event: Expected `object`, got `int`']
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import msgspec


class Head(msgspec.Struct, gc=False):
    """The fields the bridge reads from an event; the rest stays in the raw bytes.

    `ev` and `sym` route the event (topic, key), so they must be strings; `t`/`e` only feed the
    health line's latency figure and `status`/`message` are logged, so any JSON value is taken.
    """

    ev: str = ""
    sym: str = ""
    t: Any = 0
    e: Any = 0
    status: Any = ""
    message: Any = ""


class Refused(NamedTuple):
    """A piece of a frame that is not an event: its bytes (as received) and why."""

    raw: bytes
    reason: str


class Split(NamedTuple):
    """A frame's events (heads and raw bytes, in frame order) and the pieces refused."""

    heads: list[Head]
    raws: list[Any]  # msgspec.Raw (fast path) or bytes: both are buffers Kafka takes as they are
    refused: list[Refused]


_heads = msgspec.json.Decoder(list[Head])
_raws = msgspec.json.Decoder(list[msgspec.Raw])
_head = msgspec.json.Decoder(Head)
# msgspec signals nesting deeper than it decodes with RecursionError, bad text with UnicodeError
DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeError, RecursionError)

_WHITESPACE = b" \t\r\n"  # JSON's
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[][{},]', re.DOTALL)  # strings, brackets and commas
_QUOTE, _OPEN_ARRAY, _CLOSE_ARRAY, _OPEN_OBJECT, _CLOSE_OBJECT = b'"[]{}'


def event_ms(head: Head) -> int:
    """The event's time in ms when it is a plausible one (any JSON value may be there)."""
    t = head.t or head.e
    return t if type(t) is int and 0 < t < 1 << 53 else 0


def split_frame(frame: str | bytes | bytearray | memoryview) -> Split:
    """A frame's events with their original JSON bytes, and what is not an event (never raises)."""
    if not isinstance(frame, str):
        data = bytes(frame)
        try:
            frame = data.decode()  # a binary frame: JSON text is UTF-8 (and Raw slices are not checked)
        except UnicodeDecodeError:
            return _split_slowly(data)
    try:
        return Split(_heads.decode(frame), _raws.decode(frame), [])
    except DECODE_ERRORS:
        # surrogatepass keeps a lone surrogate as (invalid) bytes, refused below, instead of raising
        return _split_slowly(frame.encode("utf-8", "surrogatepass"))


def _split_slowly(data: bytes) -> Split:
    heads: list[Head] = []
    raws: list[Any] = []
    refused: list[Refused] = []
    try:
        elements = [bytes(raw) for raw in _raws.decode(data)]
    except DECODE_ERRORS as exc:
        if not data.strip(_WHITESPACE):
            return Split(heads, raws, [Refused(data, "empty frame")])
        cut = cut_array(data)
        if cut is None:
            return Split(heads, raws, [Refused(data, f"frame is not a JSON array: {why(exc)}")])
        elements, tail, closed = cut
        if not closed:
            refused.append(Refused(b"", "frame ends before its closing ']' (cut short?)"))
        if tail.strip(_WHITESPACE):
            refused.append(Refused(tail, "bytes after the frame's closing ']'"))
    for element in elements:
        element = element.strip(_WHITESPACE)
        if not element:
            refused.append(Refused(b"", "empty element in the frame's array (two commas, or one before ']')"))
            continue
        try:
            element.decode()  # skipped fields are not checked by msgspec
            head = _head.decode(element)
        except DECODE_ERRORS as exc:
            refused.append(Refused(element, f"unreadable event: {why(exc)}"))
            continue
        heads.append(head)
        raws.append(element)
    return Split(heads, raws, refused)


def cut_array(data: bytes) -> tuple[list[bytes], bytes, bool] | None:
    """The top-level elements of what should be a JSON array, the bytes after its `]`, and
    whether there was a `]` at all; None when `data` does not start like an array.

    Only strings, brackets and commas are tokens, so any other garbage stays inside its element.
    An unterminated string runs to the next quote; that element (and maybe the next) is then
    unreadable, but the elements before it are whole.
    """
    start = len(data) - len(data.lstrip(_WHITESPACE))
    if data[start : start + 1] != b"[":
        return None
    elements: list[bytes] = []
    depth = 0
    begin = start + 1
    for match in _TOKENS.finditer(data, begin):
        c = data[match.start()]
        if c == _QUOTE:
            continue
        if c in (_OPEN_ARRAY, _OPEN_OBJECT):
            depth += 1
        elif c in (_CLOSE_ARRAY, _CLOSE_OBJECT):
            if depth:
                depth -= 1
            elif c == _CLOSE_ARRAY:  # the frame's array ends
                elements.append(data[begin : match.start()])
                if len(elements) == 1 and not elements[0].strip(_WHITESPACE):
                    elements = []  # `[]`
                return elements, data[match.end() :], True
        elif depth == 0:  # a comma between elements
            elements.append(data[begin : match.start()])
            begin = match.end()
    if data[begin:].strip(_WHITESPACE):
        elements.append(data[begin:])  # the element the frame was cut in
    return elements, b"", False


def why(exc: BaseException) -> str:
    """A decode error as one short line (msgspec's messages already say what and where)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8 (byte {exc.start})"
    if isinstance(exc, UnicodeEncodeError):
        return f"not encodable as UTF-8 (character {exc.start})"
    if isinstance(exc, RecursionError):
        return "nested deeper than the decoder allows"
    text = str(exc)
    return text if len(text) <= 300 else text[:299] + "…"
