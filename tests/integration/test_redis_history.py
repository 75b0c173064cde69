"""Channel history on a real Redis: positions are contiguous, catch-up is complete or says reset."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from connectors.redis.history import History, HistoryLimits
from connectors.redis.publish import Publisher
from flows.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def client(services: None) -> redis.Redis:
    return redis.Redis.from_url(Settings().redis_url)


def channel() -> str:
    return f"test{uuid.uuid4().hex[:8]}.history"


def payloads(n: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"n": i}).encode() for i in range(start, start + n)]


def test_messages_carry_contiguous_offsets_and_one_epoch(client):
    history, ch = History(client), channel()
    listener = client.pubsub()
    listener.subscribe(ch)
    listener.get_message(timeout=2)
    history.publish([(ch, p) for p in payloads(3)])
    history.publish([(ch, p) for p in payloads(2, 3)])
    got = []
    while len(got) < 5:
        message = listener.get_message(timeout=2)
        assert message is not None, got
        if message["type"] == "message":
            got.append(json.loads(message["data"]))
    assert [m["offset"] for m in got] == [1, 2, 3, 4, 5]
    assert [m["n"] for m in got] == [0, 1, 2, 3, 4]
    assert len({m["epoch"] for m in got}) == 1
    assert history.position(ch) == (got[0]["epoch"], 5)


def test_catch_up_returns_exactly_what_was_missed(client):
    history, ch = History(client), channel()
    history.publish([(ch, p) for p in payloads(10)])
    epoch, top = history.position(ch)
    missed = history.since(ch, epoch, 6)
    assert missed.complete and missed.offset == top == 10
    assert [json.loads(m)["n"] for m in missed.messages] == [6, 7, 8, 9]
    assert [json.loads(m)["offset"] for m in missed.messages] == [7, 8, 9, 10]
    up_to_date = history.since(ch, epoch, 10)
    assert up_to_date.complete and up_to_date.messages == []


def test_catch_up_beyond_the_kept_history_says_reset(client):
    history, ch = History(client, HistoryLimits(max_len=5, max_age_s=0)), channel()
    for start in range(0, 2000, 100):  # ~ trimming keeps whole nodes: push far past max_len
        history.publish([(ch, p) for p in payloads(100, start)])
    epoch, top = history.position(ch)
    kept = client.xlen(f"history:{ch}")
    assert kept < top
    gone = history.since(ch, epoch, 1)
    assert not gone.complete and gone.messages == [] and gone.offset == top
    recent = history.since(ch, epoch, top - 3)
    assert recent.complete and len(recent.messages) == 3


def test_lost_history_starts_a_new_epoch_and_old_positions_reset(client):
    history, ch = History(client), channel()
    history.publish([(ch, p) for p in payloads(3)])
    old_epoch, _ = history.position(ch)
    client.delete(f"history:{ch}", f"history-meta:{ch}")  # what a Redis restart without persistence does
    history.publish([(ch, p) for p in payloads(4)])
    new_epoch, top = history.position(ch)
    assert new_epoch != old_epoch and top == 4
    stale = history.since(ch, old_epoch, 2)
    assert not stale.complete and stale.epoch == new_epoch
    assert history.since(ch, new_epoch, 0).complete


def test_publisher_rejects_a_payload_that_is_not_a_json_object(services):
    publisher = Publisher(Settings().redis_url)
    with pytest.raises(ValueError, match="not a one-line JSON object"):
        publisher.publish([(channel(), b"[1, 2]")])
    publisher.close()


def test_a_channel_silent_longer_than_the_age_cap_loses_its_history_but_keeps_its_position(client):
    history, ch = History(client, HistoryLimits(max_len=1000, max_age_s=0.2)), channel()
    history.publish([(ch, p) for p in payloads(3)])
    epoch, _ = history.position(ch)
    deadline = time.monotonic() + 10
    while client.exists(f"history:{ch}") and time.monotonic() < deadline:  # expires after age + refresh (1 s)
        time.sleep(0.1)
    assert not client.exists(f"history:{ch}")
    missed = history.since(ch, epoch, 1)
    assert not missed.complete, "the messages are gone: the consumer must reload"
    history.publish([(ch, p) for p in payloads(1)])
    assert history.position(ch) == (epoch, 4), "offsets continue: consumers that missed nothing need no reset"
    assert history.since(ch, epoch, 3).complete
