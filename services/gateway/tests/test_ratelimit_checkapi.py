"""``POST /internal/v1/ratelimit/check`` over HTTP: answers, every kind of bad input, and a
fuzzed body that must never produce a 5xx or change anything."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from urr_gateway.checkapi import (
    CHECK_PATH,
    CheckRequest,
    _legacy_answer,
    create_check_app,
    legacy_answer_bytes,
    parse_check_body,
    plain_legacy_body,
)
from urr_gateway.ratelimit import (
    CategoryLimits,
    RateLimitSettings,
    SlidingWindowLimiter,
    WindowLimit,
    window_key,
)
from urr_gateway.ratelimit.window import WindowSpec, decide_one, unlimited_decision

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application] | aiohttp.ClientSession
ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


def check_settings() -> RateLimitSettings:
    categories = dict(RateLimitSettings().categories)
    categories["api"] = CategoryLimits(
        windows=(WindowLimit(limit=5, window_s=60), WindowLimit(limit=3, window_s=1))
    )
    return RateLimitSettings(categories=categories, budget_ms=500)


@pytest.fixture(params=["aiohttp", "lean"])
async def client(
    request: pytest.FixtureRequest,
    redis: Redis,
    aiohttp_client: ClientFactory,
    lean_listener: Callable[[web.Application], Awaitable[str]],
) -> AsyncIterator[Client]:
    """The same app served both ways: as an aiohttp app, and on the lean listener a worker
    serves it on (``urr_gateway.checkserver``); every test here holds for both."""
    limiter = SlidingWindowLimiter(redis, check_settings())
    app = create_check_app(limiter, registry=CollectorRegistry())
    if request.param == "aiohttp":
        yield await aiohttp_client(app)
        return
    async with aiohttp.ClientSession(base_url=await lean_listener(app)) as session:
        yield session


async def post(client: Client, body: Any) -> tuple[int, dict[str, Any]]:
    response = await client.post(CHECK_PATH, json=body)
    return response.status, await response.json(content_type=None)


async def test_check_answers_with_the_contract_fields(client: Client, redis: Redis) -> None:
    status, body = await post(client, {"key": "tenant-1:GET /x", "category": "auth", "cost": 1})
    assert status == 200
    assert body == {
        "allowed": True,
        "limit": 20,
        "remaining": 19,
        "reset_ms": 60_000,
        "retry_after_ms": 0,
        "degraded": False,
    }
    # Check-API keys live in their own namespace, apart from gateway users and addresses.
    assert await redis.zcard(window_key("k:tenant-1:GET /x", "auth", 60)) == 1


async def test_check_refuses_over_the_limit_and_costs_count(client: Client) -> None:
    status, first = await post(client, {"key": "t", "category": "booking", "cost": 10})
    assert (status, first["allowed"], first["remaining"]) == (200, True, 0)
    status, refused = await post(client, {"key": "t", "category": "booking"})
    assert status == 200
    assert refused["allowed"] is False
    assert refused["remaining"] == 0
    assert 59_000 < refused["retry_after_ms"] <= 60_000


async def test_a_category_with_two_windows_reports_the_binding_one(client: Client) -> None:
    answers = [(await post(client, {"key": "t", "category": "api"}))[1] for _ in range(4)]
    assert [a["allowed"] for a in answers] == [True, True, True, False]
    assert answers[2]["limit"] == 3  # the 1 s window is the tighter one
    assert 0 < answers[3]["retry_after_ms"] <= 1000


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"category": "auth"}, 422, "validation_failed"),
        ({"key": "", "category": "auth"}, 422, "validation_failed"),
        ({"key": "x" * 257, "category": "auth"}, 422, "validation_failed"),
        ({"key": "tab\there", "category": "auth"}, 422, "validation_failed"),
        ({"key": "caf\u00e9", "category": "auth"}, 422, "validation_failed"),
        ({"key": "k", "category": "nope"}, 422, "unknown_category"),
        ({"key": "k", "category": "auth", "cost": 0}, 422, "validation_failed"),
        ({"key": "k", "category": "auth", "cost": 21}, 422, "cost_exceeds_limit"),
        ({"key": "k", "category": "api", "cost": 4}, 422, "cost_exceeds_limit"),
        ({"key": "k", "category": "auth", "cost": "1"}, 422, "validation_failed"),
        ({"key": "k", "category": "auth", "cost": True}, 422, "validation_failed"),
        ({"key": "k", "category": "auth", "cost": 1.5}, 422, "validation_failed"),
        ({"key": 5, "category": "auth"}, 422, "validation_failed"),
        ({"key": "k", "category": "auth", "extra": 1}, 422, "validation_failed"),
        ([1, 2], 400, "malformed_json"),
    ],
)
async def test_bad_input_is_a_problem_and_changes_nothing(
    client: Client, redis: Redis, body: Any, status: int, code: str
) -> None:
    got_status, answer = await post(client, body)
    assert (got_status, answer["code"]) == (status, code)
    assert await redis.dbsize() == 0


async def test_bad_transport_is_a_problem(client: Client) -> None:
    not_json = await client.post(
        CHECK_PATH, data=b"{", headers={"Content-Type": "application/json"}
    )
    assert not_json.status == 400
    wrong_type = await client.post(
        CHECK_PATH, data=b"key=k", headers={"Content-Type": "text/plain"}
    )
    assert wrong_type.status == 415
    huge = await client.post(
        CHECK_PATH,
        data=b'{"key":"' + b"x" * 10_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert huge.status == 413
    wrong_method = await client.get(CHECK_PATH)
    assert wrong_method.status == 405
    for response in (not_json, wrong_type, huge, wrong_method):
        assert response.content_type == "application/problem+json"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "key": st.one_of(st.text(max_size=300), json_values),
            "category": st.one_of(
                st.sampled_from(["auth", "queue", "booking", "general", "api", "x"]), json_values
            ),
            "cost": st.one_of(st.integers(min_value=-5, max_value=30), json_values),
        },
    ),
    json_values,
)


# The client fixture is shared by the examples on purpose: one app, many bodies.
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(body=bodies)
async def test_fuzzed_bodies_never_fail_the_server(client: Client, body: Any) -> None:
    response = await client.post(
        CHECK_PATH, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status in {200, 400, 413, 422}
    answer = await response.json(content_type=None)
    if response.status == 200:
        assert set(answer) == {
            "allowed",
            "limit",
            "remaining",
            "reset_ms",
            "retry_after_ms",
            "degraded",
        }
        assert isinstance(body, dict)
        assert 1 <= len(body["key"]) <= 256
    else:
        assert answer["status"] == response.status
        assert isinstance(answer["code"], str)


@FUZZ
@given(raw=st.binary(max_size=300))
async def test_fuzzed_bytes_never_fail_the_server(client: Client, raw: bytes) -> None:
    response = await client.post(CHECK_PATH, data=raw, headers={"Content-Type": "application/json"})
    assert response.status in {200, 400, 422}


legacy_like = st.dictionaries(
    st.sampled_from(["key", "category", "cost", "extra", "route"]),
    st.one_of(
        st.text(max_size=300),
        st.text(alphabet=st.characters(min_codepoint=0x1F, max_codepoint=0x80), max_size=258),
        st.integers(min_value=-2, max_value=2**70),
        json_values,
    ),
    max_size=4,
)


@settings(max_examples=500, deadline=None)
@given(data=legacy_like)
def test_the_plain_legacy_check_accepts_only_what_the_model_accepts(data: dict[str, Any]) -> None:
    plain = plain_legacy_body(data)
    if plain is None:
        return
    # Whatever the fast path lets through, the strict model accepts with the same values.
    assert parse_check_body(data) == CheckRequest.model_validate(
        {"key": plain.key, "category": plain.category, "cost": plain.cost}
    )


@pytest.mark.parametrize(
    "data",
    [
        {"key": "k", "category": "auth"},
        {"key": "k" * 256, "category": "c" * 64, "cost": 7},
        {"key": " ~", "category": "auth", "cost": 1},
    ],
)
def test_the_plain_legacy_check_takes_plain_requests(data: dict[str, Any]) -> None:
    assert plain_legacy_body(data) == parse_check_body(data)


@given(
    count=st.integers(0, 200),
    reset_us=st.integers(0, 10**9),
    retry_us=st.integers(0, 10**9),
    cost=st.integers(1, 5),
    degraded=st.booleans(),
)
def test_the_legacy_answer_bytes_are_orjsons(
    count: int, reset_us: int, retry_us: int, cost: int, degraded: bool
) -> None:
    """The listener's answer is formatted straight from the decision: byte for byte what
    ``orjson.dumps`` makes of the contract fields (``_legacy_answer``)."""
    spec = WindowSpec("general", 100, 60)
    for decision in (
        decide_one("general", spec, count, reset_us, retry_us, cost, "redis", degraded),
        unlimited_decision("general", (spec,), "open"),
    ):
        assert legacy_answer_bytes(decision) == orjson.dumps(_legacy_answer(decision)[1])
