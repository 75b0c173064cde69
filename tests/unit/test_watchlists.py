"""Watchlists' pure parts: names, change notices, grants on lists, what a session follows, request bodies."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.streams import StreamReader

from connectors.gateway import protocol
from connectors.gateway.auth import Grant
from connectors.gateway.bodies import CONTINUE, BodyRefused, read_request
from connectors.gateway.watchlists import Following, ListRefused, granted_symbols, visible
from schemas.watchlists import MAX_WATCHLIST_SYMBOLS, decode_change, is_name

ALICE = Grant("alice", frozenset({"AAPL", "MSFT"}), frozenset({"live"}), None)
EVERYTHING = Grant("alice", frozenset({"*"}), frozenset({"live"}), None)


@pytest.mark.parametrize("name", ["a", "Tech_2026.v1-b", "9" * 64])
def test_good_names(name):
    assert is_name(name)


@pytest.mark.parametrize("name", ["", "-a", ".a", "a b", "a/b", "a:b", "a\n", "é", "x" * 65, "a*"])
def test_bad_names(name):
    assert not is_name(name)
    with pytest.raises(msgspec.ValidationError):
        decode_change(msgspec.json.encode({"user": "u", "name": name, "symbols": [], "revision": 1}))


@pytest.mark.parametrize(
    "notice",
    [
        {"user": "", "name": "a", "symbols": [], "revision": 1},
        {"user": "u", "name": "a", "symbols": [None], "revision": 1},
        {"user": "u", "name": "a", "symbols": ["x" * 21], "revision": 1},
        {"user": "u", "name": "a", "symbols": ["A"] * (MAX_WATCHLIST_SYMBOLS + 1), "revision": 1},
        {"user": "u", "name": "a", "symbols": [], "revision": 0},
        {"user": "u", "name": "a", "symbols": [], "revision": 2**63},
        {"user": "u", "name": "a", "symbols": []},
    ],
    ids=["blank-user", "null-symbol", "long-symbol", "too-many", "revision-0", "revision-huge", "no-revision"],
)
def test_hostile_notices_are_refused(notice):
    with pytest.raises(msgspec.ValidationError):
        decode_change(msgspec.json.encode(notice))


def test_a_notice_keeps_its_position_fields_aside():
    change = decode_change(b'{"offset":3,"epoch":"e","version":1,"user":"u","name":"a","symbols":["AAPL"],"revision":9}')
    assert (change.user, change.symbols, change.revision, change.deleted) == ("u", ["AAPL"], 9, False)


def test_granted_symbols_normalise_dedupe_and_refuse():
    assert granted_symbols([" msft", "AAPL", "MSFT"], ALICE) == ["MSFT", "AAPL"]
    with pytest.raises(ListRefused) as bad:
        granted_symbols(["AAPL", "A B"], ALICE)
    assert bad.value.status == 400 and "invalid symbol" in bad.value.detail
    with pytest.raises(ListRefused) as forbidden:
        granted_symbols(["AAPL", "NVDA", "IBM"], ALICE)
    assert forbidden.value.status == 403 and "NVDA, IBM" in forbidden.value.detail
    with pytest.raises(ListRefused):
        granted_symbols(["*"], EVERYTHING)  # a list holds symbols, not the wildcard
    assert visible(["NVDA", "AAPL"], ALICE) == (["AAPL"], 1) and visible(["NVDA"], EVERYTHING) == (["NVDA"], 0)


def test_following_takes_only_newer_revisions_of_followed_lists():
    f = Following()
    assert not f.apply("tech", 5, ["AAPL"])  # not followed
    f.follow("tech")
    assert f.apply("tech", 5, ["AAPL"]) and not f.apply("tech", 5, ["MSFT"]) and not f.apply("tech", 3, ["MSFT"])
    assert f.apply("tech", 6, ["MSFT"]) and f.wanted(EVERYTHING, cap=10) == (["MSFT"], [])
    f.follow("tech")  # following again keeps what is held
    assert f.lists["tech"].revision == 6


def test_following_wants_direct_then_lists_within_grant_and_cap():
    f = Following(direct={"MSFT"})
    f.follow("a")
    f.follow("b")
    f.apply("a", 1, ["NVDA", "AAPL", "MSFT"])
    f.apply("b", 2, ["AAPL", "IBM"])
    assert f.wanted(ALICE, cap=10) == (["MSFT", "AAPL"], ["NVDA", "IBM"])
    assert f.wanted(EVERYTHING, cap=3) == (["MSFT", "NVDA", "AAPL"], ["IBM"])


def test_subscribe_and_unsubscribe_take_a_watchlist_name():
    sub = protocol.decode_client(b'{"type":"subscribe","watchlist":"tech","kinds":["live"]}')
    assert isinstance(sub, protocol.Subscribe) and sub.watchlist == "tech" and sub.symbols == []
    unsub = protocol.decode_client(b'{"type":"unsubscribe","watchlist":"tech"}')
    assert isinstance(unsub, protocol.Unsubscribe) and unsub.watchlist == "tech"
    for bad in (b'{"type":"subscribe","watchlist":"a b"}', b'{"type":"subscribe","watchlist":null,"x":1}',
                b'{"type":"subscribe","watchlist":7}', b'{"type":"subscribe","watchlist":"' + b"x" * 65 + b'"}'):  # fmt: skip
        with pytest.raises(protocol.BadMessage):
            protocol.decode_client(bad)


def _read(raw: bytes, max_body: int = 100):
    reader = StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    writes: list[bytes] = []
    parser = read_request(reader, max_body, writes)
    try:
        next(parser)
    except StopIteration as done:
        return done.value, writes
    raise AssertionError("the parser wants more data")


def test_a_request_body_is_read_to_its_length():
    request, writes = _read(b"PUT /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
    assert (request.method, request.path, request.body, writes) == ("PUT", "/api/x", b"hello", [CONTINUE])
    request, writes = _read(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")
    assert request.body == b"" and writes == [] and request.headers["Upgrade"] == "websocket"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"Content-Length: 101\r\n", 413),
        (b"Content-Length: 99999999999999999999\r\n", 400),
        (b"Content-Length: -1\r\n", 400),
        (b"Content-Length: 1\r\nContent-Length: 2\r\n", 400),
        (b"Transfer-Encoding: chunked\r\n", 411),
    ],
    ids=["too-large", "huge-number", "negative", "conflicting", "chunked"],
)
def test_bodies_the_gateway_will_not_read(head, status):
    with pytest.raises(BodyRefused) as refused:
        _read(b"PUT /api/x HTTP/1.1\r\nHost: h\r\n" + head + b"\r\n")
    assert refused.value.status == status


def test_a_short_body_is_an_unreadable_request():
    with pytest.raises(EOFError):
        _read(b"PUT /api/x HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc")


def test_a_subscribe_that_read_a_list_while_a_newer_one_was_announced_reads_it_again():
    import asyncio

    from connectors.gateway.fanout import ChannelMap, Router
    from connectors.gateway.metrics import Stats
    from connectors.gateway.session import Clients
    from connectors.gateway.settings import GatewaySettings
    from connectors.postgres.watchlists import Watchlist
    from schemas.channels import Channels
    from schemas.watchlists import WatchlistChange

    stored = [Watchlist("tech", ["AAPL"], 5), Watchlist("tech", ["MSFT"], 6)]
    reads = []
    clients: Clients

    async def read(user: str, name: str) -> Watchlist | None:
        reads.append((user, name))
        if len(reads) == 1:  # the notice of revision 6 goes by while the first read is under way
            clients.on_watchlist(WatchlistChange(user="alice", name="tech", symbols=["MSFT"], revision=6))
        return stored[min(len(reads), 2) - 1]

    settings = GatewaySettings(dev_mode=True, database_url="postgresql://x@127.0.0.1/x", redis_url="redis://127.0.0.1:1/0")
    clients = Clients(settings, ChannelMap(Channels("t")), Router(), None, Stats(), set(), read_watchlist=read)  # type: ignore[arg-type]
    listed = asyncio.run(clients.current_list("alice", "tech"))
    assert (listed.revision, listed.symbols, len(reads)) == (6, ("MSFT",), 2)
    assert asyncio.run(clients.current_list("alice", "tech")).revision == 6 and len(reads) == 3  # no newer notice: one read


@settings(max_examples=100, deadline=None)
@given(st.permutations(range(1, 9)), st.lists(st.sampled_from(["AAPL", "MSFT", "NVDA", "IBM"]), max_size=4))
def test_notices_in_any_order_leave_the_newest(order, direct):
    """Notices reach gateways in any order (several REST processes, a resync): the newest revision wins."""
    lists = {r: [["AAPL"], ["MSFT", "IBM"], [], ["NVDA"]][r % 4] for r in range(1, 9)}
    f = Following(direct=set(direct))
    f.follow("tech")
    for revision in order:
        f.apply("tech", revision, lists[revision])
    wanted, left_out = f.wanted(EVERYTHING, cap=100)
    assert f.lists["tech"].revision == 8 and left_out == []
    assert wanted == sorted(set(direct)) + [s for s in lists[8] if s not in direct]
