"""``URR_WORKERS=2``: one Prometheus view of all workers, whichever worker a scrape reaches."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from urr_devstack.procs import free_port

REQUESTS = 40


def proxied_requests_and_pids(exposition: str) -> tuple[float, set[str]]:
    """Proxied 2xx answers counted in this scrape, and the worker pids it has samples of."""
    total = 0.0
    pids: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "urr_http_requests_total" and "tail" in sample.labels["route"]:
                total += sample.value
            if sample.name == "urr_http_requests_in_flight":
                pids.add(sample.labels["pid"])
    return total, pids


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_every_worker_answers_metrics_for_all_workers(redis_url, tmp_path):
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    port, metrics_port = free_port(), free_port()
    dead = free_port()
    env = {
        **os.environ,
        "URR_HTTP__PORT": str(port),
        "URR_METRICS__PORT": str(metrics_port),
        "URR_WORKERS": "2",
        "URR_INTERNAL__PORT": str(free_port()),
        "URR_REDIS__URL": redis_url,
        "URR_UPSTREAMS__TICKET": str(upstream.make_url("")).rstrip("/"),
        "URR_ACCESS_TRUST__JWKS_URL": f"http://127.0.0.1:{dead}/jwks.json",
        "URR_ENTRY_TRUST__JWKS_URL": f"http://127.0.0.1:{dead}/jwks.json",
        "URR_LOG__LEVEL": "INFO",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "gateway.log"
    log = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "urr_gateway", env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        # A new connection per request, so SO_REUSEPORT spreads them over both workers.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            deadline = time.monotonic() + 90
            while log_path.read_bytes().count(b"worker_started") < 2 or not await _ready(
                session, port
            ):
                assert time.monotonic() < deadline, log_path.read_text()
                await asyncio.sleep(0.2)
            for index in range(REQUESTS):
                async with session.get(f"http://127.0.0.1:{port}/api/v1/events/{index}") as answer:
                    assert answer.status == 200
            # A request is counted just after its answer is written (``observe`` in the
            # serving coroutine's ``finally``): a scrape served by the other worker at once
            # can come before the last count, so wait for it (a moment), then every scrape
            # must show all of them.
            counted = time.monotonic() + 5
            while True:
                async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as answer:
                    total, _ = proxied_requests_and_pids(await answer.text())
                if total == REQUESTS or time.monotonic() > counted:
                    break
                await asyncio.sleep(0.05)
            seen_pids: set[str] = set()
            for _ in range(6):
                # Both workers share the metrics listener's port (SO_REUSEPORT) as the public one.
                async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as answer:
                    total, pids = proxied_requests_and_pids(await answer.text())
                assert total == REQUESTS
                seen_pids |= pids
            # Both workers' samples are in the view (the in-flight gauge is kept per pid).
            assert len(seen_pids) >= 2, seen_pids
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()
        await upstream.close()
    assert process.returncode == 0, log_path.read_text()


async def _ready(session: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with session.get(f"http://127.0.0.1:{port}/health/ready") as answer:
            return answer.status == 200
    except aiohttp.ClientError:
        return False
