"""The EventBridge stand-in: invokes the advancer every ``interval_s`` (one cycle each time).

``python -m urr_vwr_lambda.local.scheduler``; ``URR_INTERVAL_S`` sets the pace (tests use a
second or less), the advancer itself reads ``VwrSettings``. Health on port 3012 (3011 is
the gateway's internal listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from urr_common.logs import configure_logging, get_logger
from urr_common.service import READINESS_KEY, REGISTRY_KEY, create_service_app, run, serve
from urr_common.settings import load_settings
from urr_vwr_lambda import advancer
from urr_vwr_lambda.keys import ensure_local_keys
from urr_vwr_lambda.runtime import VwrRuntime
from urr_vwr_lambda.settings import SchedulerSettings, VwrSettings

_LOG = get_logger(__name__)


@dataclass
class SchedulerState:
    last_success: float | None = None
    last_error: str | None = None
    runs: int = 0


STATE_KEY = web.AppKey("vwr_scheduler_state", SchedulerState)


def create_app(
    settings: SchedulerSettings,
    runtime: VwrRuntime,
    *,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    app = create_service_app(settings, registry=registry)
    state = SchedulerState()
    app[STATE_KEY] = state
    runs = Counter(
        "urr_vwr_advancer_runs",
        "Advancer invocations by outcome",
        ["outcome"],
        registry=app[REGISTRY_KEY],
    )
    interval = settings.interval_s
    event = {"source": "urr.local.scheduler", "steps": 1, "intervalSeconds": interval}

    async def loop() -> None:
        while True:
            started = time.monotonic()
            try:
                await asyncio.to_thread(advancer.run, runtime, event, None)
            except Exception as exc:  # a failed run is logged and retried next interval
                state.last_error = f"{type(exc).__name__}: {exc}"[:300]
                runs.labels("error").inc()
                _LOG.exception("advancer_failed")
            else:
                state.last_success = time.monotonic()
                state.last_error = None
                runs.labels("ok").inc()
            state.runs += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def loop_ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if "dynamodb" in runtime.__dict__:
            runtime.dynamodb.close()

    app.cleanup_ctx.append(loop_ctx)

    async def advancer_ready() -> None:
        recent = state.last_success is not None and (
            time.monotonic() - state.last_success < 3 * interval + 5
        )
        if not recent:
            raise RuntimeError(state.last_error or "no successful run yet")

    app[READINESS_KEY].add_check("advancer", advancer_ready)
    return app


def main() -> None:
    settings = load_settings(SchedulerSettings)
    vwr_settings = load_settings(VwrSettings)
    configure_logging(settings.log, service="urr-vwr-scheduler")
    if vwr_settings.create_missing_keys:
        ensure_local_keys(vwr_settings.vwr_tokens)
    runtime = VwrRuntime(vwr_settings)

    async def serve_app() -> None:
        await serve(create_app(settings, runtime), settings.http)

    run(serve_app, use_uvloop=settings.http.use_uvloop)


if __name__ == "__main__":
    main()
