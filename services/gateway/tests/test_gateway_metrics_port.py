"""``python -m urr_gateway`` serves /metrics on its internal metrics port only (issue 16).

The weakness lived in wiring (every service's public port answered /metrics, telling anyone
why a forged token failed and when limits failed open), so this drives the real process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp
import pytest

from urr_devstack.procs import free_port


async def _wait(session: aiohttp.ClientSession, url: str, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert loop.time() < deadline, f"{url} never answered 200"
        await asyncio.sleep(0.2)


@pytest.mark.timeout(120)
async def test_the_gateway_process_keeps_metrics_off_its_public_port(redis_url, tmp_path):
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
            await _wait(session, f"http://127.0.0.1:{port}/health/live", 90)
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
