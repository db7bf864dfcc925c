"""``GET /api/v1/admin/ratelimit/usage`` (admin) and ``GET /api/v1/ratelimit/usage`` (a tenant
with its API key) on real PostgreSQL: filters, pages, who may read what, bad filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from urr_common.identity_testing import act_as, as_gateway, identity_settings
from urr_common.ratelimit_usage import ANONYMOUS_TENANT
from urr_ratelimit_admin import store
from urr_ratelimit_admin.app import AUDIENCE, PREFIX, TENANT_USAGE_PATH, create_app
from urr_ratelimit_admin.publisher import PolicyPublisher
from urr_ratelimit_admin.settings import RatelimitAdminSettings
from urr_ratelimit_admin.usage_query import parse_usage_query

OP = store.Actor("op-1", "req-1")
ADMIN = act_as("op-1", "admin")
T0 = datetime(2026, 11, 30, 22, tzinfo=UTC)
HOURS = [T0 + timedelta(hours=i) for i in range(3)]
USAGE = PREFIX + "/usage"


@pytest.fixture
async def env(
    rl_stores: tuple[asyncpg.Pool, Redis], aiohttp_client: AiohttpClient
) -> dict[str, Any]:
    pool, redis = rl_stores
    async with pool.acquire() as conn:
        keys = {}
        for tenant in ("acme", "beta"):
            await store.create_tenant(conn, OP, tenant, tenant.title())
            keys[tenant] = (await store.create_key(conn, OP, tenant))["secret"]
        rows = [
            (tenant, policy, hour, 10 * i + 1, i, 0, 100 + i)
            for i, hour in enumerate(HOURS)
            for tenant in ("acme", "beta", ANONYMOUS_TENANT)
            for policy in ("general", "queue")
        ]
        await conn.executemany(
            "INSERT INTO rl_usage_snapshots (tenant_id, policy_id, period_start, allowed,"
            " blocked, shadow_blocked, quota_used) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            rows,
        )
    app = create_app(
        RatelimitAdminSettings(identity=identity_settings()), pool, PolicyPublisher(redis)
    )
    return {
        "pool": pool,
        "client": await aiohttp_client(app, middlewares=(as_gateway(AUDIENCE),)),
        "keys": keys,
    }


async def _get(env: dict[str, Any], path: str, status: int, **headers: str) -> Any:
    response = await env["client"].get(path, headers=headers)
    assert response.status == status, await response.text()
    if status >= 400:
        assert response.content_type == "application/problem+json"
    return await response.json()


def _keys(page: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(r["tenant"], r["policy"], r["period_start"]) for r in page["usage"]]


async def test_admins_filter_by_tenant_policy_and_period(env: dict[str, Any]) -> None:
    everything = await _get(env, USAGE + "?limit=1000", 200, **ADMIN)
    assert len(everything["usage"]) == 18
    assert everything["next"] is None
    acme = await _get(env, USAGE + "?tenant=acme&policy=queue", 200, **ADMIN)
    assert {(r["tenant"], r["policy"]) for r in acme["usage"]} == {("acme", "queue")}
    assert [r["allowed"] for r in acme["usage"]] == [1, 11, 21]
    assert acme["usage"][1] == {
        "tenant": "acme",
        "policy": "queue",
        "period_start": HOURS[1].isoformat(),
        "allowed": 11,
        "blocked": 1,
        "shadow_blocked": 0,
        "quota_used": 101,
    }
    december = f"?tenant=-&from={HOURS[2].isoformat()}".replace("+", "%2B")
    rows = (await _get(env, USAGE + december, 200, **ADMIN))["usage"]
    assert {(r["tenant"], r["period_start"]) for r in rows} == {("-", HOURS[2].isoformat())}
    window = f"?from={HOURS[0].isoformat()}&to={HOURS[1].isoformat()}".replace("+", "%2B")
    assert len((await _get(env, USAGE + window, 200, **ADMIN))["usage"]) == 6
    assert (await _get(env, USAGE + "?tenant=nobody", 200, **ADMIN))["usage"] == []
    await _get(env, USAGE, 403, **act_as("u-1", "user"))
    await _get(env, USAGE, 401, **{"X-User-Role": "admin", "X-User-Id": "op-1"})


async def test_pages_follow_each_other_without_gaps_or_repeats(env: dict[str, Any]) -> None:
    everything = _keys(await _get(env, USAGE + "?limit=1000", 200, **ADMIN))
    seen, path = [], USAGE + "?limit=4"
    while True:
        page = await _get(env, path, 200, **ADMIN)
        assert len(page["usage"]) <= 4
        seen.extend(_keys(page))
        if page["next"] is None:
            break
        path = USAGE + f"?limit=4&cursor={page['next']}"
    assert seen == everything
    assert everything == sorted(everything, key=lambda k: (k[2], k[0], k[1]))


async def test_a_tenant_reads_its_own_usage_and_nobody_else_s(env: dict[str, Any]) -> None:
    acme, beta = env["keys"]["acme"], env["keys"]["beta"]
    own = await _get(env, TENANT_USAGE_PATH, 200, **{"X-API-Key": acme})
    assert {r["tenant"] for r in own["usage"]} == {"acme"}
    assert len(own["usage"]) == 6
    queue = await _get(env, TENANT_USAGE_PATH + "?policy=queue", 200, **{"X-API-Key": beta})
    assert {(r["tenant"], r["policy"]) for r in queue["usage"]} == {("beta", "queue")}
    problem = await _get(env, TENANT_USAGE_PATH + "?tenant=beta", 403, **{"X-API-Key": acme})
    assert problem["code"] == "other_tenant"
    for key in ("", "urr_00000000_nope", acme[:-2] + "xx", "not a key"):
        problem = await _get(env, TENANT_USAGE_PATH, 401, **{"X-API-Key": key})
        assert problem["code"] == "invalid_api_key"
    await _get(env, TENANT_USAGE_PATH, 401)
    # Admin headers do not open the tenant route: only the key counts.
    await _get(env, TENANT_USAGE_PATH, 401, **ADMIN)
    async with env["pool"].acquire() as conn:
        key_id = await conn.fetchval(
            "SELECT id FROM rl_api_keys WHERE tenant_id = 'acme'",
        )
        await store.revoke_key(conn, OP, key_id)
        await store.update_tenant(conn, OP, "beta", {"status": "disabled"})
    await _get(env, TENANT_USAGE_PATH, 401, **{"X-API-Key": acme})
    await _get(env, TENANT_USAGE_PATH, 401, **{"X-API-Key": beta})


BAD_FILTERS = [
    "from=2026-12-01T00:00:00",  # no time zone
    "from=yesterday",
    "from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
    "from=2026-12-01T00:00:00Z&to=2026-12-01T00:00:00Z",
    "from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
    "limit=0",
    "limit=5000",
    "limit=ten",
    "tenant=Bad%20Id",
    "tenant=",
    "policy=",
    "cursor=garbage",
    "cursor=WyJ4IiwiYSIsImIiXQ",  # a well-encoded list that is no cursor
    "sort=desc",
    "tenant=acme&tenant=beta",
]


async def test_bad_filters_are_422_problems(env: dict[str, Any]) -> None:
    # One database for every case (a fresh one per case costs a second each).
    key = env["keys"]["acme"]
    for query in BAD_FILTERS:
        problem = await _get(env, f"{USAGE}?{query}", 422, **ADMIN)
        assert problem["code"] == "invalid_filter", query
        assert problem["errors"], query
        await _get(env, f"{TENANT_USAGE_PATH}?{query}", 422, **{"X-API-Key": key})


@given(
    st.dictionaries(
        st.sampled_from(["tenant", "policy", "from", "to", "limit", "cursor", "x"]),
        st.text(max_size=40),
        max_size=6,
    )
)
def test_any_query_parses_or_is_a_validation_error(params: dict[str, str]) -> None:
    try:
        query = parse_usage_query(params, list(params))
    except ValidationError:
        return
    assert query.limit >= 1
    if query.start is not None and query.end is not None:
        assert query.start < query.end
