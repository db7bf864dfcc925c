"""Whoever reaches the queue directly cannot speak for a user, an admin or the ticket service.

Before issue 16 the queue believed ``X-User-Id``/``X-User-Role`` from anyone, and served the
unauthenticated ``POST /internal/v1/queue/{eventId}/complete`` on its public port, which
ended any user's session. These tests attack both, in process and on the real process.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from urr_common.identity import ASSERTION_HEADER
from urr_common.identity_testing import act_as, as_gateway, identity_env, mint
from urr_common.settings import RedisSettings, SettingsError, load_settings
from urr_devstack.procs import free_port
from urr_queue.app import AUDIENCE
from urr_queue.settings import QueueSettings

EVENT = "idt-1"
LIAR = {"X-User-Id": "admin-1", "X-User-Role": "admin", "X-User-Email": "a@example.test"}
ADMIN = act_as("admin-1", "admin")


async def test_x_user_role_admin_neither_creates_nor_deletes_an_event(
    single_redis: RedisSettings, queue_client: Any
) -> None:
    client = await queue_client(single_redis)
    path = f"/api/v1/admin/queue/{EVENT}"
    refused = await client.put(path, json={"capacity": 2}, headers=LIAR)
    assert refused.status == 401
    assert refused.content_type == "application/problem+json"
    assert (await refused.json())["code"] == "identity_required"
    assert (await client.get(path, headers=ADMIN)).status == 404  # nothing was created
    assert (await client.put(path, json={"capacity": 2}, headers=ADMIN)).status == 201
    assert (await client.delete(path, headers=LIAR)).status == 401
    assert (await client.delete(path, headers=act_as("u-1", "user"))).status == 403
    assert (await client.get(path, headers=ADMIN)).status == 200  # still there


async def test_x_user_id_does_not_enter_or_leave_for_someone(
    single_redis: RedisSettings, queue_client: Any
) -> None:
    client = await queue_client(single_redis)
    await client.put(f"/api/v1/admin/queue/{EVENT}", json={"capacity": 2}, headers=ADMIN)
    entered = await client.post(f"/api/v1/queue/{EVENT}/enter", headers=act_as("victim"))
    assert entered.status in (200, 201)
    for action, method in (("enter", "POST"), ("status", "GET"), ("leave", "POST")):
        answer = await client.request(
            method, f"/api/v1/queue/{EVENT}/{action}", headers={"X-User-Id": "victim"}
        )
        assert answer.status == 401, action
    status = await client.get(f"/api/v1/queue/{EVENT}/status", headers=act_as("victim"))
    assert (await status.json())["status"] in ("waiting", "admitted")
    # The capacity feed is public by design: no assertion needed.
    assert (await client.get(f"/api/v1/queue/{EVENT}/capacity")).status == 200


async def test_an_assertion_for_another_request_or_upstream_is_refused(
    single_redis: RedisSettings, queue_client: Any
) -> None:
    client = await queue_client(single_redis)
    path = f"/api/v1/admin/queue/{EVENT}"
    for token in (
        mint("admin-1", "admin", audience="ticket", method="PUT", path=path),
        mint("admin-1", "admin", audience=AUDIENCE, method="GET", path=path),
        mint("admin-1", "admin", audience=AUDIENCE, method="PUT", path=path + "x"),
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.",
    ):
        answer = await client.put(path, json={"capacity": 2}, headers={ASSERTION_HEADER: token})
        assert answer.status == 401
        assert (await answer.json())["code"] == "invalid_identity"


async def test_internal_routes_are_not_on_the_public_port_and_need_a_credential(
    single_redis: RedisSettings, queue_client: Any, internal_of: Any, aiohttp_client: Any
) -> None:
    client = await queue_client(single_redis)
    await client.put(f"/api/v1/admin/queue/{EVENT}", json={"capacity": 2}, headers=ADMIN)
    path = f"/internal/v1/queue/{EVENT}/complete"
    assert (await client.post(path, json={"userId": "u-1"}, headers=ADMIN)).status == 404
    internal = await internal_of(client)
    stranger = await aiohttp_client(internal.app)
    for headers in ({}, {"Authorization": "Bearer not-the-ticket-secret-at-all-000"}):
        refused = await stranger.post(path, json={"userId": "u-1"}, headers=headers)
        assert refused.status == 401
        assert (await refused.json())["code"] == "service_credential_required"
    assert (await internal.post(path, json={"userId": "u-1"})).status == 200


def test_internal_settings_are_validated(single_redis: RedisSettings) -> None:
    with pytest.raises(SettingsError, match="URR_INTERNAL__CALLERS"):
        load_settings(QueueSettings, internal={"callers": {"ticket": "short"}})
    with pytest.raises(SettingsError, match="must differ"):
        load_settings(QueueSettings, http={"port": 3007}, internal={"port": 3007})
    with pytest.raises(SettingsError, match="URR_IDENTITY__JWKS"):
        load_settings(QueueSettings, identity={"jwks": "[]"})
    assert load_settings(QueueSettings).internal.port_beside(3007) == 5007


async def _wait_listening(port: int, deadline: float) -> None:
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/health/live"):
                    return  # any answer: the port is served
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"port {port} never answered"
            await asyncio.sleep(0.2)


@pytest.mark.timeout(90)
async def test_the_real_process_serves_internal_routes_only_on_its_internal_port(
    single_redis: RedisSettings, tmp_path: Path
) -> None:
    public, internal = free_port(), free_port()
    secret = "ticket-process-secret-0123456789abcdef"
    env = {
        **os.environ,
        **identity_env(),
        "URR_HTTP__PORT": str(public),
        "URR_HTTP__USE_UVLOOP": "false",
        "URR_METRICS__PORT": str(free_port()),
        "URR_INTERNAL__PORT": str(internal),
        "URR_INTERNAL__CALLERS": '{"ticket": "' + secret + '"}',
        "URR_REDIS__URL": single_redis.url,
        "URR_ENTRY_TOKENS__PRIVATE_KEY_FILE": str(tmp_path / "entry" / "local-1.pem"),
        "URR_VWR_TRUST__PUBLIC_KEY_FILES": f'["{tmp_path}/vwr/*.pem"]',
        "URR_QUEUE_EVENTS__ENABLED": "false",
        "URR_RESERVATION_EVENTS__ENABLED": "false",
        "URR_TIER1_PLACES__ENABLED": "false",
        "URR_CONSOLE__ENABLED": "false",
        "URR_ADMISSION__ENABLED": "false",
        "URR_LOG__LEVEL": "WARNING",
    }
    with (tmp_path / "queue.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "urr_queue", env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        await _wait_listening(public, deadline)
        await _wait_listening(internal, deadline)
        base = f"http://127.0.0.1:{public}"
        async with aiohttp.ClientSession() as http:
            admin = f"{base}/api/v1/admin/queue/{EVENT}"
            async with http.put(admin, json={"capacity": 1}, headers=LIAR) as answer:
                assert answer.status == 401
            gateway = aiohttp.ClientSession(middlewares=(as_gateway(AUDIENCE),))
            async with gateway, gateway.put(admin, json={"capacity": 1}, headers=ADMIN) as answer:
                assert answer.status in (200, 201), await answer.text()
            complete = f"/internal/v1/queue/{EVENT}/complete"
            async with http.post(base + complete, json={"userId": "u-1"}) as answer:
                assert answer.status == 404
            inside = f"http://127.0.0.1:{internal}{complete}"
            async with http.post(inside, json={"userId": "u-1"}) as answer:
                assert answer.status == 401
            bearer = {"Authorization": f"Bearer {secret}"}
            async with http.post(inside, json={"userId": "u-1"}, headers=bearer) as answer:
                assert answer.status == 200, await answer.text()
                assert await answer.json() == {"released": False}
            # The internal port serves nothing else.
            async with http.get(f"http://127.0.0.1:{internal}/api/v1/queue/x/capacity") as answer:
                assert answer.status in (401, 404)
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)


async def test_a_service_configures_an_event_on_the_internal_listener_only(
    single_redis: RedisSettings, queue_client: Any, internal_of: Any
) -> None:
    client = await queue_client(single_redis)
    internal = await internal_of(client)
    path = f"/internal/v1/queue/{EVENT}/config"
    assert (await client.put(path, json={"capacity": 4}, headers=ADMIN)).status == 404
    created = await internal.put(path, json={"capacity": 4})
    assert created.status == 201, await created.text()
    read = await client.get(f"/api/v1/admin/queue/{EVENT}", headers=ADMIN)
    assert (await read.json())["config"]["capacity"] == 4
