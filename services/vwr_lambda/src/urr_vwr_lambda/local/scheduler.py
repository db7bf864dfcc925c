"""The EventBridge stand-in: invokes the advancer every ``interval_s`` (one cycle each time).

``python -m urr_vwr_lambda.local.scheduler``; ``URR_INTERVAL_S`` sets the pace (tests use a
second or less), the advancer itself reads ``VwrSettings``. Health on port 3012 (3011 is
the gateway's internal listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

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


def last_positions(result: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(serving counter, next position) per event of the run's last cycle: the advancer
    reports every active event it could read, moved or not."""
    cycles = result.get("cycles") or [[]]
    return {
        str(outcome["eventId"]): (int(outcome["servingCounter"]), int(outcome["nextPosition"]))
        for outcome in cycles[-1]
    }


class PositionGauges:
    """The Tier-1 line per event (in AWS the advancer's EMF ``ServingCounter`` and
    ``NextPosition``): the gap is the crowd still in the room. An event missing from a run
    (closed, or its read failed) loses its series until it is back."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.serving = Gauge(
            "urr_vwr_serving_counter",
            "Highest Tier-1 position let through",
            ["event_id"],
            registry=registry,
        )
        self.next_position = Gauge(
            "urr_vwr_next_position",
            "Tier-1 positions handed out so far (the back of the line)",
            ["event_id"],
            registry=registry,
        )
        self._shown: set[str] = set()

    def show(self, positions: Mapping[str, tuple[int, int]]) -> None:
        for event_id, (serving, next_position) in positions.items():
            self.serving.labels(event_id).set(serving)
            self.next_position.labels(event_id).set(next_position)
        for gone in self._shown - set(positions):
            self.serving.remove(gone)
            self.next_position.remove(gone)
        self._shown = set(positions)


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
    positions = PositionGauges(app[REGISTRY_KEY])
    interval = settings.interval_s
    event = {"source": "urr.local.scheduler", "steps": 1, "intervalSeconds": interval}

    async def loop() -> None:
        while True:
            started = time.monotonic()
            try:
                result = await asyncio.to_thread(advancer.run, runtime, event, None)
            except Exception as exc:  # a failed run is logged and retried next interval
                state.last_error = f"{type(exc).__name__}: {exc}"[:300]
                runs.labels("error").inc()
                _LOG.exception("advancer_failed")
            else:
                state.last_success = time.monotonic()
                state.last_error = None
                runs.labels("ok").inc()
                positions.show(last_positions(result))
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
