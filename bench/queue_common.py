"""Shared helpers of the queue benchmarks: a private Redis and a fast bulk loader.

Not a benchmark itself (no ``main``); imported by ``queue_redis.py`` and ``queue_http.py``.
"""

from __future__ import annotations

import statistics
import uuid
from pathlib import Path

from redis.asyncio import Redis

from urr_queue.keys import event_keys

#: Does, for many users at once, what the enter script does for one: take the next arrival
#: numbers, add the users to the queue, and set their heartbeat bits in the current bucket.
#: Only the set-up uses it; every measured call goes through the service's own scripts.
BULK_ENTER = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local hb_ms = tonumber(redis.call('HGET', KEYS[1], 'heartbeat_ms'))
local idle_ms = tonumber(redis.call('HGET', KEYS[1], 'idle_ms'))
local last = redis.call('INCRBY', KEYS[3], #ARGV - 1)
local first = last - (#ARGV - 1) + 1
local seen = ARGV[1] .. math.floor(now / hb_ms)
local pairs_ = {}
for i = 2, #ARGV do
  local number = first + i - 2
  pairs_[#pairs_ + 1] = number
  pairs_[#pairs_ + 1] = ARGV[i]
  redis.call('SETBIT', seen, number, 1)
  if #pairs_ >= 2000 then
    redis.call('ZADD', KEYS[2], unpack(pairs_))
    pairs_ = {}
  end
end
if #pairs_ > 0 then redis.call('ZADD', KEYS[2], unpack(pairs_)) end
redis.call('PEXPIRE', seen, idle_ms + 2 * hb_ms)
if first == 1 then redis.call('ZADD', KEYS[4], 1, now) end
return last
"""


async def bulk_enter(redis: Redis, event_id: str, members: list[bytes], batch: int = 5_000) -> None:
    keys = event_keys(event_id)
    script = redis.register_script(BULK_ENTER)
    for start in range(0, len(members), batch):
        chunk = members[start : start + batch]
        await script(
            keys=[keys.config, keys.queue, keys.seq, keys.marks], args=[keys.seen_prefix, *chunk]
        )


def uuid_users(count: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(count)]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def describe_ms(values_s: list[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return (
        f"n={len(ms)} mean={statistics.fmean(ms):.3f}ms p50={percentile(ms, 0.5):.3f}ms "
        f"p99={percentile(ms, 0.99):.3f}ms max={max(ms):.3f}ms"
    )


def workdir(name: str) -> Path:
    path = (Path(".urr") / "bench" / name).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
