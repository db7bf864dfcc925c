"""``python -m urr_gateway``: worker processes, SIGTERM drain; the internal listener."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from urr_devstack.procs import free_port
from urr_gateway.app import create_app
from urr_gateway.server import GatewayApps, serve_gateway


async def _slow_upstream() -> TestServer:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0")))
        return web.json_response({"pid": os.getpid(), "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def _wait_ready(session: aiohttp.ClientSession, url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


# Three interpreters start here; on a loaded 2-core machine that alone takes seconds.
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_workers_share_the_port_and_drain_on_sigterm(redis_url, tmp_path):
    upstream = await _slow_upstream()
    port = free_port()
    dead = free_port()
    env = {
        **os.environ,
        "URR_HTTP__PORT": str(port),
        "URR_HTTP__SHUTDOWN_TIMEOUT_S": "10",
        "URR_WORKERS": "2",
        "URR_INTERNAL__PORT": str(free_port()),
        "URR_METRICS__PORT": str(free_port()),
        "URR_REDIS__URL": redis_url,
        "URR_UPSTREAMS__TICKET": str(upstream.make_url("")).rstrip("/"),
        "URR_ACCESS_TRUST__JWKS_URL": f"http://127.0.0.1:{dead}/jwks.json",
        "URR_ENTRY_TRUST__JWKS_URL": f"http://127.0.0.1:{dead}/jwks.json",
        "URR_LOG__LEVEL": "INFO",
    }
    log = (tmp_path / "gateway.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "urr_gateway", env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, f"http://127.0.0.1:{port}/health/ready", 90)
            # Both workers come up (each logs its start).
            deadline = time.monotonic() + 60
            while (tmp_path / "gateway.log").read_bytes().count(b"worker_started") < 2:
                assert time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
                await asyncio.sleep(0.1)
            in_flight = asyncio.create_task(
                session.get(f"http://127.0.0.1:{port}/api/v1/events/x?s=1.5")
            )
            await asyncio.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            response = await in_flight
            assert response.status == 200
            assert (await response.json())["path"] == "/api/v1/events/x"
            response.release()
        returncode = await asyncio.wait_for(process.wait(), 20)
        assert returncode == 0, (tmp_path / "gateway.log").read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()
        await upstream.close()
    text = (tmp_path / "gateway.log").read_text()
    assert text.count('"event":"stopped"') == 2, text
    # Each worker tunes its own collector once listening (the default threshold).
    assert text.count('"event":"gc_tuned"') == 2, text
    assert text.count('"gen0_threshold":20000') == 2, text


async def test_the_internal_listener_serves_the_check_app_and_drains(local_gateway_settings):
    async def check(_):
        return web.json_response({"allowed": True})

    internal = web.Application()
    internal.router.add_post("/internal/v1/ratelimit/check", check)
    settings = local_gateway_settings()
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve_gateway(
            GatewayApps(public=create_app(settings), internal=internal), settings, stop=stop
        )
    )
    public = f"http://127.0.0.1:{settings.http.port}"
    private = f"http://127.0.0.1:{settings.internal.port}"
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, f"{public}/health/live")
            async with session.post(f"{private}/internal/v1/ratelimit/check") as response:
                assert (await response.json()) == {"allowed": True}
            # Not reachable through the public listener.
            async with session.post(f"{public}/internal/v1/ratelimit/check") as response:
                assert response.status == 404
    finally:
        stop.set()
        await server
    async with aiohttp.ClientSession() as session:
        for url in (f"{public}/health/live", f"{private}/internal/v1/ratelimit/check"):
            try:
                async with session.get(url):
                    raise AssertionError(f"{url} still answers")
            except aiohttp.ClientConnectorError:
                pass


@pytest.mark.timeout(120)
async def test_the_gateway_process_keeps_metrics_off_its_public_port(redis_url, tmp_path):
    """Issue 16: every public port answered /metrics (why a forged token failed, when limits
    failed open). The weakness lived in wiring, so this drives the real process."""
    port, metrics_port, dead = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "URR_HTTP__PORT": str(port),
        "URR_METRICS__PORT": str(metrics_port),
        "URR_INTERNAL__PORT": str(free_port()),
        "URR_REDIS__URL": redis_url,
        "URR_ACCESS_TRUST__JWKS_URL": f"http://127.0.0.1:{dead}/jwks.json",
        "URR_ENTRY_TRUST__JWKS_URL": f"http://127.0.0.1:{dead}/jwks.json",
        "URR_LOG__LEVEL": "WARNING",
    }
    log = (tmp_path / "gateway.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "urr_gateway", env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, f"http://127.0.0.1:{port}/health/live", 90)
            async with session.get(f"http://127.0.0.1:{port}/metrics") as public:
                assert public.status == 404
                assert "urr_http_requests" not in await public.text()
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as internal:
                assert internal.status == 200
                text = await internal.text()
            assert "urr_http_requests_total" in text
            assert "# TYPE urr_gateway_token_rejections_total counter" in text
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
        log.close()


def test_urr_native_1_refuses_to_start_without_the_compiled_build(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The image sets URR_NATIVE=1: a build that does not match its sources (or none) must
    stop the gateway with a clear message, not let it serve interpreted at a higher cost."""
    from urr_common import native
    from urr_gateway import __main__ as gateway_main

    stale = native.NativeStatus("1", frozenset(), "urr_gateway.chain changed since the build")
    monkeypatch.setattr(native, "status", lambda: stale)
    with pytest.raises(SystemExit) as stopped:
        gateway_main.main()
    assert stopped.value.code == 2
    assert "URR_NATIVE=1 but the mypyc build is not usable: urr_gateway.chain changed" in (
        capsys.readouterr().err
    )
