"""Fuzzed requests: whatever arrives, the answer is a problem or a success, never a 500."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from urr_common.identity_testing import act_as, as_gateway
from urr_common.service import SETTINGS_KEY
from urr_common.upstream_security import INTERNAL_APP
from urr_queue.app import AUDIENCE, create_app

ADMIN_HEADERS = act_as("admin", "admin")

HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=80
)
EVENT_TEXT = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"),
    st.text(min_size=1, max_size=80),
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)
CONFIG_BODIES = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [
                "capacity",
                "admit_per_second",
                "session_seconds",
                "idle_timeout_seconds",
                "require_tier1_token",
                "mode",
            ]
        ),
        st.text(max_size=12),
    ),
    JSON_VALUES,
    max_size=4,
)
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest_asyncio.fixture
async def fuzz_client(aiohttp_client, make_settings, single_redis):
    app = create_app(make_settings(single_redis), registry=CollectorRegistry())
    client = await aiohttp_client(app, middlewares=(as_gateway(AUDIENCE),))
    await client.put("/api/v1/admin/queue/known", json={"capacity": 3}, headers=ADMIN_HEADERS)
    return client


@pytest_asyncio.fixture
async def fuzz_internal(aiohttp_client, fuzz_client):
    """The internal listener's app of the same service, with the ticket credential."""
    secret = make_settings_secret(fuzz_client)
    return await aiohttp_client(
        fuzz_client.app[INTERNAL_APP], headers={"Authorization": f"Bearer {secret}"}
    )


def make_settings_secret(client: Any) -> str:
    settings = client.app[SETTINGS_KEY]
    return str(settings.internal.callers["ticket"].get_secret_value())


def _assert_clean(response: Any) -> None:
    assert response.status < 500
    if response.status >= 400:
        assert response.headers["Content-Type"].startswith("application/problem+json")


@FUZZ
@given(
    event=EVENT_TEXT,
    user=HEADER_TEXT,
    role=HEADER_TEXT,
    action=st.sampled_from(["enter", "status", "leave", "capacity"]),
    vwr=st.one_of(st.none(), HEADER_TEXT),
)
async def test_user_endpoints(fuzz_client, event, user, role, action, vwr):
    headers = act_as(user, role)
    if vwr is not None:
        headers["X-Vwr-Token"] = vwr
    method = "GET" if action in ("status", "capacity") else "POST"
    for target in (event, "known"):
        response = await fuzz_client.request(
            method, f"/api/v1/queue/{quote(target, safe='')}/{action}", headers=headers
        )
        _assert_clean(response)


@FUZZ
@given(body=CONFIG_BODIES, method=st.sampled_from(["PUT", "PATCH"]))
async def test_admin_bodies(fuzz_client, body, method):
    headers = ADMIN_HEADERS
    response = await fuzz_client.request(
        method, "/api/v1/admin/queue/known", json=body, headers=headers
    )
    _assert_clean(response)
    # 400: a body JSON cannot hold (Infinity); 422: invalid fields; 409: tier-1 switch.
    assert response.status in (200, 201, 400, 409, 422)
    current = await fuzz_client.get("/api/v1/admin/queue/known", headers=headers)
    assert current.status == 200, "a refused change must leave a readable configuration"


@FUZZ
@given(
    raw=st.one_of(st.binary(max_size=200), st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES))
)
async def test_internal_complete_bodies(fuzz_internal, raw):
    response = await fuzz_internal.post(
        "/internal/v1/queue/known/complete", data=raw, headers={"Content-Type": "application/json"}
    )
    _assert_clean(response)
