"""The compiled bar book (`make core`: flows/bars.py and flows/book.py through Cython) against the
same sources run as Python: the same bars, rejects, counts, live updates and snapshots, on
hostile input, in any batching and across a restart from the other one's snapshot.

The Python sources are loaded a second time (`bench.book.python_book`), with the Python
`flows.bars` underneath the Python `flows.book`, so one process holds both books.
"""

from __future__ import annotations

import os
from types import ModuleType

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flows
import flows.bars
import flows.book
from bench.book import python_book
from flows.event_time import Horizon
from schemas.conditions import ConditionRules
from schemas.polygon import MAX_EPOCH_MS, MIN_EPOCH_MS
from tests.support.examples import examples

RULES = ConditionRules.load()
T0 = 1_762_094_400_000  # a minute boundary
NOW_S = (T0 + 10 * 60_000) / 1000  # the books' wall clock: fixed, so "future" reasons are the same text


PY_BOOK = python_book()
COMPILED = flows.book.__file__.endswith(".so") and flows.bars.__file__.endswith(".so")


def test_the_compiled_book_is_what_runs_in_ci():
    """`make test` compiles first; a checkout without the build runs the Python (and this says so)."""
    if not COMPILED:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the Python bar book ({flows.book.__file__}): `make core` did not build it")
        pytest.skip("the bar book is not compiled here (`make core`): both sides below are the Python sources")
    assert PY_BOOK.__file__.endswith("book.py") and PY_BOOK.MinuteBar.__module__ == "flows.bars"
    assert PY_BOOK.MinuteBar is not flows.bars.MinuteBar


def _horizon() -> Horizon:
    return Horizon(max_ahead_of_clock_ms=60_000, max_jump_ms=5 * 60_000, confirm=3, clock=lambda: NOW_S)


def _book(module: ModuleType, lateness_ms: int) -> flows.book.BarBook:
    return module.BarBook(RULES, close_delay_ms=2_000, lateness_ms=lateness_ms, horizon=_horizon(), max_symbols=5)  # type: ignore[no-any-return]  # the BarBook of either module


def _restore(module: ModuleType, snapshot: bytes, lateness_ms: int) -> flows.book.BarBook:
    return module.BarBook.restore(  # type: ignore[no-any-return]  # the BarBook of either module
        snapshot, RULES, close_delay_ms=2_000, lateness_ms=lateness_ms, source="trades", horizon=_horizon(), max_symbols=5
    )


SYMBOLS = st.sampled_from(["A", "B", "C", "D", "E", "F", "G", "bad sym", ""])
CONDITIONS = st.one_of(st.none(), st.sampled_from([[37], [14, 41], [10], [12], [2], [7], [999], []]))
TIMES = st.one_of(
    st.integers(T0 - 20 * 60_000, T0 + 8 * 60_000),  # late, in time and ahead
    st.sampled_from([MIN_EPOCH_MS, MAX_EPOCH_MS - 1, T0 + 3_600_000, T0 + 20 * 60_000]),  # the edges, jumps, the future
)


@st.composite
def events(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["trade"] * 12 + ["garbage", "null", "quote", "huge", "edge"]))
    if kind == "garbage":
        return draw(st.binary(max_size=40))
    if kind == "null":
        return None
    if kind == "quote":
        return orjson.dumps({"ev": "Q", "sym": "A", "bp": 1.0, "ap": 1.1, "t": T0})
    if kind == "huge":
        return b'{"ev":"T","sym":"A","pad":"' + b"x" * 20_000 + b'"}'
    event = {
        "ev": "T",
        "sym": draw(SYMBOLS),
        "x": draw(st.integers(0, 12)),
        "i": draw(st.text("0123456789", min_size=1, max_size=3)),
        "p": draw(st.sampled_from([10.0, 10.25, 9.75, 11.5, 1e-9, 99_999_999.99])),
        "s": draw(st.sampled_from([1, 100, 0, 1 << 40])),
        "t": draw(TIMES),
        "q": draw(st.sampled_from([0, 1, 7, (1 << 63) - 1])),
    }
    conditions = draw(CONDITIONS)
    if conditions is not None:
        event["c"] = conditions
    if draw(st.booleans()):
        event["trfi"] = draw(st.integers(0, 3))
    if kind == "edge":  # an out-of-range field, as raw JSON text: refused by the schema, whatever the rest
        field = draw(st.sampled_from(["p", "s", "t", "q"]))
        event[field] = "EDGE"
        value = draw(st.sampled_from([b"-1", b"18446744073709551616", b"1e400", b"null", b'"1"']))
        return orjson.dumps(event).replace(b'"EDGE"', value)
    return orjson.dumps(event)


def _counts(book: flows.book.BarBook) -> dict[str, int]:
    return msgspec.structs.asdict(book.counts)  # each module has its own Counts class


def _run(book: flows.book.BarBook, stream: list[bytes | None], cuts: list[int]) -> list[tuple]:
    """Everything the book said, as plain values, batch by batch at `cuts`."""
    said: list[tuple] = []
    start = 0
    for end in [*cuts, len(stream)]:
        finals, rejects = book.apply(stream[start:end], range(start, end))
        said.append(("finals", finals))  # schemas.bars.Bar: one class for both books
        said.append(("rejects", [(r.index, r.kind, r.reason) for r in rejects]))
        said.append(("live", book.take_live()))
        said.append(("watermark", book.watermark, book.symbols, book.open_bars))
        start = end
    return said


@settings(max_examples=examples(60, deep=400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(events(), min_size=1, max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=5),
    lateness_s=st.sampled_from([60, 300, 900]),
    restart_at=st.integers(0, 120),
)
def test_compiled_and_python_books_say_the_same(stream, cuts, lateness_s, restart_at):
    lateness_ms = lateness_s * 1000
    cuts = sorted({c for c in cuts if 0 < c < len(stream)})
    compiled, python = _book(flows.book, lateness_ms), _book(PY_BOOK, lateness_ms)
    assert _run(compiled, stream, cuts) == _run(python, stream, cuts)
    assert _counts(compiled) == _counts(python)
    assert compiled.snapshot() == python.snapshot()

    # A restart, each from the other's snapshot, then more of the same input (duplicates, late trades).
    restart_at = min(restart_at, len(stream))
    again = stream[:restart_at]
    compiled_next, python_next = (
        _restore(flows.book, python.snapshot(), lateness_ms),
        _restore(PY_BOOK, compiled.snapshot(), lateness_ms),
    )
    assert _run(compiled_next, again, []) == _run(python_next, again, [])
    assert compiled_next.close_all() == python_next.close_all()
    assert compiled_next.snapshot() == python_next.snapshot()
    assert _counts(compiled_next) == _counts(python_next)


def test_a_build_older_than_its_sources_or_the_types_it_cimports_is_stale(tmp_path):
    (tmp_path / "bars.py").write_text("")
    (tmp_path / "bars.pxd").write_text("cdef class MinuteBar:\n    pass\n")
    (tmp_path / "book.py").write_text("")
    (tmp_path / "book.pxd").write_text("from flows.bars cimport MinuteBar\n")
    for name in ("bars", "book"):
        (tmp_path / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert flows.stale_builds(tmp_path) == []
    later = (tmp_path / "bars.pxd").stat().st_mtime + 10
    os.utime(tmp_path / "book.py", (later, later))
    assert flows.stale_builds(tmp_path) == ["book.cpython-311-x86_64-linux-gnu.so"]
    os.utime(tmp_path / "bars.pxd", (later + 1, later + 1))  # book cimports bars' types: both are stale
    assert flows.stale_builds(tmp_path) == ["bars.cpython-311-x86_64-linux-gnu.so", "book.cpython-311-x86_64-linux-gnu.so"]
    for so in tmp_path.glob("*.so"):
        os.utime(so, (later + 2, later + 2))
    assert flows.stale_builds(tmp_path) == []
