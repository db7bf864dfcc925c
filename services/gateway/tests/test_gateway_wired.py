"""The gateway exactly as a worker builds it: every filter, the limiter and the check API."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from urr_gateway.ratelimit.config import RateLimitSettings

#: The default limits with room for a slow Redis reply: on a busy test machine a reply can come
#: later than the 10 ms production budget, and then the failure policy, not the window, would
#: decide, so the exact counts asserted here would be off. The budget itself is tested in
#: test_ratelimit_failures.py.
EXACT_LIMITS = RateLimitSettings(budget_ms=2000, congestion_cap_ms=5000)


async def test_the_21st_auth_request_in_a_minute_is_refused_with_headers(stack_factory):
    stack = await stack_factory(wired=True, rate_limit=EXACT_LIMITS)
    statuses = []
    for _ in range(20):
        response = await stack.client.post("/api/v1/auth/login", json={})
        statuses.append(response.status)
        assert response.headers["RateLimit-Policy"] == '"auth";q=20;w=60'
        assert response.headers["RateLimit"].startswith('"auth";r=')
    assert statuses == [200] * 20
    refused = await stack.client.post("/api/v1/auth/login", json={})
    assert refused.status == 429
    assert refused.content_type == "application/problem+json"
    body: dict[str, Any] = await refused.json()
    assert body["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit"].startswith('"auth";r=0;t=')
    assert len(stack.auth.requests) == 20


async def test_a_burst_of_200_lets_exactly_the_limit_through(stack_factory):
    stack = await stack_factory(wired=True, rate_limit=EXACT_LIMITS)
    headers = stack.auth_headers("burst-user")
    responses = await asyncio.gather(
        *(stack.client.get("/api/v1/events", headers=headers) for _ in range(200))
    )
    statuses = sorted(response.status for response in responses)
    # CI saw all 200 refused once (not reproduced since): say where the refusals came from.
    refused = next((r for r in responses if r.status != 200), responses[0])
    seen = f"{statuses[0]}..{statuses[-1]}; a refusal: {dict(refused.headers)} " + (
        await refused.text()
    )
    assert statuses.count(200) == 100, seen
    assert statuses.count(429) == 100, seen
    assert len(stack.ticket.requests) == 100


async def test_users_are_limited_apart_from_each_other_and_from_anonymous(stack_factory):
    stack = await stack_factory(wired=True, rate_limit=EXACT_LIMITS)
    for _ in range(20):
        await stack.client.post("/api/v1/auth/logout", headers=stack.auth_headers("a"))
    assert (
        await stack.client.post("/api/v1/auth/logout", headers=stack.auth_headers("a"))
    ).status == 429
    assert (
        await stack.client.post("/api/v1/auth/logout", headers=stack.auth_headers("b"))
    ).status == 200
    assert (await stack.client.post("/api/v1/auth/logout")).status == 200


async def test_revocation_is_read_in_the_limiters_round_trip(stack_factory, revoke_entry_token):
    stack = await stack_factory(wired=True, rate_limit=EXACT_LIMITS)
    token = stack.entry_token("u1", "e1")
    headers = {**stack.auth_headers("u1"), "x-queue-entry-token": token}
    assert (await stack.client.get("/api/v1/seats/e1", headers=headers)).status == 200
    await revoke_entry_token("u1", token)
    refused = await stack.client.get("/api/v1/seats/e1", headers=headers)
    assert refused.status == 403
    body: dict[str, Any] = await refused.json()
    assert body["code"] == "entry_token_invalid"
    assert body["reason"] == "revoked"
    assert len(stack.ticket.requests) == 1


async def test_the_check_api_listens_apart_from_the_public_routes(stack_factory):
    stack = await stack_factory(wired=True, rate_limit=EXACT_LIMITS)
    public = await stack.client.post(
        "/internal/v1/ratelimit/check", json={"key": "k", "category": "auth", "cost": 1}
    )
    assert public.status == 404
    assert stack.internal_url is not None
    async with aiohttp.ClientSession() as stranger:
        for headers in ({}, {"Authorization": "Bearer not-the-checker-secret-0000000"}):
            async with stranger.post(
                f"{stack.internal_url}/internal/v1/ratelimit/check",
                json={"key": "tenant-1", "category": "auth", "cost": 1},
                headers=headers,
            ) as refused:
                assert refused.status == 401
                assert (await refused.json())["code"] == "service_credential_required"
    async with aiohttp.ClientSession(headers=stack.check_headers) as session:
        for expected_remaining in (19, 18):
            async with session.post(
                f"{stack.internal_url}/internal/v1/ratelimit/check",
                json={"key": "tenant-1", "category": "auth", "cost": 1},
            ) as response:
                assert response.status == 200
                answer = await response.json()
                assert answer["allowed"] is True
                assert answer["limit"] == 20
                assert answer["remaining"] == expected_remaining
        async with session.post(
            f"{stack.internal_url}/internal/v1/ratelimit/check",
            json={"key": "", "category": "nope", "cost": 0},
        ) as bad:
            assert bad.status == 422
            assert bad.content_type == "application/problem+json"


async def test_without_a_limiter_decision_the_revocation_lookup_still_refuses(
    stack_factory, revoke_entry_token
):
    """Limits off: no decision carries the verdict, so the entry-token filter looks the key
    up itself (on the limiter's pipelined connection) and a revoked token is still refused."""
    stack = await stack_factory(wired=True, rate_limit=RateLimitSettings(enabled=False))
    token = stack.entry_token("u1", "e1")
    headers = {**stack.auth_headers("u1"), "x-queue-entry-token": token}
    assert (await stack.client.get("/api/v1/seats/e1", headers=headers)).status == 200
    await revoke_entry_token("u1", token)
    refused = await stack.client.get("/api/v1/seats/e1", headers=headers)
    assert refused.status == 403
    assert (await refused.json())["reason"] == "revoked"
    assert "RateLimit-Policy" not in refused.headers
