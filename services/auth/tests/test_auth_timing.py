"""A wrong password costs the same whether or not the account exists."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from urr_auth.appkeys import ACCOUNTS_KEY
from urr_auth.passwords import Passwords, Verification
from urr_auth.settings import Argon2Settings, AuthSettings
from urr_auth.testing import DEFAULT_EMAIL, AuthApi

Client = TestClient[web.Request, web.Application]
StartClient = Callable[[AuthSettings], Awaitable[Client]]
LOGIN = "/api/v1/auth/login"


async def test_an_unknown_email_is_checked_against_a_real_argon2_hash(
    client: Client, api: AuthApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.register()
    app = client.app
    assert app is not None
    passwords = app[ACCOUNTS_KEY].passwords
    verified: list[str] = []
    real_verify = passwords.verify

    async def spy(stored_hash: str, password: str) -> Verification:
        verified.append(stored_hash)
        return await real_verify(stored_hash, password)

    monkeypatch.setattr(passwords, "verify", spy)

    unknown = await client.post(LOGIN, json={"email": "nobody@example.com", "password": "guess-1"})
    known = await client.post(LOGIN, json={"email": DEFAULT_EMAIL, "password": "guess-2"})

    assert unknown.status == known.status == 401
    assert len(verified) == 2
    dummy, real = verified
    assert dummy.startswith("$argon2id$")
    assert real.startswith("$argon2id$")
    assert dummy != real
    # The dummy hash carries today's parameters, so it costs what a real one does.
    assert dummy.split("$")[3] == real.split("$")[3]


async def test_the_dummy_hash_is_made_at_start_with_the_configured_parameters(
    settings: AuthSettings,
) -> None:
    passwords = Passwords(settings.argon2)
    try:
        with pytest.raises(RuntimeError, match="start"):
            await passwords.verify_unknown_user("anything")
        await passwords.start()
        outcome = await passwords.verify_unknown_user("anything")
    finally:
        passwords.close()
    assert outcome == Verification(matches=False)


async def test_wrong_password_timings_match_for_known_and_unknown_users(
    make_settings: Callable[..., AuthSettings], start_client: StartClient
) -> None:
    # Costly enough (about 20 ms here) that argon2, not HTTP or SQL, dominates each login.
    argon2 = {"time_cost": 2, "memory_cost_kib": 16 * 1024, "parallelism": 1}
    client = await start_client(make_settings(argon2=argon2))
    await AuthApi(client).register()

    async def attempt(email: str) -> float:
        started = time.perf_counter()
        response = await client.post(LOGIN, json={"email": email, "password": "wrong guess"})
        await response.read()
        assert response.status == 401
        return time.perf_counter() - started

    await attempt("warm-up@example.com")
    known: list[float] = []
    unknown: list[float] = []
    for _ in range(9):  # interleaved, so machine load drifts hit both series alike
        known.append(await attempt(DEFAULT_EMAIL))
        unknown.append(await attempt("nobody@example.com"))

    ratio = statistics.median(unknown) / statistics.median(known)
    # Without the dummy verification the unknown path skips argon2 and runs several times
    # faster; a generous band keeps a busy machine from making this flaky.
    assert 0.5 < ratio < 2.0, (known, unknown)


async def test_hashing_runs_on_worker_threads_while_the_loop_keeps_serving() -> None:
    threads: list[str] = []
    # About 50 ms per hash here: long enough that a blocked loop could not tick meanwhile.
    costly = Argon2Settings(time_cost=3, memory_cost_kib=32 * 1024, parallelism=1)
    passwords = Passwords(
        costly, observe=lambda _op, _s: threads.append(threading.current_thread().name)
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        await passwords.start()
        stored = await passwords.hash("a password to check")
        outcome = await passwords.verify(stored, "a password to check")
    finally:
        ticking.cancel()
        passwords.close()

    assert outcome == Verification(matches=True, needs_rehash=False)
    assert len(threads) == 3
    assert all(name.startswith("argon2") for name in threads), threads
    assert ticks >= 10  # the loop ran other tasks during three hashes
