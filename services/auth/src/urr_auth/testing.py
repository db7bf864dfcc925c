"""Helpers for tests that talk to the auth service over HTTP (this service's and others').

Only imported by tests; nothing here runs in the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

#: argon2 parameters cheap enough for hundreds of hashes per test run.
FAST_ARGON2: dict[str, int] = {"time_cost": 1, "memory_cost_kib": 256, "parallelism": 1}

DEFAULT_EMAIL = "ada@example.com"
DEFAULT_PASSWORD = "correct horse battery"  # noqa: S105 - a test fixture value


@dataclass
class AuthApi:
    """Register and log in through the public routes, asserting success."""

    client: TestClient[web.Request, web.Application]

    async def register(
        self, email: str = DEFAULT_EMAIL, password: str = DEFAULT_PASSWORD, **extra: Any
    ) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/auth/register", json={"email": email, "password": password, **extra}
        )
        if response.status != 201:
            raise AssertionError(f"register: {response.status} {await response.text()}")
        body: dict[str, Any] = await response.json()
        return body

    async def login(
        self, email: str = DEFAULT_EMAIL, password: str = DEFAULT_PASSWORD
    ) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/auth/login", json={"email": email, "password": password}
        )
        if response.status != 200:
            raise AssertionError(f"login: {response.status} {await response.text()}")
        body: dict[str, Any] = await response.json()
        return body
