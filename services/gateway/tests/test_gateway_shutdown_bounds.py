"""A worker's shutdown is bounded at every step (a gateway worker once hung 20 s in its
shutdown and was killed by the supervisor: ``worker_killed``, exit code 1).

The attack: a cleanup hook that swallows its cancellation and never returns (what a Redis or
Kafka driver does when it turns a cancel into a connection error that a loop retries), and a
SIGTERM that reaches the workers while they are still starting."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from aiohttp import web

from urr_devstack.procs import free_port
from urr_gateway.app import create_app
from urr_gateway.server import CLEANUP_MARGIN_S, GatewayApps, serve_gateway

SHUTDOWN_TIMEOUT_S = 1.0


async def test_a_cleanup_hook_that_never_returns_does_not_hold_up_the_shutdown(
    local_gateway_settings,
):
    settings = local_gateway_settings(shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    released = asyncio.Event()
    swallowed = 0
    later_hook_ran = asyncio.Event()

    async def stuck(_: web.Application) -> None:
        nonlocal swallowed
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                swallowed += 1  # a driver's "connection error", retried

    async def later(_: web.Application) -> None:
        later_hook_ran.set()

    internal = web.Application()
    internal.on_cleanup.append(stuck)
    public = create_app(settings)
    public.on_cleanup.append(later)
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve_gateway(GatewayApps(public=public, internal=internal), settings, stop=stop)
    )
    try:
        await asyncio.sleep(0.5)
        assert not server.done()
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(asyncio.shield(server), SHUTDOWN_TIMEOUT_S + CLEANUP_MARGIN_S + 2)
        took = time.monotonic() - started
        # Within the budget, and the public app (cleaned up after the internal one, whose
        # hook never returned) was still closed.
        assert took < SHUTDOWN_TIMEOUT_S + CLEANUP_MARGIN_S + 1, took
        assert later_hook_ran.is_set()
        assert swallowed >= 1  # it was cancelled, and left behind
    finally:
        released.set()
        stop.set()
        await asyncio.wait({server}, timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("after_s", [0.0, 0.3, 1.0])
async def test_workers_told_to_stop_while_starting_stop_cleanly(redis_url, tmp_path, after_s):
    """SIGTERM right after the workers say they started (building their apps, opening their
    listeners, or just serving): every worker stops well inside the supervisor's deadline and
    the gateway exits 0 (a worker ended by the signal before it could handle it was counted
    as a failure; one that hung was killed)."""
    dead = free_port()
    env = {
        **os.environ,
        "URR_HTTP__PORT": str(free_port()),
        "URR_METRICS__PORT": str(free_port()),
        "URR_INTERNAL__PORT": str(free_port()),
        "URR_WORKERS": "2",
        "URR_HTTP__SHUTDOWN_TIMEOUT_S": "5",
        "URR_REDIS__URL": redis_url,
        "URR_UPSTREAMS__TICKET": f"http://127.0.0.1:{dead}",
        "URR_ACCESS_TRUST__JWKS_URL": f"http://127.0.0.1:{dead}/jwks.json",
        "URR_ENTRY_TRUST__JWKS_URL": f"http://127.0.0.1:{dead}/jwks.json",
        "URR_LOG__LEVEL": "INFO",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "urr_gateway", env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 90
            while log_path.read_bytes().count(b"worker_started") < 2:
                assert time.monotonic() < deadline, log_path.read_text()
                assert process.returncode is None, log_path.read_text()
                await asyncio.sleep(0.01)
            await asyncio.sleep(after_s)
            process.send_signal(signal.SIGTERM)
            # The supervisor kills a worker after shutdown_timeout_s + 5 s.
            returncode = await asyncio.wait_for(process.wait(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    text = log_path.read_text()
    assert returncode == 0, text
    assert "worker_killed" not in text, text
    assert "shutdown_task_stuck" not in text, text
