"""Register, log in, ask who I am, log out: over HTTP against a real PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import asyncpg
import jwt
from aiohttp import web
from aiohttp.test_utils import TestClient

from urr_auth.settings import AuthSettings
from urr_auth.testing import DEFAULT_EMAIL, DEFAULT_PASSWORD, AuthApi
from urr_common.service import metrics_text
from urr_common.tokens import KeySet, SigningKey, TokenSigner, TokenVerifier

Client = TestClient[web.Request, web.Application]
StartClient = Callable[[AuthSettings], Awaitable[Client]]


def _set_cookie(response: Any) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie"):
        cookie.load(header)
    return cookie


async def test_register_returns_the_new_user(api: AuthApi) -> None:
    body = await api.register(email="  Ada@Example.COM ", display_name="  Ada L.  ")

    assert uuid.UUID(body["id"]).version == 4
    assert body["email"] == "ada@example.com"
    assert body["role"] == "user"
    assert body["display_name"] == "Ada L."
    assert set(body) == {"id", "email", "role", "display_name", "created_at"}


async def test_login_issues_a_token_the_published_jwks_verifies(
    client: Client, api: AuthApi, settings: AuthSettings
) -> None:
    user = await api.register()
    before = int(time.time())

    body = await api.login(email="ADA@example.com")

    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == settings.access_tokens.ttl_s
    assert body["user"]["id"] == user["id"]
    token = body["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["kid"] == "test-1"
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    verifier = TokenVerifier(KeySet.from_jwks(jwks), issuer="urr-auth", audience="urr")
    claims = verifier.verify(token)
    assert claims["iss"] == "urr-auth"
    assert claims["aud"] == "urr"
    assert claims["sub"] == user["id"]
    assert claims["email"] == "ada@example.com"
    assert claims["role"] == "user"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == settings.access_tokens.ttl_s


async def test_login_sets_an_httponly_lax_cookie_for_the_token_lifetime(
    api: AuthApi, client: Client, settings: AuthSettings
) -> None:
    await api.register()
    response = await client.post(
        "/api/v1/auth/login", json={"email": DEFAULT_EMAIL, "password": DEFAULT_PASSWORD}
    )

    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    morsel = _set_cookie(response)["access_token"]
    assert morsel.value == (await response.json())["access_token"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["path"] == "/"
    assert morsel["max-age"] == str(settings.access_tokens.ttl_s)
    assert not morsel["secure"]
    assert not morsel["domain"]


async def test_the_cookie_is_secure_when_configured(
    make_settings: Callable[..., AuthSettings], start_client: StartClient
) -> None:
    client = await start_client(make_settings(cookie_secure=True, cookie_domain="urr.example"))
    api = AuthApi(client)
    await api.register()
    response = await client.post(
        "/api/v1/auth/login", json={"email": DEFAULT_EMAIL, "password": DEFAULT_PASSWORD}
    )

    morsel = _set_cookie(response)["access_token"]
    assert morsel["secure"] is True
    assert morsel["domain"] == "urr.example"


async def test_me_accepts_the_bearer_header_or_the_cookie(client: Client, api: AuthApi) -> None:
    user = await api.register(display_name="Ada")
    token = (await api.login())["access_token"]

    by_header = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    client.session.cookie_jar.clear()
    by_cookie = await client.get("/api/v1/auth/me", headers={"Cookie": f"access_token={token}"})

    assert by_header.status == 200
    assert by_header.headers["Cache-Control"] == "no-store"
    assert await by_header.json() == user
    assert by_cookie.status == 200
    assert await by_cookie.json() == user


async def test_login_cookie_alone_authenticates_the_next_request(
    client: Client, api: AuthApi
) -> None:
    await api.register()
    await api.login()

    response = await client.get("/api/v1/auth/me")

    assert response.status == 200
    assert (await response.json())["email"] == DEFAULT_EMAIL


async def test_a_present_authorization_header_wins_over_the_cookie(
    client: Client, api: AuthApi
) -> None:
    await api.register()
    token = (await api.login())["access_token"]

    response = await client.get(
        "/api/v1/auth/me",
        headers={"Authorization": "Bearer not-a-token", "Cookie": f"access_token={token}"},
    )

    assert response.status == 401
    assert (await response.json())["code"] == "invalid_token"


async def test_logout_clears_the_cookie(client: Client, api: AuthApi) -> None:
    await api.register()
    await api.login()

    response = await client.post("/api/v1/auth/logout")

    assert response.status == 204
    morsel = _set_cookie(response)["access_token"]
    assert morsel.value == ""
    assert morsel["max-age"] == "0"
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["path"] == "/"
    after = await client.get("/api/v1/auth/me")
    assert after.status == 401
    assert (await after.json())["code"] == "authentication_required"


async def test_me_without_a_token_asks_for_bearer_credentials(client: Client) -> None:
    response = await client.get("/api/v1/auth/me")

    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["code"] == "authentication_required"


async def test_me_refuses_tokens_that_are_not_ours_or_not_valid(
    client: Client, api: AuthApi, key_dir: Path, settings: AuthSettings
) -> None:
    user = await api.register()
    own_key = SigningKey.from_pem((key_dir / "test-1.pem").read_bytes(), "test-1")
    claims = {"email": DEFAULT_EMAIL, "role": "user"}
    signer = TokenSigner(own_key, issuer="urr-auth", audience="urr", ttl_s=60)
    impostor = TokenSigner(SigningKey.generate("test-1"), "urr-auth", "urr", 60)
    cases = {
        "expired": signer.sign(user["id"], claims, now=time.time() - 3600),
        "bad_signature": impostor.sign(user["id"], claims),
        "wrong_issuer": TokenSigner(own_key, "someone-else", "urr", 60).sign(user["id"], claims),
        "wrong_audience": TokenSigner(own_key, "urr-auth", "urr-entry", 60).sign(
            user["id"], claims
        ),
        "missing_claim": signer.sign(user["id"], {"email": DEFAULT_EMAIL}),
        "unknown_key": TokenSigner(SigningKey.generate("other"), "urr-auth", "urr", 60).sign(
            user["id"], claims
        ),
        "malformed": "a.b.c",
    }
    for reason, token in cases.items():
        response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        body = await response.json()
        assert response.status == 401, reason
        assert body["code"] == "invalid_token", reason
        assert body["reason"] == reason
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_me_refuses_a_non_bearer_authorization_header(client: Client) -> None:
    for value in ("Basic YWRhOnB3", "Bearer", "Bearer    ", "token"):
        response = await client.get("/api/v1/auth/me", headers={"Authorization": value})
        assert response.status == 401, value
        assert (await response.json())["reason"] == "malformed"


async def test_me_refuses_a_token_whose_account_is_gone(
    client: Client, api: AuthApi, postgres_dsn: str
) -> None:
    user = await api.register()
    token = (await api.login())["access_token"]
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("DELETE FROM auth.users WHERE id = $1", uuid.UUID(user["id"]))
    finally:
        await conn.close()

    response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})

    assert response.status == 401
    assert (await response.json())["reason"] == "unknown_user"


async def test_me_shows_the_role_the_database_has_now(
    client: Client, api: AuthApi, postgres_dsn: str
) -> None:
    user = await api.register()
    token = (await api.login())["access_token"]
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(
            "UPDATE auth.users SET role = 'admin' WHERE id = $1", uuid.UUID(user["id"])
        )
    finally:
        await conn.close()

    response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})

    assert (await response.json())["role"] == "admin"


async def test_login_rehashes_a_password_made_with_old_parameters(
    make_settings: Callable[..., AuthSettings], start_client: StartClient, postgres_dsn: str
) -> None:
    first = await start_client(make_settings())
    await AuthApi(first).register()
    await first.close()
    stronger = {"time_cost": 2, "memory_cost_kib": 512, "parallelism": 1}
    second = AuthApi(await start_client(make_settings(argon2=stronger)))

    await second.login()
    await second.login()  # the fresh hash verifies too

    conn = await asyncpg.connect(postgres_dsn)
    try:
        stored = await conn.fetchval("SELECT password_hash FROM auth.users")
    finally:
        await conn.close()
    assert stored.startswith("$argon2id$v=19$m=512,t=2,p=1$")


async def test_health_metrics_and_jwks_headers(client: Client, api: AuthApi) -> None:
    await api.register()
    await api.login()
    await client.post("/api/v1/auth/login", json={"email": DEFAULT_EMAIL, "password": "wrong-pw"})

    ready = await client.get("/health/ready")
    metrics = metrics_text(client.app)
    jwks = await client.get("/.well-known/jwks.json")

    assert ready.status == 200
    assert (await ready.json())["checks"] == {"postgres": "ok"}
    assert 'urr_auth_logins_total{outcome="success"} 1.0' in metrics
    assert 'urr_auth_logins_total{outcome="invalid_credentials"} 1.0' in metrics
    assert 'urr_auth_registrations_total{outcome="created"} 1.0' in metrics
    assert 'urr_auth_password_seconds_count{operation="verify"}' in metrics
    assert jwks.headers["Cache-Control"] == "public, max-age=60"
    keys = (await jwks.json())["keys"]
    assert [key["kid"] for key in keys] == ["test-1"]
    assert all("d" not in key for key in keys)
