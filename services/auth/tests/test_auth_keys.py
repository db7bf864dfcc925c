"""The signing key: created on first start, reused after, and rotated without a flag day."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from urr_auth.app import create_app
from urr_auth.settings import AuthSettings
from urr_auth.testing import AuthApi
from urr_common.tokens import KeyMaterialError, KeySet, TokenVerifier

Client = TestClient[web.Request, web.Application]
StartClient = Callable[[AuthSettings], Awaitable[Client]]


async def _jwks(client: Client) -> dict[str, list[dict[str, str]]]:
    document: dict[str, list[dict[str, str]]] = await (
        await client.get("/.well-known/jwks.json")
    ).json()
    return document


async def _me_status(client: Client, token: str) -> tuple[int, dict[str, str]]:
    response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    body: dict[str, str] = await response.json()
    return response.status, body


async def test_the_first_start_creates_a_private_key_and_its_public_half(
    start_client: StartClient, settings: AuthSettings, key_dir: Path
) -> None:
    assert not await asyncio.to_thread(key_dir.exists)

    first = await start_client(settings)
    published = await _jwks(first)
    await first.close()
    second = await start_client(settings)

    private = key_dir / "test-1.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in (key_dir / "public" / "test-1.pem").read_bytes()
    assert await _jwks(second) == published  # the same key, not a new one per start


async def test_a_token_signed_by_the_previous_key_verifies_while_that_key_is_published(
    make_settings: Callable[..., AuthSettings], start_client: StartClient, key_dir: Path
) -> None:
    before = await start_client(make_settings())
    api = AuthApi(before)
    await api.register()
    old_token = (await api.login())["access_token"]
    await before.close()

    rotated_settings = make_settings(
        access_tokens={
            "private_key_file": key_dir / "test-2.pem",
            "key_id": "test-2",
            "previous_public_key_files": [key_dir / "public" / "test-1.pem"],
        }
    )
    rotated = await start_client(rotated_settings)
    new_token = (await AuthApi(rotated).login())["access_token"]
    document = await _jwks(rotated)

    assert sorted(key["kid"] for key in document["keys"]) == ["test-1", "test-2"]
    assert jwt.get_unverified_header(new_token)["kid"] == "test-2"
    assert (await _me_status(rotated, old_token))[0] == 200
    assert (await _me_status(rotated, new_token))[0] == 200
    # Verifiers elsewhere, holding only the published document, accept both as well.
    verifier = TokenVerifier(KeySet.from_jwks(document), issuer="urr-auth", audience="urr")
    assert verifier.verify(old_token)["sub"] == verifier.verify(new_token)["sub"]
    await rotated.close()

    retired_settings = make_settings(
        access_tokens={"private_key_file": key_dir / "test-2.pem", "key_id": "test-2"}
    )
    retired = await start_client(retired_settings)
    status, problem = await _me_status(retired, old_token)

    assert [key["kid"] for key in (await _jwks(retired))["keys"]] == ["test-2"]
    assert status == 401
    assert problem["reason"] == "unknown_key"
    assert (await _me_status(retired, new_token))[0] == 200


async def test_an_unreadable_key_file_stops_the_start_with_a_clear_error(
    make_settings: Callable[..., AuthSettings], key_dir: Path
) -> None:
    key_file = key_dir / "test-1.pem"
    await asyncio.to_thread(key_dir.mkdir, parents=True)
    await asyncio.to_thread(key_file.write_bytes, b"-----BEGIN PRIVATE KEY-----\nnot a key\n")
    app = create_app(make_settings())
    runner = web.AppRunner(app)

    with pytest.raises(KeyMaterialError, match="test-1"):
        await runner.setup()
    await runner.cleanup()


async def test_a_missing_previous_key_file_stops_the_start_with_a_clear_error(
    make_settings: Callable[..., AuthSettings], key_dir: Path
) -> None:
    missing = key_dir / "public" / "gone.pem"
    settings = make_settings(
        access_tokens={
            "private_key_file": key_dir / "test-1.pem",
            "key_id": "test-1",
            "previous_public_key_files": [missing],
        }
    )
    runner = web.AppRunner(create_app(settings))

    with pytest.raises(KeyMaterialError, match=r"gone\.pem"):
        await runner.setup()
    await runner.cleanup()
