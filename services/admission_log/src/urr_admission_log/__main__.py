"""``python -m urr_admission_log``: the log API, the queue-events consumer and the signer."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from urr_admission_log import store
from urr_admission_log.app import create_app
from urr_admission_log.consumer import LogMetrics, consume, sign_heads
from urr_admission_log.settings import AdmissionLogSettings
from urr_common.clients import open_postgres
from urr_common.logs import configure_logging
from urr_common.service import run, serve
from urr_common.settings import SettingsError, load_settings
from urr_common.tokens import KeySet, load_or_create_signing_key, load_verification_keys


async def serve_log(settings: AdmissionLogSettings) -> None:
    key = load_or_create_signing_key(
        settings.tree_heads.private_key_file, settings.tree_heads.key_id
    )
    keys = KeySet([key.verification_key()])
    for previous in load_verification_keys(settings.tree_heads.previous_public_key_files):
        keys.add(previous)
    registry = CollectorRegistry()
    metrics = LogMetrics(registry)
    stop = asyncio.Event()
    async with open_postgres(settings.postgres) as pool:
        await store.migrate(pool)
        app = create_app(settings, pool, keys, registry=registry)

        async def loops(_: web.Application) -> AsyncIterator[None]:
            tasks = [
                asyncio.create_task(consume(settings, pool, metrics, stop)),
                asyncio.create_task(sign_heads(settings, pool, key, metrics, stop)),
            ]
            yield
            stop.set()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        app.cleanup_ctx.append(loops)
        await serve(app, settings.http)


def main() -> None:
    try:
        settings = load_settings(AdmissionLogSettings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log, service=settings.service_name)
    run(lambda: serve_log(settings), use_uvloop=settings.http.use_uvloop)


if __name__ == "__main__":
    main()
