"""Recovery snapshots spliced from parts encoded at an earlier epoch.

Most of a partition's state at an epoch is what it was at the last one: the final minutes still
revisable (the book's bars, the rollup's minutes) change only when a late trade reaches them. The
book and the rollup keep each such minute's msgpack encoding until it changes and splice the
encodings into the snapshot's array, which gives the bytes `msgspec.msgpack.encode` of the whole
list would, without encoding (or holding as objects) every row again.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec


def array_header(n: int) -> bytes:
    """msgpack's header of an array of `n` items, in the shortest form (as msgspec writes it)."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def spliced_array(count: int, parts: Iterable[bytes]) -> msgspec.Raw:
    """The msgpack array of `count` items whose encodings, in order, are `parts` joined."""
    return msgspec.Raw(b"".join([array_header(count), *parts]))  # one copy of the parts, not two
