"""The reverse proxy: headers, client address, streaming, limits, upstream failures, paths."""

from __future__ import annotations

import asyncio
import io
import json
import re
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from urr_common.logs import configure_logging, get_logger
from urr_common.problems import Forbidden
from urr_common.service import metrics_text
from urr_common.settings import LogSettings
from urr_gateway.context import CLIENT_IP, IDENTITY, RequestFacts
from urr_gateway.filters.base import GatewayFilter
from urr_gateway.ratelimit.config import RateLimitSettings
from urr_gateway.responseheaders import REFERRER_POLICY
from urr_gateway.revocation import ENTRY_TOKEN_REVOCATION, RevocationVerdict, revocation_key_of
from urr_gateway.settings import GatewayHttpSettings, UpstreamSettings
from urr_gateway.trust import TrustSettings

MB = 1024 * 1024
#: A test that hands the chain a stand-in filter with only an aiohttp middleware runs under
#: the aiohttp server alone (the protocol server runs filters as steps): parametrized here,
#: so it is never collected for the protocol server instead of being skipped there.
AIOHTTP_SERVER_ONLY = pytest.mark.parametrize("gateway_server", ["aiohttp"], indirect=True)


def recording_filter(seen: list[dict[str, Any]], verdict: bool | None = None) -> GatewayFilter:
    """An order-0 filter in the rate limiter's slot, recording what it is given."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        identity = request.get(IDENTITY)
        seen.append(
            {
                "client_ip": request[CLIENT_IP],
                "path": request.path,
                "user": identity.user_id if identity else None,
                "revocation_key": revocation_key_of(request),
            }
        )
        if verdict is not None:
            key = revocation_key_of(request)
            if key is not None:
                request[ENTRY_TOKEN_REVOCATION] = RevocationVerdict(key=key, revoked=verdict)
        return await handler(request)

    return GatewayFilter(name="rate_limit", order=0, middleware=record)


async def test_forwarding_headers_and_request_id(stack):
    response = await stack.client.get(
        "/api/v1/events/e1", headers={"X-Request-Id": "req-123", "Host": "shop.example"}
    )
    assert response.status == 200
    assert response.headers["X-Request-Id"] == "req-123"
    got = stack.headers_of(await response.json())
    assert got["x-forwarded-for"] == ["127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]
    assert got["x-forwarded-host"] == ["shop.example"]
    assert got["x-request-id"] == ["req-123"]
    assert got["host"] != ["shop.example"]


@AIOHTTP_SERVER_ONLY
async def test_spoofed_forwarded_for_is_ignored_without_trusted_proxies(stack_factory):
    seen: list[dict[str, Any]] = []
    stack = await stack_factory(rate_limit_filter=recording_filter(seen))
    response = await stack.client.get(
        "/api/v1/events",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
            "Forwarded": "for=6.6.6.6",
            "X-Real-IP": "6.6.6.6",
        },
    )
    got = stack.headers_of(await response.json())
    assert seen[0]["client_ip"] == "127.0.0.1"
    assert got["x-forwarded-for"] == ["127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]
    assert got["x-forwarded-host"] != ["evil.example"]
    assert "forwarded" not in got
    assert "x-real-ip" not in got


@AIOHTTP_SERVER_ONLY
async def test_forwarded_for_is_used_behind_a_trusted_proxy(stack_factory):
    seen: list[dict[str, Any]] = []
    stack = await stack_factory(
        rate_limit_filter=recording_filter(seen),
        trust=TrustSettings(proxy_cidrs=["127.0.0.0/8"]),
    )
    response = await stack.client.get(
        "/api/v1/events", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}
    )
    got = stack.headers_of(await response.json())
    assert seen[0]["client_ip"] == "203.0.113.7"
    assert got["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]


async def test_hop_by_hop_headers_are_removed_both_ways(stack):
    response = await stack.client.get(
        "/api/v1/events/hop",
        headers={
            "Connection": "keep-alive, X-Private",
            "X-Private": "client-to-gateway only",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic eDp5",
            "Upgrade": "h2c",
            "X-Kept": "yes",
        },
    )
    assert response.status == 200
    got = stack.headers_of(await response.json())
    for name in ("x-private", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert name not in got, name
    assert got["x-kept"] == ["yes"]
    assert "X-Upstream-Private" not in response.headers
    assert "Proxy-Authenticate" not in response.headers
    assert "Keep-Alive" not in response.headers
    assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]


async def test_redirects_are_passed_through_not_followed(stack):
    response = await stack.client.get("/api/v1/events/redirect", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/api/v1/events/elsewhere"
    assert [r["path"] for r in stack.ticket.requests] == []


async def test_head_and_no_content_answers(stack):
    response = await stack.client.head("/api/v1/events/e1")
    assert response.status == 200
    assert await response.read() == b""


async def test_unknown_routes_are_404_problems(stack):
    for path in ("/", "/api/v1/nothing", "/api/v2/events", "/api/v1/seats"):
        response = await stack.client.get(path)
        assert response.status == 404, path
        assert (await response.json())["code"] == "route_not_found"


async def test_a_10_mb_download_is_streamed(stack):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        async with stack.client.get("/api/v1/events/download") as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(10 * MB)
            total = 0
            async for chunk in response.content.iter_chunked(MB):
                total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 10 * MB
    # Gateway, upstream and client share this process: buffering 10 MB anywhere would show.
    assert peak < 4 * MB, peak


async def test_a_10_mb_upload_is_streamed(stack_factory):
    stack = await stack_factory(http=GatewayHttpSettings(port=0, max_body_bytes=32 * MB))
    sent = 0
    seen_before_end = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent, seen_before_end
        for index in range(10):
            yield b"u" * MB
            sent += MB
            if index == 5:
                # The upstream must already be reading while the client is mid-upload.
                for _ in range(200):
                    if stack.ticket.upload_chunks:
                        break
                    await asyncio.sleep(0.01)
                seen_before_end = (
                    stack.ticket.upload_chunks[-1][1] if stack.ticket.upload_chunks else 0
                )

    response = await stack.client.post("/api/v1/events/upload", data=body())
    assert response.status == 200
    assert (await response.json())["received"] == 10 * MB
    assert 0 < seen_before_end < 10 * MB


async def test_an_upload_with_content_length_is_forwarded_whole(stack_factory):
    stack = await stack_factory(http=GatewayHttpSettings(port=0, max_body_bytes=32 * MB))
    response = await stack.client.post("/api/v1/events/upload", data=io.BytesIO(b"x" * (10 * MB)))
    assert response.status == 200
    assert (await response.json())["received"] == 10 * MB


async def test_bodies_over_the_limit_are_413(stack_factory):
    stack = await stack_factory(http=GatewayHttpSettings(port=0, max_body_bytes=64 * 1024))
    declared = await stack.client.post(
        "/api/v1/events/upload", data=io.BytesIO(b"x" * (100 * 1024))
    )
    assert declared.status == 413
    assert (await declared.json())["code"] == "body_too_large"
    assert stack.ticket.upload_chunks == []

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * (16 * 1024)

    streamed = await stack.client.post("/api/v1/events/upload", data=chunked())
    assert streamed.status == 413
    assert (await streamed.json())["code"] == "body_too_large"
    small = await stack.client.post("/api/v1/events/upload", data=b"x" * 1000)
    assert (await small.json())["received"] == 1000


async def test_an_upstream_that_is_down_is_502(stack_factory):
    from urr_devstack.procs import free_port

    stack = await stack_factory(
        upstreams=UpstreamSettings(
            auth=f"http://127.0.0.1:{free_port()}",
            queue=f"http://127.0.0.1:{free_port()}",
            ticket=f"http://127.0.0.1:{free_port()}",
        )
    )
    response = await stack.client.get("/api/v1/events")
    assert response.status == 502
    body = await response.json()
    assert body["code"] == "upstream_unavailable"
    assert response.content_type == "application/problem+json"


async def test_a_slow_upstream_is_504(stack):
    response = await stack.client.get("/api/v1/events/slow?s=4")
    assert response.status == 504
    assert (await response.json())["code"] == "upstream_timeout"
    metrics = metrics_text(stack.client.app)
    assert 'urr_gateway_upstream_errors_total{kind="timeout",upstream="ticket"} 1.0' in metrics


async def test_an_upstream_dying_mid_stream_cuts_the_client_connection(stack):
    async with stack.client.get("/api/v1/events/die") as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    # The gateway is still fine afterwards.
    assert (await stack.client.get("/api/v1/events")).status == 200


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/events/../admin/queue/e1",
        "/api/v1/events/%2e%2e/admin/queue/e1",
        "/api/v1/events/..%2fadmin%2fqueue%2fe1",
        "/api/v1/events%2f..%2fadmin/queue/e1",
        "/api/v1/events/%252e%252e/admin/queue/e1",
        "/api/v1/events/%5c..%5cadmin",
        "/api/v1/events\\..\\admin\\queue\\e1",
        "/api/v1/events/..;/admin/queue/e1",
        "/api/v1/seats/e1/%2e%2e/%2e%2e/events",
    ],
)
async def test_path_traversal_is_refused_before_any_upstream(stack, raw_request, target):
    status, answer = await raw_request(stack.client, target)
    assert status == 400, answer
    assert b'"code":"invalid_path"' in answer
    assert stack.ticket.requests == stack.queue.requests == stack.auth.requests == []


async def test_normalised_paths_are_routed_as_what_the_upstream_gets(stack, raw_request):
    # Double slashes collapse: this is an admin path and is treated as one.
    status, _ = await raw_request(stack.client, "//api//v1/admin/queue/e1")
    assert status == 401
    # Encoded letters are decoded once; the upstream gets the canonical form.
    status, answer = await raw_request(stack.client, "/api/v1/%65vents//e1?q=%2f")
    assert status == 200
    seen = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert seen["raw_path"] == "/api/v1/events/e1?q=%2f"


@AIOHTTP_SERVER_ONLY
async def test_the_filters_see_the_canonical_path(stack_factory, raw_request):
    seen: list[dict[str, Any]] = []
    stack = await stack_factory(rate_limit_filter=recording_filter(seen))
    status, _ = await raw_request(stack.client, "/api//v1/%65vents/e1")
    assert status == 200
    assert seen[0]["path"] == "/api/v1/events/e1"
    assert stack.ticket.requests[0]["path"] == "/api/v1/events/e1"


@AIOHTTP_SERVER_ONLY
async def test_the_rate_limiter_can_answer_the_revocation_question(stack_factory):
    seen: list[dict[str, Any]] = []
    stack = await stack_factory(rate_limit_filter=recording_filter(seen, verdict=True))
    headers = {**stack.auth_headers("u1"), "x-queue-entry-token": stack.entry_token("u1", "e1")}
    response = await stack.client.get("/api/v1/seats/e1", headers=headers)
    assert response.status == 403
    body = await response.json()
    assert body["reason"] == "revoked"
    assert seen[0]["revocation_key"].startswith("{u:u1}:revoked:")


async def test_a_client_leaving_mid_download_is_not_an_upstream_error(stack):
    async with stack.client.get("/api/v1/events/download") as response:
        assert response.status == 200
        await response.content.readexactly(256 * 1024)
        response.close()
    await asyncio.sleep(0.2)
    metrics = metrics_text(stack.client.app)
    assert "urr_gateway_upstream_errors_total{" not in metrics
    assert (await stack.client.get("/api/v1/events")).status == 200


@AIOHTTP_SERVER_ONLY
async def test_a_limiter_decision_can_answer_revocation_without_a_second_redis_call(
    stack_factory,
):
    """The wiring the merged limiter uses: its decision on the request, read by a reader."""
    from dataclasses import dataclass

    from urr_common.settings import RedisSettings
    from urr_devstack.procs import free_port

    @dataclass(frozen=True)
    class FakeDecision:
        key: str
        revoked: bool | None

    decision_key = web.RequestKey("test_decision", FakeDecision)
    revoked_users = {"u-revoked"}

    @web.middleware
    async def fake_limiter(request, handler):
        key = revocation_key_of(request)
        if key is not None:
            identity = request[IDENTITY]
            request[decision_key] = FakeDecision(key, identity.user_id in revoked_users)
        return await handler(request)

    def read(request, key):
        decision = request.get(decision_key)
        if decision is None or decision.key != key:
            return None
        return decision.revoked

    stack = await stack_factory(
        rate_limit_filter=GatewayFilter(name="rate_limit", order=0, middleware=fake_limiter),
        revocation_verdict=read,
        # No Redis at all: a fallback lookup would fail open and be counted.
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"),
    )
    for user, status in (("u-ok", 200), ("u-revoked", 403)):
        headers = {**stack.auth_headers(user), "x-queue-entry-token": stack.entry_token(user, "e1")}
        response = await stack.client.get("/api/v1/seats/e1", headers=headers)
        assert response.status == status
    metrics = metrics_text(stack.client.app)
    assert "urr_gateway_revocation_check_failures_total 0.0" in metrics


@AIOHTTP_SERVER_ONLY
async def test_the_revocation_key_is_offered_only_where_an_entry_token_is_needed(stack_factory):
    seen: list[dict[str, Any]] = []
    stack = await stack_factory(rate_limit_filter=recording_filter(seen))
    headers = {**stack.auth_headers("u1"), "x-queue-entry-token": stack.entry_token("u1", "e1")}
    await stack.client.get("/api/v1/events/e1", headers=headers)
    await stack.client.get("/api/v1/seats/e1", headers=headers)
    await stack.client.get("/api/v1/seats/e1", headers={"x-queue-entry-token": "x.y.z"})
    assert seen[0]["revocation_key"] is None
    assert seen[1]["revocation_key"].startswith("{u:u1}:revoked:")
    # The anonymous seat request is counted by the limiter (refusals are limited too), with
    # no revocation key: it has no user to look one up for.
    assert len(seen) == 3
    assert seen[2]["user"] is None
    assert seen[2]["revocation_key"] is None


async def test_expect_100_continue_is_answered_by_the_gateway(stack):
    response = await stack.client.post(
        "/api/v1/events/upload", data=io.BytesIO(b"x" * 5000), expect100=True
    )
    assert response.status == 200
    assert (await response.json())["received"] == 5000
    echo = await stack.client.post("/api/v1/events/e1", data=b"abc", expect100=True)
    assert "expect" not in stack.headers_of(await echo.json())


async def test_the_admission_log_is_public_and_read_only(stack):
    log = stack.upstreams["admission_log"]
    for path in ("/v1/log/jwks.json", "/v1/log/e1/sth", "/v1/log/e1/entries"):
        response = await stack.client.get(f"{path}?start=0&end=2")
        assert response.status == 200, path
        seen = await response.json()
        assert seen["upstream"] == "admission_log"
        assert (seen["path"], seen["query"]) == (path, "start=0&end=2")
    assert (await stack.client.head("/v1/log/e1/sth")).status == 200
    assert len(log.requests) == 4
    # Nobody writes through the gateway: refused before the upstream hears of it.
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        refused = await stack.client.request(method, "/v1/log/e1/entries", json={"leaf": "x"})
        assert refused.status == 405, method
        assert refused.content_type == "application/problem+json"
        assert (await refused.json())["code"] == "method_not_allowed"
        assert refused.headers["Allow"] == "GET, HEAD"
    assert len(log.requests) == 4
    assert all(not other.requests for name, other in stack.upstreams.items() if other is not log)


async def test_the_admission_log_counts_as_a_public_read(stack_factory):
    limits = RateLimitSettings(budget_ms=2000, congestion_cap_ms=5000)
    stack = await stack_factory(wired=True, rate_limit=limits)
    response = await stack.client.get("/v1/log/e1/sth")
    assert response.status == 200
    assert response.headers["RateLimit-Policy"] == '"general";q=100;w=60'


async def test_the_decision_headers_are_on_a_proxied_answer_once(stack_factory):
    """Every proxied answer read whole carries the decision's RateLimit headers, each once,
    and the gateway's values replace an upstream's own (under either server)."""
    limits = RateLimitSettings(budget_ms=2000, congestion_cap_ms=5000)
    stack = await stack_factory(wired=True, rate_limit=limits)
    plain = await stack.client.get("/v1/log/e1/sth")
    assert plain.headers.getall("RateLimit-Policy") == ['"general";q=100;w=60']
    assert len(plain.headers.getall("RateLimit")) == 1
    assert plain.headers["RateLimit"].startswith('"general";r=')
    own = await stack.client.get("/v1/log/e1/own-limits")
    assert own.status == 200
    assert len(own.headers.getall("RateLimit")) == 1
    assert own.headers["RateLimit"].startswith('"general";r=')
    assert own.headers.getall("RateLimit-Policy") == ['"general";q=100;w=60']


async def test_every_answer_on_a_connection_has_its_own_added_headers_each_once(stack_factory):
    """Answers one after the other (one keep-alive connection): each carries every security
    header and the decision's RateLimit headers exactly once, with its own decision's values;
    an upstream's own ``X-Frame-Options`` is kept on its answer only, its own RateLimit
    replaced (the headers are appended when absent, merged or updated when not)."""
    limits = RateLimitSettings(budget_ms=2000, congestion_cap_ms=5000)
    stack = await stack_factory(wired=True, rate_limit=limits)
    remaining: list[int] = []
    for last, frame in (
        ("sth", "DENY"),
        ("own-security", "SAMEORIGIN"),
        ("own-limits", "DENY"),
        ("sth", "DENY"),
    ):
        response = await stack.client.get(f"/v1/log/e1/{last}")
        assert response.status == 200
        headers = response.headers
        assert headers.getall("X-Frame-Options") == [frame]
        assert headers.getall("X-Content-Type-Options") == ["nosniff"]
        assert headers.getall("Referrer-Policy") == [REFERRER_POLICY]
        assert headers.getall("RateLimit-Policy") == ['"general";q=100;w=60']
        (state,) = headers.getall("RateLimit")
        found = re.search(r'^"general";r=(\d+);t=\d+$', state)
        assert found is not None
        remaining.append(int(found.group(1)))
    assert remaining == sorted(remaining, reverse=True)
    assert len(set(remaining)) == len(remaining)  # each answer its own decision's count
    # A streamed answer (prepared before its body: the receivers add them, under aiohttp by
    # their ``merge``) carries them once too.
    async with stack.client.get("/v1/log/e1/download") as streamed:
        assert streamed.status == 200
        assert len(streamed.headers.getall("RateLimit")) == 1
        assert streamed.headers.getall("RateLimit-Policy") == ['"general";q=100;w=60']
        assert streamed.headers.getall("X-Frame-Options") == ["DENY"]
        await streamed.read()


async def test_filters_run_as_steps_and_log_lines_carry_the_request(stack_factory):
    """The gateway runs its filters as plain calls inside one middleware; a line logged
    while a request runs carries that request's id and user (and the next request on the
    same connection does not inherit them); a step's refusal is a problem answer with the
    request id, counted in the HTTP metrics."""
    stream = io.StringIO()
    configure_logging(LogSettings(), service="gateway-test", stream=stream)
    log = get_logger("test.step")
    calls: list[str | None] = []

    def step(request: web.Request, facts: RequestFacts) -> None:
        calls.append(facts.identity.user_id if facts.identity else None)
        log.info("step_ran")
        if request.headers.get("x-test-refuse"):
            raise Forbidden("refused by the test step", code="test_refused")

    @web.middleware
    async def never(request: web.Request, handler: Handler) -> web.StreamResponse:
        raise AssertionError("the middleware form must not run when every filter has a step")

    stack = await stack_factory(
        rate_limit_filter=GatewayFilter(name="rate_limit", order=0, middleware=never, step=step)
    )
    first = await stack.client.get(
        "/api/v1/events/e1", headers={**stack.auth_headers("u-log"), "X-Request-Id": "req-a"}
    )
    assert first.status == 200
    assert first.headers["X-Request-Id"] == "req-a"
    second = await stack.client.get(
        "/api/v1/events/e1", headers={"X-Request-Id": "req-b", "x-test-refuse": "1"}
    )
    assert second.status == 403
    assert second.headers["X-Request-Id"] == "req-b"
    assert (await second.json())["code"] == "test_refused"
    assert calls == ["u-log", None]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    ran = [line for line in lines if line["event"] == "step_ran"]
    assert [(line["request_id"], line.get("user_id")) for line in ran] == [
        ("req-a", "u-log"),
        ("req-b", None),
    ]
    metrics = metrics_text(stack.client.app)
    counted = {
        line.rpartition(" ")[0]: line.rpartition(" ")[2]
        for line in metrics.splitlines()
        if line.startswith("urr_http_requests_total{") and "tail" in line
    }
    assert sorted(counted.values()) == ["1.0", "1.0"]
    assert sorted('status="2xx"' in name for name in counted) == [False, True]
