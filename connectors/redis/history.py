"""Per-channel history on Redis, so a subscriber that reconnects can catch up on what it missed.

Publishing a message on channel C, in one server-side script (atomic, one round trip a batch):

- the hash `history-meta:C` holds the channel's last `offset`; the message gets the next one,
  so offsets are contiguous per channel (1, 2, 3, ...) and a gap is detectable by arithmetic;
- the first message of a history (or after the history was lost: Redis restarted, keys
  expired) starts a new `epoch`, a string; a consumer holding another epoch must reset;
- the message, with `"offset"` and `"epoch"` spliced in as its first fields, is appended to
  the stream `history:C` (capped by length and by age, whichever keeps less) and
  `PUBLISH`ed on C.

Catching up from (epoch, offset) returns the messages after `offset` and says whether that is
all of them (`complete`) or the consumer must reload its state (`reset`). Streams are trimmed
with `~` (whole nodes), so a little more than the caps may stay.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

log = logging.getLogger(__name__)

STREAM_PREFIX = "history:"
META_PREFIX = "history-meta:"
META_TTL_MS = 7 * 24 * 3600 * 1000  # an idle channel keeps its epoch and offset this long


@dataclass(frozen=True)
class HistoryLimits:
    """How much history every channel keeps: about the last `max_len` messages, none much older than `max_age_s`."""

    max_len: int = 1000
    max_age_s: float = 120.0


# ARGV: max_len, max_age_ms, meta_ttl_ms, then one blob "channel\npayload\nchannel\npayload...": packing
# thousands of separate arguments costs redis-py ~3 us each in Python, one blob costs nothing.
_PUBLISH = r"""#!lua
-- The shebang makes Redis (7+) judge OOM before the script runs, never half-way: a refused
-- batch has published nothing, so retrying it publishes each message once.
local max_len = ARGV[1]
local max_age_ms = tonumber(ARGV[2])
local meta_ttl_ms = tonumber(ARGV[3])
local blob = ARGV[4]
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
-- Age trimming and expiry run for a channel at most every `refresh_ms`: per-symbol channels get
-- about one message a batch, and doing it every time would double their cost. The stream's TTL
-- covers the gap, so a channel that published within max_age still has its history.
local refresh_ms = max_age_ms > 0 and math.max(1000, math.floor(max_age_ms / 4)) or 60000
local epochs, offsets, trimmed, failed = {}, {}, {}, {}
local count = 0
local pos, size = 1, #blob
while pos <= size do
  local split = string.find(blob, '\n', pos, true)
  local channel = string.sub(blob, pos, split - 1)
  local stop = string.find(blob, '\n', split + 1, true) or (size + 1)
  local payload = string.sub(blob, split + 1, stop - 1)
  pos = stop + 1
  local stream = 'history:' .. channel
  local epoch = epochs[channel]
  if not epoch then  -- first message of this channel in the batch: its position so far
    local meta = redis.pcall('HMGET', 'history-meta:' .. channel, 'epoch', 'offset', 'trimmed')
    if meta.err then  -- our key holds something else: start its history over
      redis.call('DEL', 'history-meta:' .. channel)
      meta = {}
    end
    epoch, offsets[channel], trimmed[channel] = meta[1], tonumber(meta[2]) or 0, tonumber(meta[3]) or 0
    if not epoch then  -- no history (new channel, or lost): a new epoch from offset 1
      epoch, offsets[channel], trimmed[channel] = now[1] .. string.format('%06d', tonumber(now[2])), 0, 0
      redis.call('DEL', stream)
    end
    epochs[channel] = epoch
  end
  local offset = offsets[channel] + 1
  offsets[channel] = offset
  local message = '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '",' .. string.sub(payload, 2)
  -- A history that cannot be written (e.g. the key was replaced by another type) must not stop
  -- the live message: publish anyway, and report the channel.
  local added = redis.pcall('XADD', stream, 'MAXLEN', '~', max_len, '*', 'o', offset, 'm', message)
  if type(added) == 'table' and added.err then failed[#failed + 1] = channel end
  redis.call('PUBLISH', channel, message)
  count = count + 1
end
for channel, epoch in pairs(epochs) do
  local stream, meta = 'history:' .. channel, 'history-meta:' .. channel
  if now_ms - trimmed[channel] >= refresh_ms then
    redis.call('HSET', meta, 'epoch', epoch, 'offset', offsets[channel], 'trimmed', now_ms)
    redis.call('PEXPIRE', meta, meta_ttl_ms)
    if max_age_ms > 0 then
      redis.pcall('XTRIM', stream, 'MINID', '~', now_ms - max_age_ms)
      redis.call('PEXPIRE', stream, max_age_ms + refresh_ms)
    end
  else
    redis.call('HSET', meta, 'epoch', epoch, 'offset', offsets[channel])
  end
end
return {count, failed}
"""

_CATCH_UP = """#!lua flags=no-writes
local current = redis.call('HMGET', 'history-meta:' .. ARGV[1], 'epoch', 'offset')
local epoch, top = current[1], tonumber(current[2])
if not epoch then return {'', 0, {}} end
local since = tonumber(ARGV[3])
if epoch ~= ARGV[2] or since >= top then return {epoch, top, {}} end
return {epoch, top, redis.call('XREVRANGE', 'history:' .. ARGV[1], '+', '-', 'COUNT', top - since)}
"""


@dataclass(frozen=True)
class Catchup:
    """What a consumer at (epoch, offset) missed on one channel.

    `complete`: `messages` are every message after its offset, oldest first. Otherwise the
    consumer must reset: reload state, then continue from (`epoch`, `offset`).
    """

    epoch: str
    offset: int  # the channel's newest offset
    complete: bool
    messages: list[bytes] = field(default_factory=list)


class History:
    """Publishes with history and answers catch-up requests, on one Redis client."""

    def __init__(self, client: redis.Redis, limits: HistoryLimits | None = None) -> None:
        self.limits = limits or HistoryLimits()
        self._client = client
        self._publish = client.register_script(_PUBLISH)
        self._catch_up = client.register_script(_CATCH_UP)

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Append each (channel, JSON object) to its channel's history and publish it, in order."""
        parts: list[bytes] = []
        for channel, payload in messages:
            if payload[:1] != b"{" or b"\n" in payload or "\n" in channel:
                raise ValueError(f"payload for {channel} is not a one-line JSON object: {payload[:40]!r}")
            parts += (channel.encode(), payload)
        if parts:
            _, failed = self._publish(
                args=[self.limits.max_len, int(self.limits.max_age_s * 1000), META_TTL_MS, b"\n".join(parts)]
            )
            if failed:
                log.error("the history of %d channel(s) could not be written (published live only): %s",
                          len(failed), b", ".join(failed[:5]).decode(errors="replace"))  # fmt: skip

    def position(self, channel: str) -> tuple[str, int]:
        """The channel's current (epoch, offset); ("", 0) before its first message."""
        epoch, offset = self._client.hmget(META_PREFIX + channel, "epoch", "offset")
        return (epoch.decode() if isinstance(epoch, bytes) else (epoch or ""), int(offset) if offset else 0)

    def since(self, channel: str, epoch: str, offset: int) -> Catchup:
        """Messages on `channel` after `offset` of `epoch`."""
        current, top, entries = self._catch_up(args=[channel, epoch, offset])
        current = current.decode() if isinstance(current, bytes) else current
        if current != epoch or offset > top:
            return Catchup(current, top, complete=False)
        messages = [fields[b"m"] for _id, fields in (_pairs(e) for e in reversed(entries))]
        oldest = int(_pairs(entries[-1])[1][b"o"]) if entries else top + 1
        complete = len(messages) == top - offset and (not entries or oldest == offset + 1)
        return Catchup(current, top, complete=complete, messages=messages if complete else [])


def _pairs(entry: list) -> tuple[bytes, dict[bytes, bytes]]:
    """A raw XRANGE entry [id, [k1, v1, k2, v2]] as (id, {k: v})."""
    entry_id, flat = entry
    return entry_id, dict(zip(flat[::2], flat[1::2], strict=True))
