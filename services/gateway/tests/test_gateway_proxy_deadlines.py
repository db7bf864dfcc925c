"""Issue 16 #2: deadlines on the client's body, a pool-wait timeout, a bulkhead per upstream.

The first tests drive the in-process gateway over real sockets; the last one starts
``python -m urr_gateway`` as a worker process with a small pool, as deployed, and attacks it
with slow uploads through raw sockets.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from urr_common.service import metrics_text
from urr_devstack.procs import free_port
from urr_gateway.app import UPSTREAM_CLIENT_KEY
from urr_gateway.settings import GatewaySettings, ProxySettings


async def send_raw(
    port: int, head: str, body: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
    return reader, writer


async def read_answer(
    reader: asyncio.StreamReader, timeout_s: float
) -> tuple[int, dict[str, str], bytes]:
    raw = await asyncio.wait_for(reader.read(65536), timeout_s)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def upload_head(path: str, length: int) -> str:
    return f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {length}\r\n\r\n"


async def test_a_client_body_that_stops_arriving_is_408_and_frees_the_connection(stack_factory):
    stack = await stack_factory(
        proxy=ProxySettings(body_timeout_s=1.0, min_body_rate_bytes_per_s=0, read_timeout_s=5.0)
    )
    assert stack.client.port is not None
    started = time.monotonic()
    reader, writer = await send_raw(
        stack.client.port, upload_head("/api/v1/events/upload", 100_000), b"x" * 10
    )
    try:
        status, headers, body = await read_answer(reader, 5.0)
    finally:
        writer.close()
    assert status == 408
    assert headers["content-type"] == "application/problem+json"
    assert orjson.loads(body)["code"] == "body_timeout"
    assert 0.9 < time.monotonic() - started < 3.0
    # The upstream saw the start of the upload; the connection that carried it is closed.
    assert stack.ticket.upload_chunks
    pool = stack.client.app[UPSTREAM_CLIENT_KEY].pool("ticket")
    for _ in range(50):
        if pool.open_connections == 0:
            break
        await asyncio.sleep(0.02)
    assert pool.open_connections == 0


async def test_a_dribbling_client_body_is_408_before_the_overall_deadline(stack_factory):
    stack = await stack_factory(
        proxy=ProxySettings(
            body_timeout_s=30.0, min_body_rate_bytes_per_s=2000, body_rate_grace_s=0.3
        )
    )
    assert stack.client.port is not None
    started = time.monotonic()
    reader, writer = await send_raw(stack.client.port, upload_head("/api/v1/events/upload", 10_000))

    async def dribble() -> None:
        for _ in range(40):  # 500 bytes/s: a quarter of the minimum
            writer.write(b"y" * 50)
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(dribble())
    try:
        status, _, body = await read_answer(reader, 5.0)
    finally:
        sender.cancel()
        writer.close()
    assert status == 408
    assert orjson.loads(body)["code"] == "body_timeout"
    assert time.monotonic() - started < 3.0


async def test_a_body_at_the_minimum_rate_or_better_passes(stack_factory):
    stack = await stack_factory(
        proxy=ProxySettings(
            body_timeout_s=30.0, min_body_rate_bytes_per_s=2000, body_rate_grace_s=0.3
        )
    )
    assert stack.client.port is not None
    reader, writer = await send_raw(stack.client.port, upload_head("/api/v1/events/upload", 5_000))
    try:
        for _ in range(10):  # 5,000 bytes/s over one second
            writer.write(b"z" * 500)
            await asyncio.sleep(0.1)
        status, _, body = await read_answer(reader, 5.0)
    finally:
        writer.close()
    assert status == 200
    assert orjson.loads(body)["received"] == 5_000


async def test_a_full_pool_answers_503_with_retry_after_while_other_upstreams_serve(
    stack_factory,
):
    stack = await stack_factory(
        proxy=ProxySettings(max_connections_per_host=1, pool_timeout_s=0.3, read_timeout_s=5.0)
    )
    holder = asyncio.create_task(stack.client.get("/api/v1/events/slow?s=1.5"))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    busy = await stack.client.get("/api/v1/events/other")
    assert busy.status == 503
    assert busy.headers["Retry-After"] == "1"
    assert busy.content_type == "application/problem+json"
    assert (await busy.json())["code"] == "upstream_busy"
    assert time.monotonic() - started < 1.2
    # The auth upstream has its own pool: unaffected.
    assert (await stack.client.get("/api/v1/auth/x")).status == 200
    assert (await holder).status == 200
    metrics = metrics_text(stack.client.app)
    assert 'urr_gateway_upstream_errors_total{kind="pool_timeout",upstream="ticket"} 1.0' in metrics


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pool_timeout_s", 0),
        ("body_timeout_s", 0),
        ("min_body_rate_bytes_per_s", -1),
        ("body_rate_grace_s", -1),
    ],
)
def test_proxy_deadline_settings_are_validated(field, value):
    from urr_common.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=f"URR_PROXY__{field.upper()}"):
        load_settings(GatewaySettings, proxy={field: value})


async def _upstreams() -> tuple[TestServer, TestServer, list[int]]:
    received: list[int] = []

    async def upload(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        received.append(total)
        return web.json_response({"received": total})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    servers = []
    for handler in (upload, echo):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
    return servers[0], servers[1], received


# One gateway interpreter starts here; on a loaded 2-core machine that alone takes seconds.
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_slow_uploads_to_one_upstream_do_not_delay_another(
    redis_url, tmp_path, gateway_process
):
    """Attack: uploads that send a few bytes and stall, as many as the auth pool holds.

    Before: one shared pool (``max_connections``) for every upstream and no body deadline:
    a GET to the ticket service waited behind the idle uploads. After: the uploads fill only
    the auth pool, a further auth request gets 503 after the pool wait, the ticket GET is
    served at once, and every stalled upload ends with 408 at its body deadline.
    """
    auth, ticket, received = await _upstreams()
    port = free_port()
    dead = free_port()
    env = {
        **os.environ,
        "URR_HTTP__PORT": str(port),
        "URR_WORKERS": "1",
        "URR_INTERNAL__PORT": str(free_port()),
        "URR_REDIS__URL": redis_url,
        "URR_UPSTREAMS__AUTH": str(auth.make_url("")).rstrip("/"),
        "URR_UPSTREAMS__TICKET": str(ticket.make_url("")).rstrip("/"),
        "URR_ACCESS_TRUST__JWKS_URL": f"http://127.0.0.1:{dead}/jwks.json",
        "URR_ENTRY_TRUST__JWKS_URL": f"http://127.0.0.1:{dead}/jwks.json",
        "URR_PROXY__MAX_CONNECTIONS": "2",
        "URR_PROXY__POOL_TIMEOUT_S": "1",
        "URR_PROXY__BODY_TIMEOUT_S": "4",
        "URR_PROXY__MIN_BODY_RATE_BYTES_PER_S": "0",
        "URR_LOG__LEVEL": "WARNING",
    }
    uploads: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        async with (
            gateway_process(env, tmp_path / "gateway.log"),
            aiohttp.ClientSession() as session,
        ):
            attack_started = time.monotonic()
            for _ in range(2):
                uploads.append(
                    await send_raw(port, upload_head("/api/v1/auth/upload", 1_000_000), b"a" * 10)
                )
            await asyncio.sleep(0.5)
            # The auth pool is full of stalled uploads ...
            started = time.monotonic()
            async with session.post(
                f"http://127.0.0.1:{port}/api/v1/auth/login", data=b"{}"
            ) as answer:
                assert answer.status == 503
                assert answer.headers["Retry-After"] == "1"
                assert (await answer.json())["code"] == "upstream_busy"
            assert 0.9 < time.monotonic() - started < 3.0
            # ... the ticket service is not affected.
            for _ in range(5):
                started = time.monotonic()
                async with session.get(f"http://127.0.0.1:{port}/api/v1/events/e1") as answer:
                    assert answer.status == 200
                    assert (await answer.json())["path"] == "/api/v1/events/e1"
                assert time.monotonic() - started < 0.5
            # Every stalled upload ends at its body deadline, and the pool serves again.
            for reader, _ in uploads:
                status, _, body = await read_answer(reader, 8.0)
                assert status == 408
                assert orjson.loads(body)["code"] == "body_timeout"
            assert time.monotonic() - attack_started < 8.0
            async with session.post(
                f"http://127.0.0.1:{port}/api/v1/auth/upload", data=b"b" * 1000
            ) as answer:
                assert answer.status == 200
                assert (await answer.json())["received"] == 1000
    finally:
        for _, writer in uploads:
            writer.close()
        await auth.close()
        await ticket.close()
    assert received[-1] == 1000


def test_the_body_read_deadline_follows_the_minimum_rate_and_stops_at_the_overall_one():
    from urr_gateway.proxy import body_read_deadline

    # Nothing received yet: the grace.
    assert body_read_deadline(100.0, 0, 160.0, min_rate=1000, grace_s=5.0) == 105.0
    # Each 1,000 bytes buy one more second at 1,000 B/s.
    assert body_read_deadline(100.0, 10_000, 160.0, min_rate=1000, grace_s=5.0) == 115.0
    # Never past the whole body's deadline.
    assert body_read_deadline(100.0, 10**9, 160.0, min_rate=1000, grace_s=5.0) == 160.0
    # No minimum rate: only the overall deadline.
    assert body_read_deadline(100.0, 0, 160.0, min_rate=0, grace_s=5.0) == 160.0
