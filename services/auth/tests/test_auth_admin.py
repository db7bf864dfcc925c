"""The admin account: from the bootstrap variables at start, and from the command line."""

from __future__ import annotations

import asyncio
import getpass
import io
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from urr_auth.cli import create_admin
from urr_auth.settings import AuthSettings
from urr_auth.testing import FAST_ARGON2, AuthApi

Client = TestClient[web.Request, web.Application]
StartClient = Callable[[AuthSettings], Awaitable[Client]]
ADMIN_EMAIL = "root@example.com"


async def _role_of(dsn: str, email: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        role: str | None = await conn.fetchval(
            "SELECT role FROM auth.users WHERE lower(email) = lower($1)", email
        )
        return role
    finally:
        await conn.close()


async def _login_status(client: Client, email: str, password: str) -> int:
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    await response.read()
    return response.status


async def test_the_bootstrap_admin_is_created_then_updated_on_the_next_start(
    make_settings: Callable[..., AuthSettings], start_client: StartClient, postgres_dsn: str
) -> None:
    first = await start_client(
        make_settings(bootstrap_admin_email=ADMIN_EMAIL, bootstrap_admin_password="first secret")
    )
    token = (await AuthApi(first).login(ADMIN_EMAIL, "first secret"))["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["role"] == "admin"
    await first.close()

    second = await start_client(
        make_settings(
            bootstrap_admin_email=ADMIN_EMAIL.upper(), bootstrap_admin_password="second secret"
        )
    )

    assert await _login_status(second, ADMIN_EMAIL, "first secret") == 401
    assert await _login_status(second, ADMIN_EMAIL, "second secret") == 200
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM auth.users") == 1
    finally:
        await conn.close()


async def test_the_bootstrap_promotes_an_existing_user(
    make_settings: Callable[..., AuthSettings], start_client: StartClient, postgres_dsn: str
) -> None:
    plain = await start_client(make_settings())
    await AuthApi(plain).register(email=ADMIN_EMAIL, password="user password")
    await plain.close()

    await start_client(
        make_settings(bootstrap_admin_email=ADMIN_EMAIL, bootstrap_admin_password="admin secret")
    )

    assert await _role_of(postgres_dsn, ADMIN_EMAIL) == "admin"


async def test_create_admin_creates_then_updates_through_the_same_path(
    settings: AuthSettings, start_client: StartClient, postgres_dsn: str
) -> None:
    def run(password: str) -> int:
        return create_admin(
            settings, "Root@Example.com", password_stdin=True, stdin=io.StringIO(password + "\n")
        )

    # asyncio.run inside the tool needs a thread without a running loop.
    assert await asyncio.to_thread(run, "cli secret one") == 0
    assert await _role_of(postgres_dsn, ADMIN_EMAIL) == "admin"
    assert await asyncio.to_thread(run, "cli secret two") == 0

    client = await start_client(settings)
    assert await _login_status(client, ADMIN_EMAIL, "cli secret one") == 401
    assert await _login_status(client, ADMIN_EMAIL, "cli secret two") == 200


async def test_create_admin_refuses_bad_input_without_writing(
    settings: AuthSettings, postgres_dsn: str
) -> None:
    cases = [
        ("not-an-address", "long enough password\n"),
        (ADMIN_EMAIL, "short\n"),
        (ADMIN_EMAIL, ""),
    ]
    for email, stdin in cases:
        code = await asyncio.to_thread(
            create_admin, settings, email, password_stdin=True, stdin=io.StringIO(stdin)
        )
        assert code == 2, (email, stdin)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('auth.users') IS NOT NULL")
    finally:
        await conn.close()
    assert exists is False  # refused before touching the database at all


def _cli_env(postgres_dsn: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("URR_")}
    env.update(
        {
            "URR_POSTGRES__DSN": postgres_dsn,
            "URR_ACCESS_TOKENS__PRIVATE_KEY_FILE": str(tmp_path / "keys" / "cli-1.pem"),
            "URR_ARGON2__TIME_COST": str(FAST_ARGON2["time_cost"]),
            "URR_ARGON2__MEMORY_COST_KIB": str(FAST_ARGON2["memory_cost_kib"]),
            "URR_ARGON2__PARALLELISM": str(FAST_ARGON2["parallelism"]),
            "URR_LOG__LEVEL": "WARNING",
        }
    )
    env.update(extra)
    return env


async def test_the_command_line_tool_reads_the_password_from_stdin(
    postgres_dsn: str, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "urr_auth", "create-admin", "--email", ADMIN_EMAIL]
    result = await asyncio.to_thread(
        subprocess.run,
        [*command, "--password-stdin"],
        input="from the pipe\n",
        env=_cli_env(postgres_dsn, tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"created admin {ADMIN_EMAIL}"
    assert "from the pipe" not in result.stdout + result.stderr
    assert await _role_of(postgres_dsn, ADMIN_EMAIL) == "admin"


async def test_the_command_line_tool_exits_2_on_bad_settings(
    postgres_dsn: str, tmp_path: Path
) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "urr_auth", "create-admin", "--email", ADMIN_EMAIL],
        input="whatever password\n",
        env=_cli_env(postgres_dsn, tmp_path, URR_HTTP__PORT="not-a-port"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2
    assert "URR_HTTP__PORT" in result.stderr
    assert "Traceback" not in result.stderr


async def test_create_admin_prompts_twice_and_refuses_a_mismatch(
    settings: AuthSettings, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter(["typed once right", "typed twice wrong", "same both times", "same both times"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)

    mismatch = await asyncio.to_thread(create_admin, settings, ADMIN_EMAIL, password_stdin=False)
    match = await asyncio.to_thread(create_admin, settings, ADMIN_EMAIL, password_stdin=False)

    assert (mismatch, match) == (2, 0)
    assert prompts == ["Password: ", "Repeat password: "] * 2
    assert await _role_of(postgres_dsn, ADMIN_EMAIL) == "admin"
