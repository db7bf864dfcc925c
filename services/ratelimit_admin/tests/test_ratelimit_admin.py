"""The rate-limit Admin API on real PostgreSQL and Redis, as an operator uses it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from urr_common.identity_testing import act_as, as_gateway, identity_settings
from urr_common.ratelimit_policies import (
    POLICY_CHANNEL,
    POLICY_SET_KEY,
    PolicySet,
    api_key_digest,
    revoked_access_token_key,
)
from urr_ratelimit_admin import store
from urr_ratelimit_admin.app import AUDIENCE, PREFIX, create_app, republish_loop
from urr_ratelimit_admin.publisher import PolicyPublisher
from urr_ratelimit_admin.settings import RatelimitAdminSettings

pytestmark = pytest.mark.integration
ADMIN = act_as("op-1", "admin")
POLICY = {
    "tenant": "acme",
    "name": "acme-queue",
    "route": "/api/v1/queue/**",
    "methods": ["GET", "POST"],
    "windows": [{"limit": 50, "window_s": 60}, {"limit": 1000, "window_s": 3600}],
    "priority": 20,
}


@pytest.fixture
async def env(
    postgres_dsn: str, redis_url: str, aiohttp_client: AiohttpClient
) -> AsyncIterator[dict[str, Any]]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=12)
    assert pool is not None
    redis = Redis.from_url(redis_url)
    await store.migrate(pool)
    async with pool.acquire() as conn:
        await store.seed_default_policies(conn)
    publisher = PolicyPublisher(redis)
    client = await aiohttp_client(
        create_app(RatelimitAdminSettings(identity=identity_settings()), pool, publisher),
        middlewares=(as_gateway(AUDIENCE),),
    )
    try:
        yield {"pool": pool, "redis": redis, "client": client, "publisher": publisher}
    finally:
        await redis.aclose()
        await pool.close()


async def _call(
    client: TestClient[Any, Any], method: str, path: str, status: int, body: Any = None, **h: str
) -> Any:
    headers = {**ADMIN, **h}
    response = await client.request(method, PREFIX + path, json=body, headers=headers)
    assert response.status == status, await response.text()
    return None if status == 204 else await response.json()


async def _published(redis: Redis) -> PolicySet:
    raw = await redis.hget(POLICY_SET_KEY, "set")
    assert raw is not None
    return PolicySet.model_validate_json(raw)


async def test_an_operator_sets_up_a_tenant_and_every_step_is_audited(env: dict[str, Any]) -> None:
    client = env["client"]
    await _call(client, "POST", "/tenants", 201, {"id": "acme", "name": "Acme Tickets"})
    key = await _call(client, "POST", "/tenants/acme/keys", 201)
    assert key["secret"].startswith("urr_")
    listed = await _call(client, "GET", "/tenants/acme/keys", 200)
    assert "secret" not in listed["keys"][0]
    assert key["secret"] not in orjson.dumps(listed).decode()
    await _call(client, "PUT", "/policies/acme-queue", 201, POLICY)
    await _call(client, "PUT", "/tenants/acme/quota", 200, {"monthly_requests": 1_000_000})
    async with env["pool"].acquire() as conn:
        assert await store.tenant_of_key(conn, key["secret"]) == "acme"
        assert await store.tenant_of_key(conn, key["secret"][:-1] + "x") is None
    published = await _published(env["redis"])
    assert "acme-queue" in {p.id for p in published.policies}
    audit = (await _call(client, "GET", "/audit?actor=op-1", 200))["entries"]
    assert [e["action"] for e in audit] == [
        "tenant.create",
        "key.create",
        "policy.create",
        "quota.put",
    ]
    assert all(e["request_id"] for e in audit)
    assert audit[2]["after"]["windows"][0] == {"limit": 50, "window_s": 60}
    # Revoking the key and disabling the tenant: the key stops working.
    await _call(client, "POST", f"/keys/{key['id']}/revoke", 200)
    async with env["pool"].acquire() as conn:
        assert await store.tenant_of_key(conn, key["secret"]) is None
    second = await _call(client, "POST", "/tenants/acme/keys", 201)
    await _call(client, "PATCH", "/tenants/acme", 200, {"status": "disabled"})
    async with env["pool"].acquire() as conn:
        assert await store.tenant_of_key(conn, second["secret"]) is None


@pytest.mark.parametrize(
    "change",
    [
        {"windows": []},
        {"windows": [{"limit": 0, "window_s": 60}]},
        {"windows": [{"limit": -1, "window_s": 60}]},
        {"windows": [{"limit": 5, "window_s": 40 * 86400}]},
        {"failure": "sometimes"},
        {"route": "/api/v1/[queue"},
        {"tenant": "nobody"},
    ],
)
async def test_invalid_policies_are_422_and_store_nothing(
    env: dict[str, Any], change: dict[str, Any]
) -> None:
    client = env["client"]
    await _call(client, "POST", "/tenants", 201, {"id": "acme", "name": "Acme"})
    before = await _call(client, "GET", "/audit", 200)
    problem = await _call(client, "PUT", "/policies/bad", 422, {**POLICY, **change})
    assert problem["code"] in ("invalid_policy", "no_tenant")
    policies = await _call(client, "GET", "/policies", 200)
    assert "bad" not in {p["id"] for p in policies["policies"]}
    assert await _call(client, "GET", "/audit", 200) == before


async def test_fifty_concurrent_updates_last_write_wins_and_fifty_audit_rows(
    env: dict[str, Any],
) -> None:
    client = env["client"]
    await _call(client, "POST", "/tenants", 201, {"id": "acme", "name": "Acme"})
    await _call(client, "PUT", "/policies/p", 201, POLICY)

    async def update(n: int) -> None:
        body = {**POLICY, "windows": [{"limit": 100 + n, "window_s": 60}]}
        await _call(client, "PUT", "/policies/p", 200, body)

    await asyncio.gather(*(update(n) for n in range(50)))
    audit = (await _call(client, "GET", "/audit?target=policy:p", 200))["entries"]
    assert [e["action"] for e in audit] == ["policy.create"] + ["policy.update"] * 50
    # Each row's "before" is the previous row's "after": the writes were serialised.
    for earlier, later in itertools.pairwise(audit):
        assert later["before"] == earlier["after"]
    final = {p["id"]: p for p in (await _call(client, "GET", "/policies", 200))["policies"]}["p"]
    assert final["windows"] == audit[-1]["after"]["windows"]
    published = await _published(env["redis"])
    assert published.version >= 50
    # The limiters got the same last write, not whichever publish finished last.
    (limiters_p,) = [p for p in published.policies if p.id == "p"]
    assert [w.model_dump() for w in limiters_p.windows] == final["windows"]


async def test_a_change_is_announced_and_redis_catches_up_after_losing_it(
    env: dict[str, Any],
) -> None:
    client, redis = env["client"], env["redis"]
    pubsub = redis.pubsub()
    await pubsub.subscribe(POLICY_CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscription confirmation
    await _call(client, "POST", "/tenants", 201, {"id": "acme", "name": "Acme"})
    await _call(client, "PUT", "/policies/acme-queue", 201, POLICY)
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert message is not None
    version = int(message["data"])
    assert (await _published(redis)).version == version
    await pubsub.aclose()
    # Redis restarted empty: the republish loop restores the set within a period.
    await redis.flushall()
    stop = asyncio.Event()
    loop = asyncio.create_task(republish_loop(env["pool"], env["publisher"], 0.1, stop))
    try:
        for _ in range(50):  # 1 s
            if await env["publisher"].published_version() == version:
                break
            await asyncio.sleep(0.02)
        assert await env["publisher"].published_version() == version
    finally:
        stop.set()
        await loop
    # An older set never replaces a newer one.
    async with env["pool"].acquire() as conn:
        current = await store.policy_set(conn)
    older = PolicySet(version=current.version - 1, policies=())
    assert await env["publisher"].publish(older) is False
    assert len((await _published(redis)).policies) == len(current.policies)


async def test_revoked_access_tokens_reach_redis_until_they_expire(env: dict[str, Any]) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=10)
    body = {"jti": "abc123", "expires_at": expires.isoformat()}
    await _call(env["client"], "POST", "/tokens/revoke", 200, body)
    ttl = await env["redis"].pttl(revoked_access_token_key("abc123"))
    assert 9 * 60_000 < ttl <= 10 * 60_000
    too_long = {"jti": "x", "expires_at": (expires + timedelta(days=40)).isoformat()}
    await _call(env["client"], "POST", "/tokens/revoke", 422, too_long)
    naive = {"jti": "x", "expires_at": "2026-12-06T10:00:00"}
    await _call(env["client"], "POST", "/tokens/revoke", 422, naive)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/tenants/nobody", None, 404, "not_found"),
        ("POST", "/tenants", {"id": "Bad Id", "name": "x"}, 422, "validation_failed"),
        ("POST", "/keys/not-a-uuid/revoke", None, 400, "invalid_key_id"),
        ("DELETE", "/policies/none", None, 404, "not_found"),
        ("GET", "/audit?limit=5000", None, 400, "invalid_parameter"),
        ("PUT", "/tenants/nobody/quota", {"monthly_requests": 5}, 404, "not_found"),
        ("PUT", "/tenants/nobody/quota", {"monthly_requests": 0}, 422, "validation_failed"),
    ],
)
async def test_bad_requests_get_problems(
    env: dict[str, Any], method: str, path: str, body: Any, status: int, code: str
) -> None:
    assert (await _call(env["client"], method, path, status, body))["code"] == code


async def test_only_admins_and_the_audit_log_cannot_be_rewritten(env: dict[str, Any]) -> None:
    client = env["client"]
    response = await client.get(PREFIX + "/tenants", headers=act_as("u-1", "user"))
    assert response.status == 403
    # X-User-* is nobody's word: without the gateway's assertion it is a 401.
    liar = {"X-User-Role": "admin", "X-User-Id": "op-1"}
    for method in ("GET", "POST"):
        response = await client.request(method, PREFIX + "/tenants", headers=liar, json={})
        assert response.status == 401
        assert (await response.json())["code"] == "identity_required"
    await _call(client, "POST", "/tenants", 201, {"id": "acme", "name": "Acme"})
    async with env["pool"].acquire() as conn:
        for statement in ("UPDATE rl_audit_log SET actor = 'x'", "DELETE FROM rl_audit_log"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement)


@pytest.mark.parametrize(
    ("secret", "prefix"),
    [
        ("urr_0a1b2c3d_abc_def-ghi", "0a1b2c3d"),
        ("urr_0a1b2c3d_", "0a1b2c3d"),
        ("urr_short_abc", None),
        ("xyz_0a1b2c3d_abc", None),
        ("urr0a1b2c3dabc", None),
        ("urr_0a1b2c3d_" + "a" * 100, None),
    ],
)
def test_key_prefixes_are_read_from_well_formed_keys_only(secret: str, prefix: str | None) -> None:
    assert store.split_key(secret) == prefix


async def test_the_published_set_carries_quotas_working_keys_and_revoked_tokens(
    env: dict[str, Any],
) -> None:
    client, redis = env["client"], env["redis"]
    await _call(client, "POST", "/tenants", 201, {"id": "acme", "name": "Acme"})
    kept = await _call(client, "POST", "/tenants/acme/keys", 201)
    gone = await _call(client, "POST", "/tenants/acme/keys", 201)
    await _call(client, "PUT", "/tenants/acme/quota", 200, {"monthly_requests": 5000})
    await _call(client, "POST", f"/keys/{gone['id']}/revoke", 200)
    before = (await _published(redis)).version
    expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    await _call(client, "POST", "/tokens/revoke", 200, {"jti": "j-1", "expires_at": expires})
    published = await _published(redis)
    # A revocation is a new version, so limiters that follow versions learn it.
    assert published.version > before
    assert published.quotas == {"acme": 5000}
    assert published.api_keys == {api_key_digest(kept["secret"]): "acme"}
    assert published.revoked_jtis == {"j-1"}
    # A disabled tenant's keys stop working: they leave the set.
    await _call(client, "PATCH", "/tenants/acme", 200, {"status": "disabled"})
    assert (await _published(redis)).api_keys == {}
    # The admin's own listing shows policies only.
    listed = await _call(client, "GET", "/policies", 200)
    assert set(listed) == {"version", "policies"}
