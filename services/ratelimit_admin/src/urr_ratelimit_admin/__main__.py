"""``python -m urr_ratelimit_admin``: the Admin API and the periodic republish to Redis."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from urr_common.clients import open_postgres, open_redis
from urr_common.logs import configure_logging
from urr_common.service import run, serve
from urr_common.settings import SettingsError, load_settings
from urr_ratelimit_admin import store
from urr_ratelimit_admin.app import create_app, republish_loop
from urr_ratelimit_admin.publisher import PolicyPublisher
from urr_ratelimit_admin.settings import RatelimitAdminSettings


async def serve_admin(settings: RatelimitAdminSettings) -> None:
    async with open_postgres(settings.postgres) as pool, open_redis(settings.redis) as redis:
        await store.migrate(pool)
        async with pool.acquire() as conn:
            await store.seed_default_policies(conn)
        publisher = PolicyPublisher(
            redis,  # type: ignore[arg-type]
            trial_browsers=settings.local_trial.browsers,
        )
        app = create_app(settings, pool, publisher)
        stop = asyncio.Event()

        async def republish(_: web.Application) -> AsyncIterator[None]:
            every = settings.publish.republish_every_s
            task = asyncio.create_task(republish_loop(pool, publisher, every, stop))
            yield
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.cleanup_ctx.append(republish)
        await serve(app, settings.http)


def main() -> None:
    try:
        settings = load_settings(RatelimitAdminSettings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log, service=settings.service_name)
    run(lambda: serve_admin(settings), use_uvloop=settings.http.use_uvloop)


if __name__ == "__main__":
    main()
