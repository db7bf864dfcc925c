"""Every kind of bad input is a clear 4xx problem that changes nothing; never a 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from urr_auth.testing import DEFAULT_EMAIL, DEFAULT_PASSWORD, AuthApi

Client = TestClient[web.Request, web.Application]
REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"


async def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


async def _user_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM auth.users")
        return count
    finally:
        await conn.close()


async def test_malformed_json_is_400(client: Client) -> None:
    for path in (REGISTER, LOGIN):
        for raw in (b"{", b"", b'{"email": "a@b.co",}', b"\xff\xfe", b"nul\x00l"):
            response = await client.post(
                path, data=raw, headers={"Content-Type": "application/json"}
            )
            await _problem(response, 400, "malformed_json")


async def test_a_body_that_is_not_an_object_is_400(client: Client) -> None:
    for path in (REGISTER, LOGIN):
        for value in ([], "text", 1, None, [{"email": DEFAULT_EMAIL}]):
            response = await client.post(
                path, data=orjson.dumps(value), headers={"Content-Type": "application/json"}
            )
            await _problem(response, 400, "malformed_json")


async def test_the_wrong_content_type_is_415(client: Client) -> None:
    for path in (REGISTER, LOGIN):
        body = orjson.dumps({"email": DEFAULT_EMAIL, "password": DEFAULT_PASSWORD})
        for content_type in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            response = await client.post(path, data=body, headers={"Content-Type": content_type})
            await _problem(response, 415, "unsupported_media_type")


async def test_a_body_over_64_kib_is_413(client: Client) -> None:
    for path in (REGISTER, LOGIN):
        padding = "x" * (64 * 1024)
        response = await client.post(
            path, json={"email": DEFAULT_EMAIL, "password": DEFAULT_PASSWORD, "pad": padding}
        )
        await _problem(response, 413, "payload_too_large")


async def test_a_chunked_body_over_64_kib_is_413(client: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "ada@example.com", "pad": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}'

    response = await client.post(
        REGISTER, data=chunks(), headers={"Content-Type": "application/json"}
    )
    await _problem(response, 413, "payload_too_large")


# Each bad body and the one field its problem must name. One test walks them all: a fresh
# database per case would cost more than the cases themselves.
BAD_REGISTRATIONS: list[tuple[dict[str, Any], str]] = [
    ({"password": DEFAULT_PASSWORD}, "email"),
    ({"email": DEFAULT_EMAIL}, "password"),
    ({"email": "a" * 245 + "@example.com", "password": DEFAULT_PASSWORD}, "email"),
    ({"email": "a" * 65 + "@example.com", "password": DEFAULT_PASSWORD}, "email"),
    ({"email": "not-an-address", "password": DEFAULT_PASSWORD}, "email"),
    ({"email": "two@@example.com", "password": DEFAULT_PASSWORD}, "email"),
    ({"email": "ada@localhost", "password": DEFAULT_PASSWORD}, "email"),
    ({"email": "ada@exa mple.com", "password": DEFAULT_PASSWORD}, "email"),
    ({"email": "ädä@example.com", "password": DEFAULT_PASSWORD}, "email"),
    ({"email": 42, "password": DEFAULT_PASSWORD}, "email"),
    ({"email": DEFAULT_EMAIL, "password": "short"}, "password"),
    ({"email": DEFAULT_EMAIL, "password": "p" * 129}, "password"),
    ({"email": DEFAULT_EMAIL, "password": 12345678}, "password"),
    (
        {"email": DEFAULT_EMAIL, "password": DEFAULT_PASSWORD, "display_name": "n" * 101},
        "display_name",
    ),
    (
        {"email": DEFAULT_EMAIL, "password": DEFAULT_PASSWORD, "display_name": "a\u0000b"},
        "display_name",
    ),
    ({"email": DEFAULT_EMAIL, "password": DEFAULT_PASSWORD, "display_name": 7}, "display_name"),
    ({"email": DEFAULT_EMAIL, "password": DEFAULT_PASSWORD, "role": "admin"}, "role"),
]


async def test_missing_or_invalid_registration_fields_are_422_and_write_nothing(
    client: Client, postgres_dsn: str
) -> None:
    for body, field in BAD_REGISTRATIONS:
        response = await client.post(REGISTER, json=body)

        problem = await _problem(response, 422, "validation_failed")
        assert [error["field"] for error in problem["errors"]] == [field], body
        assert str(body.get("password")) not in orjson.dumps(problem).decode()
    assert await _user_count(postgres_dsn) == 0


BAD_LOGINS: list[tuple[dict[str, Any], str]] = [
    ({"password": DEFAULT_PASSWORD}, "email"),
    ({"email": DEFAULT_EMAIL}, "password"),
    ({"email": "a" * 245 + "@example.com", "password": DEFAULT_PASSWORD}, "email"),
    ({"email": "not-an-address", "password": DEFAULT_PASSWORD}, "email"),
    ({"email": DEFAULT_EMAIL, "password": ""}, "password"),
    ({"email": DEFAULT_EMAIL, "password": "p" * 129}, "password"),
    ({"email": DEFAULT_EMAIL, "password": None}, "password"),
    ({"email": DEFAULT_EMAIL, "password": DEFAULT_PASSWORD, "remember": True}, "remember"),
]


async def test_missing_or_invalid_login_fields_are_422(client: Client, api: AuthApi) -> None:
    await api.register()
    for body, field in BAD_LOGINS:
        response = await client.post(LOGIN, json=body)

        problem = await _problem(response, 422, "validation_failed")
        assert [error["field"] for error in problem["errors"]] == [field], body
        assert "Set-Cookie" not in response.headers


async def test_boundary_lengths_are_accepted(api: AuthApi) -> None:
    local = "l" * 64
    email = local + "@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 57 + ".com"
    assert len(email) == 254

    body = await api.register(email=email, password="p" * 128, display_name="n" * 100)
    await api.register(email="short@example.com", password="p" * 8)

    assert body["email"] == email
    await api.login(email=email, password="p" * 128)


async def test_a_duplicate_email_in_any_case_is_409_and_keeps_one_row(
    client: Client, api: AuthApi, postgres_dsn: str
) -> None:
    await api.register()

    response = await client.post(
        REGISTER, json={"email": "ADA@Example.Com", "password": "another password"}
    )

    await _problem(response, 409, "email_taken")
    assert await _user_count(postgres_dsn) == 1
    await api.login()  # the first account's password still holds


async def test_concurrent_registrations_of_one_address_create_one_account(
    client: Client, postgres_dsn: str
) -> None:
    variants = ["race@example.com", "RACE@example.com", "Race@Example.com", "race@EXAMPLE.COM"]
    responses = await asyncio.gather(
        *(
            client.post(REGISTER, json={"email": email, "password": f"password-{i}"})
            for i, email in enumerate(variants * 2)
        )
    )

    statuses = sorted(response.status for response in responses)
    assert statuses == [201] + [409] * 7
    for response in responses:
        if response.status == 409:
            await _problem(response, 409, "email_taken")
    assert await _user_count(postgres_dsn) == 1


async def test_a_wrong_password_and_an_unknown_user_get_the_same_401(
    client: Client, api: AuthApi
) -> None:
    await api.register()

    wrong_password = await client.post(
        LOGIN, json={"email": DEFAULT_EMAIL, "password": "not the password"}
    )
    unknown_user = await client.post(
        LOGIN, json={"email": "nobody@example.com", "password": "not the password"}
    )

    first = await _problem(wrong_password, 401, "invalid_credentials")
    second = await _problem(unknown_user, 401, "invalid_credentials")
    assert first == second
    assert "Set-Cookie" not in wrong_password.headers
    assert "Set-Cookie" not in unknown_user.headers


async def test_wrong_methods_are_405_problems(client: Client) -> None:
    for method, path in [
        ("GET", REGISTER),
        ("GET", LOGIN),
        ("PUT", "/api/v1/auth/me"),
        ("GET", "/api/v1/auth/logout"),
    ]:
        response = await client.request(method, path)
        await _problem(response, 405, "method_not_allowed")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
_field_values = st.one_of(
    st.text(max_size=300),
    st.emails().map(lambda address: address[:300]),
    _json_values,
)
_bodies = st.one_of(
    _json_values,
    st.fixed_dictionaries(
        {"email": _field_values, "password": _field_values},
        optional={"display_name": _field_values, "extra": _json_values},
    ),
)


def _check_answer(status: int, content_type: str) -> None:
    assert status < 500
    if status >= 400:
        assert content_type == "application/problem+json"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=_bodies, path=st.sampled_from([REGISTER, LOGIN]))
async def test_fuzzed_json_bodies_never_cause_a_5xx(client: Client, body: Any, path: str) -> None:
    # The standard library's encoder: it also writes integers orjson cannot read back.
    raw = json.dumps(body).encode()
    response = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
    await response.read()
    _check_answer(response.status, response.content_type)
    assert response.status in (201, 200, 400, 401, 409, 422)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw=st.binary(max_size=512),
    path=st.sampled_from([REGISTER, LOGIN]),
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain", ""]
    ),
)
async def test_fuzzed_raw_bodies_never_cause_a_5xx(
    client: Client, raw: bytes, path: str, content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post(path, data=raw, headers=headers)
    await response.read()
    _check_answer(response.status, response.content_type)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    authorization=st.text(max_size=200),
    cookie=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=';,"\\'),
        max_size=200,
    ),
)
async def test_fuzzed_credentials_on_me_are_401_never_5xx(
    client: Client, authorization: str, cookie: str
) -> None:
    headers = {"Cookie": f"access_token={cookie}"} if cookie else {}
    if authorization.isprintable() and authorization.isascii() and authorization.strip():
        headers["Authorization"] = authorization
    response = await client.get("/api/v1/auth/me", headers=headers)
    await response.read()
    assert response.status == 401
    assert response.content_type == "application/problem+json"


async def test_a_database_outage_is_a_503_not_a_500(
    client: Client, api: AuthApi, postgres_dsn: str, postgres_admin_dsn: str
) -> None:
    await api.register()
    name = postgres_dsn.rpartition("/")[2]
    admin = await asyncpg.connect(postgres_admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()

    login = await client.post(LOGIN, json={"email": DEFAULT_EMAIL, "password": DEFAULT_PASSWORD})
    register = await client.post(REGISTER, json={"email": "b@example.com", "password": "password"})
    ready = await client.get("/health/ready")

    for response in (login, register):
        await _problem(response, 503, "database_unavailable")
        assert response.headers["Retry-After"] == "1"
    assert ready.status == 503
