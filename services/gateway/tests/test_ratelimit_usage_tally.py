"""Usage counting: every decision (a tenant's and one without a tenant) tallied in memory by the
limiter, added to the hourly usage hashes in one pipeline per flush, kept when Redis is away,
written at shutdown."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from urr_common.ratelimit_policies import Policy
from urr_common.ratelimit_usage import (
    ALLOWED,
    ANONYMOUS_TENANT,
    BLOCKED,
    NEAR_LIMIT,
    SHADOW_BLOCKED,
    hour_start,
    usage_key,
)
from urr_gateway.filters.ratelimit import install_rate_limit
from urr_gateway.ratelimit import CategoryLimits, RateLimitSettings, SlidingWindowLimiter
from urr_gateway.ratelimit import WindowLimit as Window
from urr_gateway.ratelimit.tenant import CompiledPolicy
from urr_gateway.ratelimit.usage_tally import UsageTally
from urr_gateway.ratelimit.window import WindowOutcome, WindowSpec, decide


def policy(pid: str, **fields: Any) -> Policy:
    body = {"id": pid, "name": pid, "route": "/**", "windows": [{"limit": 10, "window_s": 60}]}
    return Policy.model_validate({**body, **fields})


def fresh_category() -> str:
    return "c" + uuid.uuid4().hex[:12]


def limiter_for(
    redis: Redis, category: str, limit: int, flush_s: float = 1.0
) -> SlidingWindowLimiter:
    categories = dict(RateLimitSettings().categories)
    categories[category] = CategoryLimits(windows=(Window(limit=limit, window_s=60),))
    settings = RateLimitSettings(categories=categories, budget_ms=2000, usage_flush_s=flush_s)
    return SlidingWindowLimiter(redis, settings)


async def anonymous_usage(redis: Redis, policy_id: str) -> dict[Any, Any]:
    seconds, _ = await redis.time()
    return await redis.hgetall(usage_key(ANONYMOUS_TENANT, policy_id, hour_start(seconds)))


# -- pure --------------------------------------------------------------------------------


def test_the_tally_counts_fields_like_a_tenant_decision_and_drains_to_zero() -> None:
    specs = (WindowSpec("p", 10, 60),)
    tally = UsageTally()
    for count in range(11):  # 10 a minute: hits 9 and 10 are near the limit, 11 is refused
        outcome = WindowOutcome(count, 1_000, 0 if count < 10 else 5_000)
        tally.record(decide("p", specs, (outcome,), 1, source="redis"), shadow_refusal=False)
    refused = decide("p", specs, (WindowOutcome(10, 1_000, 5_000),), 1, source="redis")
    tally.record(refused, shadow_refusal=True)
    drained = tally.drain()
    a = ANONYMOUS_TENANT
    assert drained == {
        (a, "p", ALLOWED): 11,
        (a, "p", BLOCKED): 1,
        (a, "p", NEAR_LIMIT): 2,
        (a, "p", SHADOW_BLOCKED): 1,
    }
    assert len(tally) == 0
    tally.restore(drained)
    tally.restore({(a, "p", BLOCKED): 2})
    assert tally.drain()[(a, "p", BLOCKED)] == 3


# -- on Redis ----------------------------------------------------------------------------


async def test_refusals_of_browser_traffic_reach_the_anonymous_usage_hash(redis: Redis) -> None:
    category = fresh_category()
    limiter = limiter_for(redis, category, limit=5)
    # Two subjects: the hash is per policy, not per subject; the deny cache's refusals count.
    decided = [await limiter.check(f"ip:{i % 2}", category) for i in range(16)]
    assert sum(d.allowed for d in decided) == 10
    assert await anonymous_usage(redis, category) == {}
    assert await limiter.flush_usage()
    usage = await anonymous_usage(redis, category)
    assert usage[ALLOWED.encode()] == b"10"
    assert usage[BLOCKED.encode()] == b"6"
    assert usage[NEAR_LIMIT.encode()] == b"2"  # the 5th of each subject (limit 5: > 4)
    key = usage_key(ANONYMOUS_TENANT, category, hour_start((await redis.time())[0]))
    assert await redis.ttl(key) > 3600
    # A second flush adds only what was decided since.
    await limiter.check("ip:9", category)
    assert await limiter.flush_usage()
    assert (await anonymous_usage(redis, category))[ALLOWED.encode()] == b"11"


async def test_a_shadow_policy_counts_its_would_be_refusals(redis: Redis) -> None:
    pid = fresh_category()
    limiter = limiter_for(redis, "general", limit=5)
    shadow = policy(pid, mode="shadow", windows=[{"limit": 2, "window_s": 60}])
    limiter.use_policies((CompiledPolicy.of(shadow),))
    assert all([(await limiter.check("ip:1", pid)).allowed for _ in range(4)])
    await limiter.flush_usage()
    usage = await anonymous_usage(redis, pid)
    assert (usage[ALLOWED.encode()], usage[SHADOW_BLOCKED.encode()]) == (b"4", b"2")
    assert BLOCKED.encode() not in usage


async def test_counts_survive_a_flush_that_fails(redis: Redis, redis_url: str) -> None:
    category = fresh_category()
    away = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        limiter = limiter_for(away, category, limit=5)
        for _ in range(3):
            await limiter.check("ip:1", category)  # Redis away: decided by the failure policy
        assert not await limiter.flush_usage()
        assert limiter.usage.drain() == {(ANONYMOUS_TENANT, category, ALLOWED): 3}
    finally:
        await away.aclose()


async def test_the_application_flushes_periodically_and_at_shutdown(redis: Redis) -> None:
    periodic, last = fresh_category(), fresh_category()
    limiter = limiter_for(redis, periodic, limit=100, flush_s=0.2)
    limiter.use_policies((CompiledPolicy.of(policy(last)),))
    app = web.Application()
    install_rate_limit(app, limiter)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        for _ in range(3):
            await limiter.check("ip:1", periodic)
        for _ in range(50):  # a loaded machine may run the flusher late
            if await anonymous_usage(redis, periodic):
                break
            await asyncio.sleep(0.1)
        assert (await anonymous_usage(redis, periodic))[ALLOWED.encode()] == b"3"
        await limiter.check("ip:1", last)
    finally:
        await runner.cleanup()
    # Counted after the last periodic flush: the shutdown flush wrote it.
    assert (await anonymous_usage(redis, last))[ALLOWED.encode()] == b"1"


async def test_tenant_decisions_are_tallied_with_shadow_and_near_limit(redis: Redis) -> None:
    limiter = limiter_for(redis, "general", limit=5)
    tenant = "t" + uuid.uuid4().hex[:8]
    enforced = CompiledPolicy.of(policy("p-enforce", windows=[{"limit": 10, "window_s": 60}]))
    shadow = CompiledPolicy.of(
        policy("p-shadow", mode="shadow", windows=[{"limit": 3, "window_s": 60}])
    )
    for _ in range(11):
        await limiter.check_tenant(tenant, enforced)
    for _ in range(5):
        assert (await limiter.check_tenant(tenant, shadow)).decision.allowed
    assert await limiter.flush_usage()
    seconds, _ = await redis.time()
    hour = hour_start(seconds)
    enforce_usage = await redis.hgetall(usage_key(tenant, "p-enforce", hour))
    assert enforce_usage == {b"allowed": b"10", b"blocked": b"1", b"near_limit": b"2"}
    shadow_usage = await redis.hgetall(usage_key(tenant, "p-shadow", hour))
    # 3 a minute: hit 3 is near the limit, hits 4 and 5 shadow refusals let through.
    assert shadow_usage == {b"allowed": b"5", b"shadow_blocked": b"2", b"near_limit": b"1"}


async def test_many_tenants_flush_in_one_pipeline(redis: Redis) -> None:
    limiter = limiter_for(redis, "general", limit=5)
    compiled = CompiledPolicy.of(policy("p-many"))
    tenants = [f"m{uuid.uuid4().hex[:8]}" for _ in range(200)]
    await asyncio.gather(*(limiter.check_tenant(t, compiled) for t in tenants))
    calls_before = await _calls(redis, "hincrby")
    assert await limiter.flush_usage()
    assert await _calls(redis, "hincrby") - calls_before == 200
    hour = hour_start((await redis.time())[0])
    for tenant in tenants[:5]:
        assert await redis.hget(usage_key(tenant, "p-many", hour), "allowed") == b"1"


async def _calls(redis: Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
