"""The rate-limit filter in an aiohttp application: 429 problems, headers on every answer
(streamed ones too), exempt paths, per-user versus per-address subjects, Redis down."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler
from redis.asyncio import Redis

from urr_common.problems import Forbidden
from urr_common.service import create_service_app
from urr_common.settings import ServiceSettings
from urr_devstack.procs import RedisServer
from urr_gateway.context import CLIENT_IP, IDENTITY, Identity
from urr_gateway.filters.ratelimit import (
    RATE_LIMIT_DECISION,
    install_rate_limit,
    rate_limit_filter,
    revocation_verdict,
)
from urr_gateway.ratelimit import (
    CategoryLimits,
    CategoryRouter,
    RateLimitSettings,
    SlidingWindowLimiter,
    WindowLimit,
    revoked_jti_key,
)

pytestmark = pytest.mark.integration

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


def small_limits(**overrides: Any) -> RateLimitSettings:
    categories = {
        "auth": CategoryLimits(
            windows=(WindowLimit(limit=3, window_s=60),), failure_policy="local"
        ),
        "booking": CategoryLimits(windows=(WindowLimit(limit=2, window_s=60),)),
        "queue": CategoryLimits(windows=(WindowLimit(limit=60, window_s=60),)),
        "general": CategoryLimits(windows=(WindowLimit(limit=5, window_s=60),)),
    }
    return RateLimitSettings(categories=categories, **overrides)


@web.middleware
async def stand_in_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Test stand-in for gw-core's address and JWT filters: they set these two keys."""
    request[CLIENT_IP] = request.headers.get("x-test-ip", "127.0.0.1")
    if user := request.headers.get("x-test-user"):
        request[IDENTITY] = Identity(user_id=user, email=f"{user}@example.test", role="user")
    return await handler(request)


def revoked_key_from_header(request: web.Request) -> str | None:
    jti = request.headers.get("x-test-jti")
    identity = request.get(IDENTITY)
    if jti is None or identity is None:
        return None
    return revoked_jti_key(identity.user_id, jti)


async def ok(request: web.Request) -> web.Response:
    decision = request.get(RATE_LIMIT_DECISION)
    revoked = decision.revoked if decision is not None else None
    key = revoked_key_from_header(request)
    verdict = revocation_verdict(request, key) if key is not None else None
    other = revocation_verdict(request, revoked_jti_key("someone-else", "x"))
    return web.json_response({"ok": True, "revoked": revoked, "verdict": verdict, "other": other})


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    for _ in range(3):
        await response.write(b"x" * 1024)
    await response.write_eof()
    return response


async def forbidden(_: web.Request) -> web.Response:
    raise Forbidden("no", code="entry_token_missing")


def build_app(limiter: SlidingWindowLimiter) -> web.Application:
    gateway_filter = rate_limit_filter(
        limiter,
        CategoryRouter.from_settings(limiter.settings),
        revoked_key_for=revoked_key_from_header,
    )
    assert (gateway_filter.name, gateway_filter.order) == ("rate_limit", 0)
    app = create_service_app(
        ServiceSettings(), middlewares=[stand_in_auth, gateway_filter.middleware]
    )
    install_rate_limit(app, limiter)
    app.router.add_get("/api/v1/auth/login", ok)
    app.router.add_get("/api/v1/seats/{event}", ok)
    app.router.add_get("/api/v1/seats/{event}/forbidden", forbidden)
    app.router.add_get("/api/v1/events/stream", stream)
    return app


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def client(
    redis: Redis, aiohttp_client: ClientFactory
) -> TestClient[web.Request, web.Application]:
    limiter = SlidingWindowLimiter(redis, small_limits(budget_ms=500))
    return await aiohttp_client(build_app(limiter))


async def test_allowed_answers_carry_the_headers(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/api/v1/auth/login", headers={"x-test-user": "1"})
    assert response.status == 200
    assert response.headers["RateLimit-Policy"] == '"auth";q=3;w=60'
    assert response.headers["RateLimit"] == '"auth";r=2;t=60'
    assert "Retry-After" not in response.headers


async def test_over_the_limit_is_a_429_problem(
    client: TestClient[web.Request, web.Application],
) -> None:
    for _ in range(3):
        assert (await client.get("/api/v1/auth/login", headers={"x-test-user": "1"})).status == 200
    response = await client.get("/api/v1/auth/login", headers={"x-test-user": "1"})
    assert response.status == 429
    assert response.content_type == "application/problem+json"
    body = await response.json(content_type="application/problem+json")
    assert body["code"] == "rate_limited"
    assert body["status"] == 429
    assert body["violated-policies"] == ["auth"]
    retry_after = int(response.headers["Retry-After"])
    assert 59 <= retry_after <= 60
    assert body["retry_after"] == retry_after
    assert response.headers["RateLimit-Policy"] == '"auth";q=3;w=60'
    assert response.headers["RateLimit"] == f'"auth";r=0;t={retry_after}'
    assert response.headers["X-Request-Id"]


async def test_streamed_answers_carry_the_headers(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/api/v1/events/stream")
    assert response.status == 200
    assert len(await response.read()) == 3 * 1024
    assert response.headers["RateLimit-Policy"] == '"general";q=5;w=60'
    assert response.headers["RateLimit"] == '"general";r=4;t=60'


async def test_error_answers_carry_the_headers(
    client: TestClient[web.Request, web.Application],
) -> None:
    forbidden = await client.get("/api/v1/seats/e1/forbidden", headers={"x-test-user": "2"})
    assert forbidden.status == 403
    assert forbidden.headers["RateLimit"] == '"booking";r=1;t=60'
    missing = await client.get("/api/v1/nowhere")
    assert missing.status == 404
    assert missing.headers["RateLimit-Policy"] == '"general";q=5;w=60'


async def test_health_endpoints_are_never_limited(
    client: TestClient[web.Request, web.Application],
) -> None:
    # (/metrics is on its own listener, never the public port: test_gateway_main.py)
    for _ in range(12):
        for path in ("/health/live", "/health/ready"):
            response = await client.get(path)
            assert response.status == 200
            assert "RateLimit-Policy" not in response.headers


async def test_users_and_addresses_are_limited_apart(
    client: TestClient[web.Request, web.Application],
) -> None:
    async def status(**headers: str) -> int:
        return (await client.get("/api/v1/seats/e1", headers=headers)).status

    assert [await status(**{"x-test-user": "a", "x-test-ip": "10.0.0.1"}) for _ in range(3)] == [
        200, 200, 429,
    ]  # fmt: skip
    # Another user behind the same address has a quota of its own, and so has the address.
    assert await status(**{"x-test-user": "b", "x-test-ip": "10.0.0.1"}) == 200
    assert [await status(**{"x-test-ip": "10.0.0.1"}) for _ in range(3)] == [200, 200, 429]
    assert await status(**{"x-test-ip": "10.0.0.2"}) == 200
    # The exhausted user is refused from any address.
    assert await status(**{"x-test-user": "a", "x-test-ip": "10.0.0.3"}) == 429


async def test_revoked_jti_reaches_the_next_filter(
    client: TestClient[web.Request, web.Application], redis: Redis
) -> None:
    await redis.set(revoked_jti_key("7", "bad"), b"1", px=60_000)
    revoked = await client.get(
        "/api/v1/seats/e1", headers={"x-test-user": "7", "x-test-jti": "bad"}
    )
    assert (await revoked.json())["revoked"] is True
    fine = await client.get("/api/v1/seats/e1", headers={"x-test-user": "7", "x-test-jti": "good"})
    assert (await fine.json())["revoked"] is False
    anonymous = await client.get("/api/v1/events/e1", headers={"x-test-jti": "bad"})
    assert anonymous.status == 404  # no such route here; the point is: no error from the hook


async def test_redis_down_keeps_the_gateway_serving_and_ready(
    redis_url: str, redis_server: RedisServer, aiohttp_client: ClientFactory
) -> None:
    redis = Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
    limiter = SlidingWindowLimiter(redis, small_limits(budget_ms=50, breaker_open_s=5.0))
    client = await aiohttp_client(build_app(limiter))
    redis_server.stop()
    try:
        ready = await client.get("/health/ready")
        assert ready.status == 200
        # GENERAL fails open: served, with the policy but no made-up count.
        for _ in range(10):
            response = await client.get("/api/v1/events/stream")
            assert response.status == 200
            assert response.headers["RateLimit-Policy"] == '"general";q=5;w=60'
            assert "RateLimit" not in response.headers
        # AUTH limits locally at the same limit.
        statuses = [
            (await client.get("/api/v1/auth/login", headers={"x-test-user": "9"})).status
            for _ in range(4)
        ]
        assert statuses == [200, 200, 200, 429]
    finally:
        redis_server.ensure_running()
        await redis.aclose()
