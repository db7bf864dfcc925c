"""The entry-token filter: every refusal, on every method, and revocation in real Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest
from aiohttp import ClientResponse

from urr_common.service import metrics_text
from urr_common.settings import RedisSettings
from urr_common.tokens import SigningKey, TokenSigner
from urr_gateway.keys import revoked_entry_token_key

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def _refusal(response: ClientResponse) -> dict[str, Any]:
    assert response.status == 403, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json()
    return body


@pytest.mark.parametrize("method", METHODS)
async def test_a_valid_token_passes_on_every_method(stack, method):
    headers = {**stack.auth_headers("u1"), "x-queue-entry-token": stack.entry_token("u1", "e1")}
    response = await stack.client.request(method, "/api/v1/seats/e1/s1/hold", headers=headers)
    assert response.status == 200
    assert len(stack.ticket.requests) == 1


@pytest.mark.parametrize("method", METHODS)
async def test_a_missing_token_is_refused_on_every_method(stack, method):
    response = await stack.client.request(
        method, "/api/v1/reservations/e1", headers=stack.auth_headers("u1")
    )
    assert response.status == 403
    if method != "HEAD":
        assert (await response.json())["code"] == "entry_token_missing"
    assert stack.ticket.requests == []


async def test_the_cookie_carries_the_token_too(stack):
    response = await stack.client.post(
        "/api/v1/reservations/e1",
        headers=stack.auth_headers("u1"),
        cookies={"urr-entry-token": stack.entry_token("u1", "e1")},
    )
    assert response.status == 200


async def test_without_login_the_route_is_401_first(stack):
    response = await stack.client.get(
        "/api/v1/seats/e1", headers={"x-queue-entry-token": stack.entry_token("u1", "e1")}
    )
    assert response.status == 401


async def test_each_refusal_has_its_code(stack):
    async def code_for(token: str, path: str = "/api/v1/seats/e1", user: str = "u1") -> str:
        headers = {**stack.auth_headers(user), "x-queue-entry-token": token}
        code: str = (await _refusal(await stack.client.get(path, headers=headers)))["code"]
        return code

    forged = TokenSigner(SigningKey.generate("entry-1"), "urr-queue", "urr-entry", 300)
    access_token_instead = stack.access_token("u1")
    unsigned = jwt.encode({"sub": "u1", "evt": "e1"}, key="", algorithm="none")
    no_event = stack.entry.signer.sign("u1", {})
    assert await code_for("garbage") == "entry_token_invalid"
    assert await code_for(unsigned) == "entry_token_invalid"
    assert await code_for(forged.sign("u1", {"evt": "e1"})) == "entry_token_invalid"
    assert await code_for(access_token_instead) == "entry_token_invalid"
    assert await code_for(no_event) == "entry_token_invalid"
    assert await code_for(stack.entry_token("u1", "e1", ttl_s=-60)) == "entry_token_expired"
    assert await code_for(stack.entry_token("u2", "e1")) == "entry_token_wrong_user"
    assert await code_for(stack.entry_token("u1", "e2")) == "entry_token_wrong_event"
    assert (
        await code_for(stack.entry_token("u1", "e2"), path="/api/v1/reservations/e1/r1")
        == "entry_token_wrong_event"
    )
    assert stack.ticket.requests == []


async def test_a_revoked_token_is_refused(stack, revoke_entry_token):
    token = stack.entry_token("u1", "e1")
    headers = {**stack.auth_headers("u1"), "x-queue-entry-token": token}
    assert (await stack.client.get("/api/v1/seats/e1", headers=headers)).status == 200
    await revoke_entry_token("u1", token)
    body = await _refusal(await stack.client.get("/api/v1/seats/e1", headers=headers))
    assert body["code"] == "entry_token_invalid"
    assert body["reason"] == "revoked"
    assert len(stack.ticket.requests) == 1


async def test_revocation_check_fails_open_when_redis_is_down(stack, redis_server):
    headers = {**stack.auth_headers("u1"), "x-queue-entry-token": stack.entry_token("u1", "e1")}
    redis_server.stop()
    try:
        response = await stack.client.get("/api/v1/seats/e1", headers=headers)
        assert response.status == 200
        metrics = metrics_text(stack.client.app)
        assert "urr_gateway_revocation_check_failures_total 1.0" in metrics
    finally:
        redis_server.ensure_running()


async def test_entry_token_is_not_needed_elsewhere(stack):
    response = await stack.client.get("/api/v1/events/e1", headers=stack.auth_headers("u1"))
    assert response.status == 200


async def test_a_redis_that_never_answers_costs_one_budget_then_fails_open(stack_factory):
    async def accept_and_stay_silent(reader, writer):
        await reader.read(-1)
        writer.close()

    silent = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        stack = await stack_factory(
            redis=RedisSettings(url=f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.3),
            revocation_timeout_s=0.05,
        )
        headers = {**stack.auth_headers("u1"), "x-queue-entry-token": stack.entry_token("u1", "e1")}
        started = time.monotonic()
        response = await stack.client.get("/api/v1/seats/e1", headers=headers)
        assert response.status == 200
        assert time.monotonic() - started < 2.0
        metrics = metrics_text(stack.client.app)
        assert "urr_gateway_revocation_check_failures_total 1.0" in metrics
        await asyncio.sleep(0.4)  # the late lookup times out on its own socket timeout
    finally:
        silent.close()
        await silent.wait_closed()


async def test_a_verdict_for_another_token_is_not_trusted():
    from aiohttp.test_utils import make_mocked_request

    from urr_gateway.revocation import (
        ENTRY_TOKEN_REVOCATION,
        PrecheckedRevocation,
        RevocationVerdict,
    )

    asked = []

    class Fallback:
        async def is_revoked(self, request, user_id, jti):
            asked.append((user_id, jti))
            return False

        def verdict(self, request, user_id, jti):
            return None  # never at hand: every question goes to is_revoked

    check = PrecheckedRevocation(Fallback())
    request = make_mocked_request("GET", "/api/v1/seats/e1")
    request[ENTRY_TOKEN_REVOCATION] = RevocationVerdict(
        key=revoked_entry_token_key("u1", "other-jti"), revoked=True
    )
    assert await check.is_revoked(request, "u1", "jti-1") is False
    assert asked == [("u1", "jti-1")]
    request[ENTRY_TOKEN_REVOCATION] = RevocationVerdict(
        key=revoked_entry_token_key("u1", "jti-1"), revoked=True
    )
    assert await check.is_revoked(request, "u1", "jti-1") is True
    assert asked == [("u1", "jti-1")]
