"""Fixtures for the auth tests: settings pointing at a fresh database and a private key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from urr_auth.app import create_app
from urr_auth.settings import AuthSettings
from urr_auth.testing import FAST_ARGON2, AuthApi
from urr_common.settings import load_settings

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "access"


@pytest.fixture
def make_settings(postgres_dsn: str, key_dir: Path) -> Callable[..., AuthSettings]:
    """``make_settings(**overrides)``: settings for this test's database and key folder."""

    def make(**overrides: Any) -> AuthSettings:
        values: dict[str, Any] = {
            "environment": "test",
            "postgres": {"dsn": postgres_dsn, "min_connections": 1, "max_connections": 4},
            "access_tokens": {"private_key_file": key_dir / "test-1.pem", "key_id": "test-1"},
            "argon2": FAST_ARGON2,
            "bootstrap_admin_email": None,
            "bootstrap_admin_password": None,
        }
        values.update(overrides)
        return load_settings(AuthSettings, **values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., AuthSettings]) -> AuthSettings:
    return make_settings()


@pytest.fixture
def start_client(
    postgres_dsn: str, aiohttp_client: AiohttpClient
) -> Callable[[AuthSettings], Awaitable[Client]]:
    """Start the app with given settings; the client is closed by ``aiohttp_client``.

    Asks for ``postgres_dsn`` first so the database outlives every client (teardown runs in
    reverse order), and no pool sees its database dropped under it.
    """

    async def start(settings: AuthSettings) -> Client:
        return await aiohttp_client(create_app(settings))

    return start


@pytest.fixture
async def client(
    start_client: Callable[[AuthSettings], Awaitable[Client]], settings: AuthSettings
) -> Client:
    return await start_client(settings)


@pytest.fixture
def api(client: Client) -> AuthApi:
    return AuthApi(client)
