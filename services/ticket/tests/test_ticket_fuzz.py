"""Fuzzing the HTTP handlers: whatever the method, path, identity header and body, the answer
is never a 500, and every error is a problem+json document."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from urr_common.identity_testing import act_as, as_gateway
from urr_ticket.app import AUDIENCE, create_app
from urr_ticket.settings import TicketSettings

pytestmark = pytest.mark.integration

segments = st.one_of(
    st.sampled_from(["demo", "A1", "J10", "nope", str(uuid.uuid4()), "..", "%00", "a" * 70]),
    st.text(min_size=1, max_size=20).map(lambda s: quote(s, safe="")),
)
templates = st.sampled_from(
    [
        "/api/v1/events",
        "/api/v1/events/{a}",
        "/api/v1/seats/{a}",
        "/api/v1/seats/{a}/{b}/hold",
        "/api/v1/reservations/{a}",
        "/api/v1/reservations/{a}/{b}",
        "/api/v1/reservations/{a}/{b}/cancel",
        "/api/v1/reservations/{a}/{b}/transfer",
        "/api/v1/stats/{a}",
    ]
)
json_bodies = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    json_bodies.map(orjson.dumps),
    st.fixed_dictionaries(
        {
            "seatIds": st.lists(
                st.sampled_from(["A1", "A2", "Z9", "", "A1 "]) | st.text(max_size=5), max_size=12
            )
        }
    ).map(orjson.dumps),
    st.fixed_dictionaries({"toUserId": st.text(max_size=20)}).map(orjson.dumps),
)
user_ids = st.one_of(
    st.none(),
    st.sampled_from(["u1", "u2", "admin"]),
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=["Cc"]),
        max_size=140,
    ),
)


def test_handlers_never_fail_with_a_500(settings: TicketSettings) -> None:
    with asyncio.Runner() as runner:
        client: TestClient[Any, Any] = runner.run(_client(settings))
        try:

            @hypothesis_settings(
                max_examples=200,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            )
            @given(
                method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
                template=templates,
                a=segments,
                b=segments,
                user_id=user_ids,
                body=bodies,
                json_type=st.booleans(),
            )
            def probe(
                method: str,
                template: str,
                a: str,
                b: str,
                user_id: str | None,
                body: bytes,
                json_type: bool,
            ) -> None:
                headers = {"Content-Type": "application/json" if json_type else "text/plain"}
                if user_id is not None:
                    headers.update(act_as(user_id))
                path = template.format(a=a, b=b)
                status, content_type = runner.run(_call(client, method, path, headers, body))
                assert status < 500, (method, path, headers, body)
                if status >= 400:
                    assert content_type == "application/problem+json"

            probe()
        finally:
            runner.run(client.close())


async def _client(settings: TicketSettings) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(settings, registry=CollectorRegistry())),
        middlewares=(as_gateway(AUDIENCE),),
    )
    await client.start_server()
    return client


async def _call(
    client: TestClient[Any, Any], method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, str]:
    async with client.request(method, path, headers=headers, data=body) as response:
        await response.read()
        return response.status, response.content_type
