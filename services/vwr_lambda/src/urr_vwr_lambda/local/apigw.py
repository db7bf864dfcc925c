"""The API Gateway emulator (port 3010): HTTP in, proxy events to the API function, HTTP out.

``python -m urr_vwr_lambda.local.apigw``. Settings: ``VwrSettings`` (``URR_HTTP__PORT``,
``URR_AWS__ENDPOINT_URL``, ``URR_TABLES__*``, ``URR_VWR_TOKENS__*`` ...).

Like API Gateway in front of Lambda, concurrent requests go to separate worker processes
(``URR_LOCAL_API_PROCESSES``, default 4), each running the real ``urr_vwr_lambda.api.handler``
one invocation at a time with its settings read from the same environment. Tests pass their own
runtime instead and the handler runs on a thread of this process.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram

from urr_common.logs import configure_logging
from urr_common.metrics import LATENCY_BUCKETS_S, loop_observer
from urr_common.service import (
    READINESS_KEY,
    REGISTRY_KEY,
    create_service_app,
    run,
    serve,
    settle_heap,
)
from urr_common.settings import load_settings
from urr_vwr_lambda.api import Handler, make_handler
from urr_vwr_lambda.keys import ensure_local_keys
from urr_vwr_lambda.local import GC_GEN0_THRESHOLD
from urr_vwr_lambda.local.apigw_server import ApiSite
from urr_vwr_lambda.local.containers import Containers, LoopExecutor, sticky_key
from urr_vwr_lambda.local.pipe_container import LoopContainer
from urr_vwr_lambda.local.proxy_events import http_response, rest_event, warmup_event
from urr_vwr_lambda.local.throttle import (
    INVOKER_KEY,
    READS,
    THROTTLE_RETRY_AFTER_S,
    Invoker,
    Pending,
    make_invoker,
    throttled,
)
from urr_vwr_lambda.runtime import VwrRuntime
from urr_vwr_lambda.settings import VwrSettings

CONTAINERS_KEY = web.AppKey("vwr_api_containers", Containers)

__all__ = [
    "CONTAINERS_KEY",
    "INVOKER_KEY",
    "THROTTLE_RETRY_AFTER_S",
    "Invoker",
    "Pending",
    "create_app",
    "main",
    "throttled",
]


def origin_headers(runtime: VwrRuntime) -> dict[str, str]:
    """The origin-verify header with the current value, when the check is on."""
    gates = runtime.gates
    if gates.origin is None:
        return {}
    values = gates.origin.values()
    return {gates.settings.origin.header: values[0]} if values else {}


def quiet_container() -> None:
    """Runs once in each container process: no EMF metrics line per invocation by default.

    In AWS, CloudWatch turns those lines into metrics; here nothing reads them, yet each one
    cost the container a JSON dump and a write, and the devstack supervisor a relayed line
    (per check and per assign, about one line per request). The emulator's own Prometheus
    histograms time every call. ``POWERTOOLS_METRICS_DISABLED=false`` set by the user keeps
    the lines (setdefault: an explicit choice wins).
    """
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")


def settle_container() -> None:
    """Runs once in each container after its warm-up: the heap it built (boto3's models,
    powertools, the function and its clients) kept out of every collection, young objects
    collected less often (``settle_heap``, as the emulator's own process and the edge do).

    A container allocates thousands of short-lived objects per invocation, so at CPython's
    default threshold (700) a young collection ran every invocation or so, and each older one
    walked the whole imported heap; what a container keeps between invocations (its copies of
    places and counters) is still collected, only less often.
    """
    settle_heap(GC_GEN0_THRESHOLD)


def invoke_in_worker(event: dict[str, Any]) -> dict[str, Any]:
    """Runs in a worker process: the deployed entry point, settings from the environment."""
    from urr_vwr_lambda.api import handler

    return handler(event, None)


def create_app(
    settings: VwrSettings,
    *,
    registry: CollectorRegistry | None = None,
    runtime: VwrRuntime | None = None,
) -> web.Application:
    """The emulator app; ``runtime`` lets tests share theirs (settings, clock, clients)."""
    app = create_service_app(settings, registry=registry)
    in_process = runtime is not None or settings.local_api_processes == 0
    the_runtime = runtime or VwrRuntime(settings)
    local_handler: Handler = make_handler(lambda: the_runtime)

    # Where a call's time goes: waiting for a free container, or the whole invocation.
    waited = Histogram(
        "urr_vwr_apigw_container_wait_seconds",
        "Time a call waited for a free container in the API Gateway emulator",
        ["kind"],
        registry=app[REGISTRY_KEY],
        buckets=LATENCY_BUCKETS_S,
    )
    invoked = Histogram(
        "urr_vwr_apigw_invocation_seconds",
        "Time from a free container to the function's answer, reads (GET) or writes",
        ["kind"],
        registry=app[REGISTRY_KEY],
        buckets=LATENCY_BUCKETS_S,
    )

    # Each label's child looked up once, observed without prometheus_client's lock (only the
    # event loop observes): ``labels()`` per call cost more than the observation.
    timers = {
        read: (loop_observer(waited.labels(kind)), loop_observer(invoked.labels(kind)))
        for read, kind in ((True, "read"), (False, "write"))
    }

    def observe(read: bool, waited_s: float, ran_s: float) -> None:
        wait_timer, run_timer = timers[read]
        wait_timer(waited_s)
        run_timer(ran_s)

    async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
        # The function is synchronous (boto3); it never runs on the event loop.
        workers: list[Executor | LoopExecutor]
        if in_process:
            workers = [ThreadPoolExecutor(max_workers=4, thread_name_prefix="vwr-api")]
        else:
            spawn = multiprocessing.get_context("spawn")
            workers = [
                LoopContainer(spawn, initializer=quiet_container)
                for _ in range(settings.local_api_processes)
            ]
        containers = Containers(workers, observe=observe)
        app[CONTAINERS_KEY] = containers
        if not in_process:
            # Like provisioned concurrency: each container imports the function and builds
            # its clients now, so the first visitors do not pay a cold start of seconds.
            # With the origin check on, the warm-up carries the header as CloudFront would,
            # or it would be refused before it builds the function's clients.
            origin = await asyncio.to_thread(origin_headers, the_runtime)
            await containers.warm(invoke_in_worker, warmup_event(origin))
            await containers.warm(settle_container)
        try:
            yield
        finally:
            containers.shutdown()
        if "dynamodb" in the_runtime.__dict__:
            the_runtime.dynamodb.close()

    app.cleanup_ctx.append(executor_ctx)

    async def dynamodb_ready() -> None:
        await asyncio.to_thread(the_runtime.store.active_event_ids)

    app[READINESS_KEY].add_check("dynamodb", dynamodb_ready)

    async def run(event: dict[str, Any], key: str | None, read: bool) -> dict[str, Any]:
        containers = app[CONTAINERS_KEY]
        result: dict[str, Any]
        if in_process:
            result = await containers.invoke(local_handler, event, None, key=key, read=read)
        else:
            result = await containers.invoke(invoke_in_worker, event, key=key, read=read)
        return result

    invoker = app[INVOKER_KEY] = make_invoker(settings, app[REGISTRY_KEY], run)

    async def invoke(request: web.Request) -> web.Response:
        read = request.method in READS
        if invoker.turned_away(read):
            return throttled()
        pending = invoker.pending(read)
        pending.count += 1  # while the body is read, as before
        try:
            body = await request.read()
        finally:
            pending.count -= 1
        event = rest_event(request, body)
        return http_response(await invoker.call(event, sticky_key(request.path, body), read))

    app.router.add_route("*", "/{tail:.*}", invoke)
    return app


def main() -> None:
    settings = load_settings(VwrSettings)
    configure_logging(settings.log, service="urr-vwr-apigw")
    if settings.create_missing_keys:
        ensure_local_keys(settings.vwr_tokens)

    async def serve_app() -> None:
        app = create_app(settings)
        settle_heap(GC_GEN0_THRESHOLD)
        if settings.local_api_server == "aiohttp":
            await serve(app, settings.http)
            return

        def site(runner: web.AppRunner, host: str, port: int, reuse_port: bool) -> ApiSite:
            return ApiSite(
                runner,
                host,
                port,
                max_body_bytes=settings.http.max_body_bytes,
                drain_timeout_s=settings.http.shutdown_timeout_s,
                reuse_port=reuse_port or None,
            )

        await serve(app, settings.http, site=site)

    run(serve_app, use_uvloop=settings.http.use_uvloop)


if __name__ == "__main__":
    main()
