"""Tenant decisions on real Redis (and PostgreSQL where the admin store publishes): the decision
script (quota exactness across a month boundary, shadow, near-limit, usage), the published
configuration reaching every worker and the check API within 1 s, API keys and revoked
access tokens, priority overlap, and a fuzzed check-API body.

The fixed clock: ``tenant_decision.lua`` takes a time in microseconds in ARGV[8] and uses
Redis TIME when it is empty. Only the stores' ``evaluate_tenant(..., now_us=...)`` can pass
one; the limiter, the gateway filter and the check API never do (they have no parameter for
it), so the tests below drive the stores directly to put 200 concurrent decisions on both
sides of a month boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from urr_common.ratelimit_policies import (
    POLICY_SET_KEY,
    Policy,
    PolicySet,
    api_key_digest,
    default_policies,
    governing,
)
from urr_common.ratelimit_usage import HOUR_S, hour_start, quota_key
from urr_common.resp import encode_command
from urr_gateway.checkapi import CHECK_PATH, create_check_app, parse_check_body
from urr_gateway.ratelimit import RateLimitSettings, SlidingWindowLimiter
from urr_gateway.ratelimit.pipeline import PipelinedSlidingLog
from urr_gateway.ratelimit.policyset import PolicyWatcher
from urr_gateway.ratelimit.store import RedisSlidingLog, tenant_args, tenant_keys
from urr_gateway.ratelimit.tenant import (
    GOVERNING_CACHE_MAX,
    GOVERNING_PATH_MAX,
    CompiledPolicies,
    CompiledPolicy,
    QuotaMonth,
    decide_tenant,
    parse_tenant_reply,
    tenant_decision_of_reply,
)
from urr_ratelimit_admin import store
from urr_ratelimit_admin.publisher import PolicyPublisher
from urr_ratelimit_admin.settings import SnapshotSettings
from urr_ratelimit_admin.snapshots import SnapshotMetrics, SnapshotWriter

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
US = 1_000_000
LIMITS = RateLimitSettings(budget_ms=2000, congestion_cap_ms=5000)
ACTOR = store.Actor("op-1", "req-1")
#: The last half second of December 2026 and the first of January 2027, UTC.
DEC_END_US = int(datetime(2026, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC).timestamp() * US)
JAN_START_US = int(datetime(2027, 1, 1, 0, 0, 0, 100_000, tzinfo=UTC).timestamp() * US)


def policy(pid: str, **fields: Any) -> Policy:
    body = {"id": pid, "name": pid, "route": "/**", "windows": [{"limit": 10, "window_s": 60}]}
    return Policy.model_validate({**body, **fields})


# -- pure --------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    tenant=st.sampled_from([None, "acme", "beta"]),
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    path=st.sampled_from(
        [
            "/",
            "/api/v1/queue/e1",
            "/api/v1/queue/e1/status",
            "/api/v1/queue",
            "/api/v1/queuex/e1",
            "/api/v1/auth/login",
            "/x/y",
            "/x/",
        ]
    ),
    priorities=st.lists(st.integers(-2, 2), min_size=4, max_size=4),
)
def test_compiled_lookup_governs_like_the_documented_order(
    tenant: str | None, method: str, path: str, priorities: list[int]
) -> None:
    extra = [
        policy("t-queue", tenant="acme", route="/api/v1/queue/**", priority=priorities[0] + 10),
        policy("t-status", tenant="acme", route="/api/v1/queue/*/status", priority=priorities[1]),
        policy("b-all", tenant="beta", route="/**", methods=["POST"], priority=priorities[2]),
        policy("d-queue", route="/api/v1/queue/*", priority=priorities[3] + 10),
        policy("d-x", route="/x/", priority=priorities[3] + 10),
    ]
    policies = (*default_policies(), *extra)
    compiled = CompiledPolicies(PolicySet(version=1, policies=policies))
    expected = governing(policies, tenant, method, path)
    found = compiled.governing(tenant, method, path)
    assert (found.id if found else None) == (expected.id if expected else None)
    # Asked again (now remembered), and for the other tenants: the same answers.
    assert compiled.governing(tenant, method, path) is found
    for other in (None, "acme", "beta", "gamma"):
        again = compiled.governing(other, method, path)
        reference = governing(policies, other, method, path)
        assert (again.id if again else None) == (reference.id if reference else None)


def test_remembered_governing_lookups_are_bounded() -> None:
    extra = (policy("t-queue", tenant="acme", route="/api/v1/queue/**", priority=10),)
    compiled = CompiledPolicies(PolicySet(version=1, policies=(*default_policies(), *extra)))

    def governing_id(tenant: str, path: str) -> str | None:
        found = compiled.governing(tenant, "GET", path)
        return found.id if found else None

    for i in range(GOVERNING_CACHE_MAX + 10):
        assert governing_id("acme", f"/api/v1/queue/e{i}") == "t-queue"
        assert governing_id("zeta", f"/api/v1/queue/e{i}") == "queue"
    assert len(compiled._governing) <= GOVERNING_CACHE_MAX
    long_path = "/api/v1/queue/" + "x" * GOVERNING_PATH_MAX
    assert governing_id("acme", long_path) == "t-queue"
    assert ("acme", "GET", long_path) not in compiled._governing


def test_api_keys_are_known_by_digest_only() -> None:
    compiled = CompiledPolicies(
        PolicySet(version=3, policies=(), api_keys={api_key_digest("urr_k_secret"): "acme"})
    )
    assert compiled.tenant_of_key("urr_k_secret") == "acme"
    assert compiled.tenant_of_key("urr_k_other") is None
    assert compiled.tenant_of_key("") is None


def test_the_pre_encoded_tenant_command_is_the_plain_encoding(redis: Redis) -> None:
    log = PipelinedSlidingLog(redis)
    compiled = CompiledPolicy.of(
        policy("two", windows=[{"limit": 5, "window_s": 1}, {"limit": 50, "window_s": 60}])
    )
    december, january = QuotaMonth.of(DEC_END_US / US), QuotaMonth.of(JAN_START_US / US)
    cases = (
        ("acme", 1, 0, december),
        ("beta", 3, 1000, december),
        ("acme", 2, 7, january),
        # A tenant's whole command is kept for a cost of 1: asked again, with another quota,
        # another cost, then 1 again, and in another month.
        ("acme", 1, 7, january),
        ("acme", 1, 7, january),
        ("acme", 1, 8, january),
        ("acme", 3, 8, january),
        ("acme", 1, 8, january),
        ("acme", 1, 8, december),
    )
    for tenant, cost, quota, month in cases:
        plain = encode_command(
            b"EVALSHA",
            log._tenant_sha.encode(),
            b"2",
            *tenant_keys(compiled, tenant),
            *tenant_args(compiled, tenant, cost, quota, None, month),
        )
        assert log._tenant_command(compiled, tenant, cost, quota, month) == plain


@settings(max_examples=300, deadline=None)
@given(
    windows=st.sampled_from([[(10, 60)], [(1, 1)], [(5, 1), (50, 60)]]),
    mode=st.sampled_from(["enforce", "shadow"]),
    head=st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1), st.integers(-1, 99)),
    quota_reset_us=st.integers(0, 40 * 86400 * US),
    near=st.integers(0, 1),
    cost=st.integers(1, 3),
    counts=st.lists(
        st.tuples(st.integers(0, 60), st.integers(0, 60 * US), st.integers(0, 60 * US)),
        min_size=2,
        max_size=2,
    ),
)
def test_the_reply_fast_path_decides_like_the_general_one(
    windows: list[tuple[int, int]],
    mode: str,
    head: tuple[int, int, int, int],
    quota_reset_us: int,
    near: int,
    cost: int,
    counts: list[tuple[int, int, int]],
) -> None:
    """``tenant_decision_of_reply`` (the limiter's) answers what parsing the reply and
    ``decide_tenant`` answer, for every reply shape the script can give."""
    compiled = CompiledPolicy.of(
        policy(
            "p",
            mode=mode,
            windows=[{"limit": limit, "window_s": window_s} for limit, window_s in windows],
        )
    )
    reply = [*head, quota_reset_us, near]
    for count, reset_us, retry_us in counts[: len(windows)]:
        reply += [count, reset_us, 0 if head[1] else retry_us]
    general = decide_tenant(compiled, "acme", parse_tenant_reply(reply, len(windows)), cost)
    assert tenant_decision_of_reply(compiled, "acme", reply, cost) == general


def test_quota_months_are_utc_calendar_months() -> None:
    december = QuotaMonth.of(DEC_END_US / US)
    assert december.label == "2026-12"
    assert december.end_s == JAN_START_US // US
    assert december.holds(DEC_END_US / US)
    assert not december.holds(JAN_START_US / US)
    january = QuotaMonth.of(JAN_START_US / US)
    assert (january.label, january.start_s) == ("2027-01", december.end_s)
    february = QuotaMonth.of(datetime(2028, 2, 29, 23, 59, tzinfo=UTC).timestamp())
    assert february.end_s - february.start_s == 29 * 86400


# -- the decision script, on a fixed clock ------------------------------------------------


async def test_quota_is_exact_under_200_concurrent_decisions_across_a_month_boundary(
    redis: Redis,
) -> None:
    log = PipelinedSlidingLog(redis)
    compiled = CompiledPolicy.of(policy("bulk", windows=[{"limit": 100_000, "window_s": 60}]))
    try:
        # 200 at once, interleaved on both sides of midnight, against a quota of 70 a month.
        times = [DEC_END_US if i % 2 else JAN_START_US for i in range(200)]
        results = await asyncio.gather(
            *(log.evaluate_tenant(compiled, "acme", 1, 70, now_us=t) for t in times)
        )
    finally:
        await log.aclose()
    for month_start in (DEC_END_US, JAN_START_US):
        mine = [r for r, t in zip(results, times, strict=True) if t == month_start]
        assert sum(r.allowed for r in mine) == 70
        assert sum(r.quota_refused for r in mine) == 30
        assert sorted(r.quota_remaining or 0 for r in mine if r.allowed) == list(range(70))
    assert await redis.get(quota_key("acme", "2026-12")) == b"70"
    assert await redis.get(quota_key("acme", "2027-01")) == b"70"
    # The counter lives until the month's end plus the usage retention, not forever.
    ttl = await redis.ttl(quota_key("acme", "2027-01"))
    assert 31 * 86400 < ttl <= 31 * 86400 + 8 * 86400


@pytest.mark.parametrize("caller_month", ["2026-11", "2026-12", "2027-01"])
async def test_redis_clock_decides_the_quota_month_whatever_the_caller_names(
    redis: Redis, caller_month: str
) -> None:
    """A caller's month is only a hint: a skewed caller (either side) still counts in the
    month of Redis's time, and the reset is that month's end."""
    year, month = (int(part) for part in caller_month.split("-"))
    hint = QuotaMonth.of(datetime(year, month, 15, tzinfo=UTC).timestamp())
    tenant = "skew-" + uuid.uuid4().hex[:8]
    compiled = CompiledPolicy.of(policy("p"))
    script = RedisSlidingLog(redis)._tenant_script
    reply = await script(
        keys=tenant_keys(compiled, tenant),
        args=tenant_args(compiled, tenant, 1, 5, DEC_END_US, hint),
    )
    result = parse_tenant_reply(reply, 1)
    assert result.quota_remaining == 4
    assert result.quota_reset_us == JAN_START_US - DEC_END_US - 100_000
    assert await redis.get(quota_key(tenant, "2026-12")) == b"1"
    if caller_month != "2026-12":
        assert await redis.get(quota_key(tenant, caller_month)) is None


async def test_tenant_decisions_after_a_script_flush_reload_and_count_once(redis: Redis) -> None:
    """The limiter awaits a tenant decision's reply itself (no ``tenant_reply`` coroutine):
    a ``NOSCRIPT`` must still load the tenant script and run each decision exactly once."""
    compiled = CompiledPolicy.of(policy("flush", windows=[{"limit": 1000, "window_s": 60}]))
    tenants = [f"flush-{uuid.uuid4().hex[:8]}-{n}" for n in range(30)]
    limiter = SlidingWindowLimiter(redis, LIMITS)
    try:
        assert await limiter.prepare()
        first = await limiter.check_tenant(tenants[0], compiled, quota=100)
        assert not first.decision.degraded
        await redis.script_flush()
        results = await asyncio.gather(
            *(limiter.check_tenant(tenant, compiled, quota=100) for tenant in tenants)
        )
    finally:
        await limiter.aclose()
    assert all(r.decision.allowed and not r.decision.degraded for r in results)
    assert results[0].quota_remaining == 98  # the first tenant's second request
    assert all(r.quota_remaining == 99 for r in results[1:])
    month = datetime.fromtimestamp((await redis.time())[0], UTC).strftime("%Y-%m")
    counted = [await redis.get(quota_key(tenant, month)) for tenant in tenants]
    assert counted == [b"2"] + [b"1"] * 29


async def test_a_quota_refusal_says_when_the_month_renews(redis: Redis) -> None:
    log = RedisSlidingLog(redis)
    compiled = CompiledPolicy.of(policy("p"))
    await log.evaluate_tenant(compiled, "acme", 1, 1, now_us=DEC_END_US)
    refused = await log.evaluate_tenant(compiled, "acme", 1, 1, now_us=DEC_END_US)
    decided = decide_tenant(compiled, "acme", refused, 1)
    assert (decided.decision.allowed, decided.quota_exceeded) == (False, True)
    assert decided.quota_remaining == 0
    assert decided.decision.retry_after_ms == 500  # half a second to January
    # Nothing was spent by the refusal: the window still holds one request.
    assert decided.decision.remaining == 9


async def test_shadow_policies_count_would_be_refusals_and_never_refuse(redis: Redis) -> None:
    log = RedisSlidingLog(redis)
    compiled = CompiledPolicy.of(
        policy("trial", mode="shadow", windows=[{"limit": 3, "window_s": 60}])
    )
    decided = [
        decide_tenant(
            compiled, "acme", await log.evaluate_tenant(compiled, "acme", 1, 0, DEC_END_US), 1
        )
        for _ in range(5)
    ]
    assert all(d.decision.allowed for d in decided)
    assert [d.shadow for d in decided] == [False, False, False, True, True]
    # Recorded (5 in a window of 3), shown as nothing left rather than a negative count.
    assert [d.decision.remaining for d in decided] == [2, 1, 0, 0, 0]
    # Hit 3 reached the limit (near it); hits 4 and 5 are the shadow refusals.
    assert [d.near_limit for d in decided] == [False, False, True, False, False]


async def test_near_limit_marks_hits_above_80_percent_that_still_fit(redis: Redis) -> None:
    log = RedisSlidingLog(redis)
    compiled = CompiledPolicy.of(policy("p"))  # 10 a minute: hits 9 and 10 are near
    results = [await log.evaluate_tenant(compiled, "acme", 1, 0, DEC_END_US) for _ in range(11)]
    assert [r.near_limit for r in results] == [False] * 8 + [True, True, False]
    assert [r.allowed for r in results] == [True] * 10 + [False]


async def test_the_snapshot_writer_reads_what_tenant_decisions_counted(
    admin: Admin, redis: Redis
) -> None:
    """The usage-key contract end to end: decisions through the limiter, its usage flush, one
    snapshot round after the hour closed."""
    tenant = "snap-" + uuid.uuid4().hex[:8]
    seconds, _ = await redis.time()
    if seconds % HOUR_S > HOUR_S - 15:
        # Too close to the end of the hour for the decisions and the flush to share it: start
        # in the next one (on Redis's clock, which names the usage hour).
        await asyncio.sleep(HOUR_S - seconds % HOUR_S + 1)
        seconds, _ = await redis.time()
    hour = hour_start(seconds)
    async with admin.pool.acquire() as conn:
        await store.create_tenant(conn, ACTOR, tenant, "Snap")
        await store.put_quota(conn, ACTOR, tenant, 1000, 80)
        await conn.execute(
            "INSERT INTO rl_usage_watermark (next_hour) VALUES ($1)",
            datetime.fromtimestamp(hour, UTC),
        )
    general = next(p for p in default_policies() if p.id == "general")
    compiled = CompiledPolicy.of(general.model_copy(update={"mode": "shadow"}))
    limiter = SlidingWindowLimiter(redis, LIMITS)
    try:
        for _ in range(3):
            await limiter.check_tenant(tenant, compiled, cost=40, quota=1000)
        assert await limiter.flush_usage()
    finally:
        await limiter.aclose()
    assert hour_start((await redis.time())[0]) == hour, "the decisions took 15 s or more"
    settings = SnapshotSettings(close_grace_s=60, first_start_backfill_h=0)
    writer = SnapshotWriter(
        admin.pool, redis, settings, SnapshotMetrics.register(CollectorRegistry())
    )
    await writer.run_once(hour + HOUR_S + 120)
    async with admin.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT allowed, blocked, shadow_blocked, quota_used FROM rl_usage_snapshots"
            " WHERE tenant_id = $1 AND policy_id = 'general'",
            tenant,
        )
    # 100 a minute: the third request of 40 is a shadow refusal, let through and counted.
    assert row is not None
    assert tuple(row) == (3, 0, 1, 120)


# -- the check API on a published set (Redis only) ----------------------------------------


async def publish(redis: Redis, published: PolicySet) -> None:
    assert await PolicyPublisher(redis).publish(published)


@pytest.fixture
async def check(redis: Redis, aiohttp_client: ClientFactory) -> AsyncIterator[Client]:
    await publish(
        redis,
        PolicySet(
            version=1,
            policies=(
                *default_policies(),
                policy("acme-queue", tenant="acme", route="/api/v1/queue/**", priority=20),
                # Lower priority than the default queue policy (10): never governs there.
                policy("acme-low", tenant="acme", route="/api/v1/queue/**", priority=5),
                policy("acme-shadow", tenant="acme", route="/api/v1/shadow/**", mode="shadow"),
            ),
            quotas={"acme": 1000},
            api_keys={api_key_digest("urr_good_key"): "acme"},
        ),
    )
    watcher = PolicyWatcher(redis)
    await watcher.start()
    limiter = SlidingWindowLimiter(redis, LIMITS)
    try:
        yield await aiohttp_client(
            create_check_app(limiter, registry=CollectorRegistry(), policies=watcher)
        )
    finally:
        await watcher.stop()
        await limiter.aclose()


async def post(client: Client, body: Any) -> tuple[int, dict[str, Any]]:
    response = await client.post(CHECK_PATH, json=body)
    return response.status, await response.json(content_type=None)


async def test_check_api_answers_the_governing_policy_and_quota(check: Client) -> None:
    body = {"apiKey": "urr_good_key", "route": "/api/v1/queue/e1", "method": "get", "cost": 2}
    status, answer = await post(check, body)
    assert status == 200, answer
    assert answer["policy"]["id"] == "acme-queue"  # priority 20 beats the default queue (10)
    assert (answer["allowed"], answer["limit"], answer["remaining"]) == (True, 10, 8)
    assert (answer["quota_remaining"], answer["shadow"], answer["retry_after"]) == (998, False, 0)
    # The tenant id names the same tenant (same windows, same quota).
    status, answer = await post(check, {**body, "apiKey": None, "tenant": "acme"} | {"cost": 1})
    assert (status, answer["remaining"], answer["quota_remaining"]) == (200, 7, 997)
    # Another tenant falls to the default policy, with its own windows and no quota.
    status, answer = await post(
        check, {"tenant": "beta", "route": "/api/v1/queue/e1", "method": "GET"}
    )
    assert (answer["policy"]["id"], answer["limit"], answer["quota_remaining"]) == (
        "queue",
        60,
        None,
    )


async def test_check_api_reports_shadow_refusals(check: Client) -> None:
    body = {"tenant": "acme", "route": "/api/v1/shadow/x", "method": "POST"}
    answers = [(await post(check, body))[1] for _ in range(11)]
    assert all(a["allowed"] for a in answers)
    assert [a["shadow"] for a in answers] == [False] * 10 + [True]


async def test_unknown_api_keys_are_401_problems(check: Client) -> None:
    response = await check.post(
        CHECK_PATH, json={"apiKey": "urr_nope", "route": "/x", "method": "GET"}
    )
    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert (await response.json())["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "body",
    [
        {"route": "/x", "method": "GET"},  # neither apiKey nor tenant
        {"apiKey": "urr_good_key", "tenant": "acme", "route": "/x", "method": "GET"},
        {"tenant": "acme", "route": "x", "method": "GET"},
        {"tenant": "acme", "route": "/x", "method": "BREW"},
        {"tenant": "acme", "route": "/x", "method": "GET", "cost": 0},
        {"tenant": "acme", "route": "/x", "method": "GET", "cost": "1"},
        {"tenant": "acme", "route": "/api/v1/queue/e", "method": "GET", "cost": 11},  # > limit
        {"tenant": "Acme!", "route": "/x", "method": "GET"},
        {"tenant": "acme", "route": "/x", "method": "GET", "extra": 1},
    ],
)
async def test_bad_check_bodies_are_422_and_change_nothing(
    check: Client, redis: Redis, body: dict[str, Any]
) -> None:
    before = sorted(await redis.keys("*"))
    status, answer = await post(check, body)
    assert status == 422, answer
    assert sorted(await redis.keys("*")) == before


async def test_fuzzed_check_bodies_never_fail_the_server(check: Client, redis: Redis) -> None:
    values = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.text(max_size=40),
        st.sampled_from(["urr_good_key", "acme", "/api/v1/queue/e", "GET", "general"]),
        st.lists(st.integers(), max_size=2),
    )
    bodies = st.one_of(
        st.dictionaries(
            st.sampled_from(["apiKey", "tenant", "route", "method", "cost", "key", "category"]),
            values,
            max_size=6,
        ),
        values,
    )
    seen: list[Any] = []

    @settings(
        max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(body=bodies)
    def run(body: Any) -> None:
        seen.append(body)

    run()
    for body in seen:
        status, answer = await post(check, body)
        assert status in (200, 400, 401, 415, 422), (body, status, answer)
        if status != 200:
            assert "code" in answer


@given(data=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8)))
def test_the_body_parser_only_answers_a_request_or_a_422(data: dict[str, Any]) -> None:
    from urr_common.problems import Unprocessable

    with contextlib.suppress(Unprocessable):
        parse_check_body(data)


# -- propagation through the admin store and publisher (PostgreSQL + Redis) ----------------


@dataclass
class Admin:
    """The rate-limit admin's store and publisher, as its handlers use them."""

    pool: asyncpg.Pool
    publisher: PolicyPublisher

    async def publish(self) -> None:
        async with self.pool.acquire() as conn:
            assert await self.publisher.publish(await store.published_config(conn))


@pytest.fixture
async def admin(postgres_dsn: str, redis: Redis) -> AsyncIterator[Admin]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    assert pool is not None
    await store.migrate(pool)
    async with pool.acquire() as conn:
        await store.seed_default_policies(conn)
    try:
        yield Admin(pool, PolicyPublisher(redis))
    finally:
        await pool.close()


async def until(condition: Callable[[], Awaitable[bool]], within_s: float) -> float:
    """Poll ``condition`` until true; the seconds it took (fails past ``within_s``)."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < within_s, "not within the bound"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_changed_limit_decides_every_worker_and_the_check_api_1s_later(
    stack_factory: Any, admin: Admin, redis: Redis
) -> None:
    pool = admin.pool
    async with pool.acquire() as conn:
        await store.create_tenant(conn, ACTOR, "acme", "Acme")
        key = (await store.create_key(conn, ACTOR, "acme"))["secret"]
        await store.put_policy(
            conn, ACTOR, policy("acme-q", tenant="acme", route="/api/v1/events/**", priority=20)
        )
    await admin.publish()
    # Two workers (each its own limiter and configuration watcher), as URR_WORKERS=2 runs.
    workers = [await stack_factory(wired=True, rate_limit=LIMITS) for _ in range(2)]
    headers = {"X-API-Key": key}
    for worker in workers:
        response = await worker.client.get("/api/v1/events/e1", headers=headers)
        assert response.status == 200
        assert response.headers["RateLimit-Policy"] == '"acme-q";q=10;w=60'

    async with pool.acquire() as conn:
        await store.put_policy(
            conn,
            ACTOR,
            policy(
                "acme-q",
                tenant="acme",
                route="/api/v1/events/**",
                priority=20,
                windows=[{"limit": 2, "window_s": 60}],
            ),
        )
    await admin.publish()
    await asyncio.sleep(1.0)
    for worker in workers:
        response = await worker.client.get("/api/v1/events/e1", headers=headers)
        assert response.headers["RateLimit-Policy"] == '"acme-q";q=2;w=60'
    # Two were spent before (10 allowed then), so the shared window is full under limit 2.
    assert response.status == 429
    assert (await response.json())["violated-policies"] == ["acme-q"]
    internal = workers[0].internal_url
    async with ClientSession(headers=workers[0].check_headers) as session:
        answer = await session.post(
            f"{internal}{CHECK_PATH}",
            json={"apiKey": key, "route": "/api/v1/events/e1", "method": "GET"},
        )
        body = await answer.json()
    assert (body["policy"]["id"], body["limit"], body["allowed"]) == ("acme-q", 2, False)


async def test_default_policies_change_at_run_time_for_anonymous_callers_too(
    stack_factory: Any, admin: Admin
) -> None:
    await admin.publish()
    stack = await stack_factory(wired=True, rate_limit=LIMITS)

    async def general_limit_is(limit: int) -> bool:
        response = await stack.client.get("/api/v1/events")
        return bool(response.headers.get("RateLimit-Policy") == f'"general";q={limit};w=60')

    await until(lambda: general_limit_is(100), 2.0)
    async with admin.pool.acquire() as conn:
        await store.put_policy(
            conn, ACTOR, policy("general", windows=[{"limit": 7, "window_s": 60}])
        )
    await admin.publish()
    assert await until(lambda: general_limit_is(7), 1.0) < 1.0


async def test_a_lost_notification_still_converges_within_a_second(redis: Redis) -> None:
    watcher = PolicyWatcher(redis)
    await watcher.start()
    try:
        # Written as the publish script would, but without the PUBLISH: only the poll sees it.
        published = PolicySet(version=41, policies=tuple(default_policies()))
        await redis.hset(
            POLICY_SET_KEY, mapping={"version": 41, "set": published.model_dump_json()}
        )

        async def loaded() -> bool:
            return watcher.current.version == 41

        assert await until(loaded, 1.0) < 1.0
    finally:
        await watcher.stop()


async def test_revoked_keys_and_tokens_are_refused_within_a_second(
    stack_factory: Any, admin: Admin
) -> None:
    pool = admin.pool
    async with pool.acquire() as conn:
        await store.create_tenant(conn, ACTOR, "acme", "Acme")
        created = await store.create_key(conn, ACTOR, "acme")
    await admin.publish()
    stack = await stack_factory(wired=True, rate_limit=LIMITS)
    key_headers = {"X-API-Key": created["secret"]}
    revoked_token = stack.access_token("u1", jti="jti-revoked")
    other_token = stack.access_token("u1", jti="jti-other")

    async def status(headers: dict[str, str]) -> int:
        return int((await stack.client.get("/api/v1/events", headers=headers)).status)

    assert await status(key_headers) == 200
    assert await status({"Authorization": f"Bearer {revoked_token}"}) == 200
    unknown = await stack.client.get("/api/v1/events", headers={"X-API-Key": "urr_nope_x"})
    assert unknown.status == 401
    assert unknown.content_type == "application/problem+json"
    assert (await unknown.json())["code"] == "invalid_api_key"

    async with pool.acquire() as conn:
        await store.revoke_key(conn, ACTOR, uuid.UUID(created["id"]))
        await store.revoke_token(
            conn, ACTOR, "jti-revoked", datetime.now(UTC) + timedelta(minutes=5)
        )
    await admin.publish()
    started = time.monotonic()

    async def refused() -> bool:
        return await status(key_headers) == 401 and (
            await status({"Authorization": f"Bearer {revoked_token}"}) == 401
        )

    assert await until(refused, 1.0) < 1.0
    assert time.monotonic() - started < 1.0
    assert await status({"Authorization": f"Bearer {other_token}"}) == 200
    body = orjson.loads(
        await (
            await stack.client.get(
                "/api/v1/events", headers={"Authorization": f"Bearer {revoked_token}"}
            )
        ).read()
    )
    assert body["code"] == "invalid_token"
