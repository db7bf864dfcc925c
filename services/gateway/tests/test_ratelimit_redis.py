"""The limiter against a real Redis: exactness at the boundary, sliding, concurrency, cost,
several windows, the revoked-jti lookup and the deny cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from urr_gateway.ratelimit import (
    CategoryLimits,
    FailurePolicy,
    RateLimitSettings,
    SlidingWindowLimiter,
    WindowLimit,
    revoked_jti_key,
    window_key,
)

pytestmark = pytest.mark.integration


def limits(*windows: tuple[int, int], policy: FailurePolicy = "open") -> CategoryLimits:
    return CategoryLimits(
        windows=tuple(WindowLimit(limit=limit, window_s=w) for limit, w in windows),
        failure_policy=policy,
    )


def settings_with(**categories: CategoryLimits) -> RateLimitSettings:
    base = dict(RateLimitSettings().categories)
    base.update(categories)
    # A generous budget: these tests are about exactness, not about a loaded test machine.
    return RateLimitSettings(categories=base, budget_ms=2000)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, max_connections=256)
    try:
        yield client
    finally:
        await client.aclose()


async def evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_the_21st_auth_request_in_a_minute_is_refused(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, RateLimitSettings(budget_ms=2000))
    decisions = [await limiter.check("u:1", "auth") for _ in range(21)]
    assert [d.allowed for d in decisions] == [True] * 20 + [False]
    assert [d.remaining for d in decisions[:20]] == list(range(19, -1, -1))
    refused = decisions[20]
    assert refused.source == "redis"
    assert (refused.limit, refused.remaining, refused.policy) == (20, 0, "auth")
    # The first request leaves the window 60 s after it was made, minus the time the 20 took.
    assert 55_000 < refused.retry_after_ms <= 60_000
    assert refused.reset_ms == refused.retry_after_ms
    # A refusal records nothing.
    assert await redis.zcard(window_key("u:1", "auth", 60)) == 20
    ttl = await redis.pttl(window_key("u:1", "auth", 60))
    assert 55_000 < ttl <= 60_000


async def test_window_slides_rather_than_resets(redis: Redis) -> None:
    """4 per 2 s: two at t0 and two at t0+1 s fill it; at t0+2 s exactly the t0 pair has left."""
    limiter = SlidingWindowLimiter(redis, settings_with(queue=limits((4, 2))))
    before_first = time.monotonic()
    assert (await limiter.check("ip:10.0.0.1", "queue")).allowed
    after_first = time.monotonic()
    assert (await limiter.check("ip:10.0.0.1", "queue")).allowed
    await asyncio.sleep(1.0)
    assert all([(await limiter.check("ip:10.0.0.1", "queue")).allowed for _ in range(2)])
    before_refused = time.monotonic()
    refused = await limiter.check("ip:10.0.0.1", "queue")
    after_refused = time.monotonic()
    assert not refused.allowed
    # The wait points at the oldest entry: made between before_first and after_first, and
    # judged between before_refused and after_refused (bounds hold however slow the machine).
    longest = 2000 - (before_refused - after_first) * 1000
    shortest = 2000 - (after_refused - before_first) * 1000
    assert shortest - 5 <= refused.retry_after_ms <= longest + 5
    # Redis itself refuses too (a second limiter, so no deny cache is involved).
    second = SlidingWindowLimiter(redis, settings_with(queue=limits((4, 2))))
    assert not (await second.check("ip:10.0.0.1", "queue")).allowed
    # Once the wait is over, exactly the two oldest slots are free again: a fixed window
    # would have freed all four (or none).
    # (0.3 s past it: both t0 entries are gone, the t0+1 s pair stays for 0.7 s more.)
    await asyncio.sleep(refused.retry_after_ms / 1000 + 0.3)
    third = SlidingWindowLimiter(redis, settings_with(queue=limits((4, 2))))
    results = [(await third.check("ip:10.0.0.1", "queue")).allowed for _ in range(3)]
    assert results == [True, True, False]


async def test_a_retry_after_the_announced_wait_succeeds(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, settings_with(booking=limits((3, 1))))
    for _ in range(3):
        assert (await limiter.check("u:7", "booking")).allowed
    refused = await limiter.check("u:7", "booking")
    assert not refused.allowed
    await asyncio.sleep(refused.retry_after_ms / 1000)
    assert (await limiter.check("u:7", "booking")).allowed


async def test_200_concurrent_requests_let_exactly_the_limit_through(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, RateLimitSettings(budget_ms=5000, max_in_flight=256))
    decisions = await asyncio.gather(*(limiter.check("u:burst", "auth") for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 20
    assert all(d.source in {"redis", "deny_cache"} for d in decisions)
    assert await redis.zcard(window_key("u:burst", "auth", 60)) == 20
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(20))


async def test_two_gateway_processes_share_one_limit(redis: Redis) -> None:
    """Two limiters (two gateway workers) racing on one subject still admit exactly 10."""
    settings = RateLimitSettings(budget_ms=5000)
    first, second = SlidingWindowLimiter(redis, settings), SlidingWindowLimiter(redis, settings)
    decisions = await asyncio.gather(
        *(limiter.check("u:2", "booking") for _ in range(50) for limiter in (first, second))
    )
    assert sum(d.allowed for d in decisions) == 10


async def test_subjects_and_categories_are_counted_apart(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, settings_with(booking=limits((2, 60))))
    for subject in ("u:1", "u:2", "ip:10.0.0.1", "ip:10.0.0.2"):
        assert [(await limiter.check(subject, "booking")).allowed for _ in range(3)] == [
            True,
            True,
            False,
        ]
    assert (await limiter.check("u:1", "queue")).allowed


async def test_cost_takes_several_units_and_waits_for_enough_of_them(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, settings_with(general=limits((5, 60))))
    first = await limiter.check("k:a", "general", cost=3)
    assert (first.allowed, first.remaining) == (True, 2)
    assert await redis.zcard(window_key("k:a", "general", 60)) == 3
    refused = await limiter.check("k:a", "general", cost=3)
    assert not refused.allowed
    assert refused.remaining == 2
    assert 59_000 < refused.retry_after_ms <= 60_000
    # A cheaper request is not refused from the deny cache: it fits.
    fits = await limiter.check("k:a", "general", cost=2)
    assert (fits.allowed, fits.remaining) == (True, 0)
    with pytest.raises(ValueError, match="cost"):
        await limiter.check("k:a", "general", cost=6)
    with pytest.raises(ValueError, match="cost"):
        await limiter.check("k:a", "general", cost=0)


async def test_every_window_of_a_category_is_checked_in_one_call(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, settings_with(auth=limits((5, 60), (2, 1))))
    before = await evalsha_calls(redis)
    decisions = [await limiter.check("u:9", "auth") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[2].policy == "auth-1s"
    assert decisions[2].retry_after_ms <= 1000
    assert decisions[1].windows[0].remaining == 3  # the 60 s window counted both
    assert await evalsha_calls(redis) - before == 3  # one round trip per decision
    # Both burst entries were made before the refusal: a second later both have left.
    await asyncio.sleep(1.05)
    later = [(await limiter.check("u:9", "auth")).allowed for _ in range(4)]
    # The burst window frees up, but only 3 of the 60 s budget are left and the burst
    # window admits 2 of them now.
    assert later == [True, True, False, False]
    assert await redis.zcard(window_key("u:9", "auth", 60)) == 4
    assert await redis.zcard(window_key("u:9", "auth", 1)) == 2


async def test_revoked_jti_is_read_in_the_same_round_trip(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, RateLimitSettings(budget_ms=2000))
    key = revoked_jti_key("42", "jti-1")
    before = await evalsha_calls(redis)
    fresh = await limiter.check("u:42", "booking", revoked_key=key)
    assert fresh.revoked is False
    await redis.set(key, b"1", px=60_000)
    revoked = await limiter.check("u:42", "booking", revoked_key=key)
    assert revoked.revoked is True
    assert revoked.allowed
    assert (await limiter.check("u:42", "booking")).revoked is None
    assert await evalsha_calls(redis) - before == 3
    with pytest.raises(ValueError, match="hash tag"):
        await limiter.check("u:43", "booking", revoked_key=key)


async def test_deny_cache_answers_without_redis(redis: Redis) -> None:
    registry = CollectorRegistry()
    limiter = SlidingWindowLimiter(redis, settings_with(booking=limits((2, 60))), registry=registry)
    for _ in range(3):
        await limiter.check("u:5", "booking")
    before = await evalsha_calls(redis)
    cached = [await limiter.check("u:5", "booking") for _ in range(50)]
    assert await evalsha_calls(redis) == before
    assert all(not d.allowed and d.source == "deny_cache" for d in cached)
    assert all(0 < d.retry_after_ms <= 60_000 for d in cached)
    # Other subjects still go to Redis.
    assert (await limiter.check("u:6", "booking")).source == "redis"
    sample = registry.get_sample_value(
        "urr_ratelimit_decisions_total",
        {"category": "booking", "result": "blocked", "source": "deny_cache"},
    )
    assert sample == 50


async def test_deny_cache_expires_at_the_retry_time(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, settings_with(booking=limits((1, 1))))
    assert (await limiter.check("u:8", "booking")).allowed
    refused = await limiter.check("u:8", "booking")
    assert not refused.allowed
    await asyncio.sleep(refused.retry_after_ms / 1000)
    allowed = await limiter.check("u:8", "booking")
    assert (allowed.allowed, allowed.source) == (True, "redis")


async def test_unknown_category_is_a_value_error(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, RateLimitSettings())
    with pytest.raises(ValueError, match="nope"):
        await limiter.check("u:1", "nope")


async def test_key_memory_stays_small(redis: Redis) -> None:
    """The figure quoted in docs/performance/ratelimit.md: a full AUTH log (20 entries)."""
    limiter = SlidingWindowLimiter(redis, RateLimitSettings(budget_ms=2000))
    for _ in range(20):
        assert (await limiter.check("u:123456", "auth")).source == "redis"
    usage = await redis.memory_usage(window_key("u:123456", "auth", 60))
    assert usage is not None
    assert usage < 1024
    assert await redis.object("ENCODING", window_key("u:123456", "auth", 60)) == b"listpack"
