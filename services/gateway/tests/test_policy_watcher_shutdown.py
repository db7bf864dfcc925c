"""The policy watcher stops before the Redis client it listens on closes: a gateway's
shutdown is not reported as a lost policy channel (it was, on every shutdown)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis
from structlog.testing import capture_logs

from urr_gateway.ratelimit.policyset import PolicyWatcher, install_policy_watcher


async def test_shutdown_closes_the_watcher_before_its_redis(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    watcher = PolicyWatcher(client, poll_s=0.2)
    app = web.Application()

    async def redis_client(_: web.Application) -> AsyncIterator[None]:
        yield
        await client.aclose()  # as the gateway's own clients context closes it

    app.cleanup_ctx.append(redis_client)
    install_policy_watcher(app, watcher)  # installed after the client, as in build_apps
    runner = web.AppRunner(app, handle_signals=False)
    with capture_logs() as logs:
        await runner.setup()
        await asyncio.sleep(0.5)  # subscribed and listening
        await runner.cleanup()
    events = [entry["event"] for entry in logs]
    assert "ratelimit_policy_channel_lost" not in events, logs
    assert not watcher._tasks
