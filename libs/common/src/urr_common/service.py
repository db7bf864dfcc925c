"""The skeleton every URR HTTP service is built on.

``create_service_app`` returns an ``aiohttp`` application with the shared middlewares (request
id and log context, metrics, problem+json errors), ``/health/live`` and ``/health/ready``. A
service's own ``create_app(settings, ...)`` calls it, then adds its routes and ``cleanup_ctx``
entries. ``serve`` runs an application until SIGTERM/SIGINT and drains it.

``/metrics`` is never on the public port (it would tell anyone why a token failed and when a
limit fails open): ``serve`` starts a second listener for it (``start_metrics_listener``, at
``URR_METRICS__HOST``/``URR_METRICS__PORT``), and the public port answers it 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import re
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from urr_common.health import Readiness, live_handler, ready_handler
from urr_common.http1 import Http1Site
from urr_common.logs import bind_request_context, clear_request_context, get_logger
from urr_common.metrics import HttpMetrics, metrics_handler
from urr_common.problems import (
    Problem,
    ProblemError,
    problem_from_http_exception,
    problem_response,
)
from urr_common.settings import HttpSettings, MetricsSettings, ServiceSettings, SettingsError

_LOG = get_logger(__name__)

REGISTRY_KEY = web.AppKey("urr_registry", CollectorRegistry)
READINESS_KEY = web.AppKey("urr_readiness", Readiness)
HTTP_METRICS_KEY = web.AppKey("urr_http_metrics", HttpMetrics)
SETTINGS_KEY = web.AppKey("urr_service_settings", ServiceSettings)
REQUEST_ID_KEY = web.RequestKey("urr_request_id", str)

REQUEST_ID_HEADER = "X-Request-Id"
#: An inbound request id is kept only when it is short and plain; anything else is replaced,
#: so a client cannot inject into log lines or headers.
_random_bits = random.getrandbits
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_UNMATCHED_ROUTE = "unmatched"
#: Headers of aiohttp's own HTTP errors that still mean something on the problem answer.
_PASSTHROUGH = frozenset({"allow", "retry-after"})


def request_id_of(request: web.Request) -> str:
    """The id bound to this request by the context middleware."""
    value: str = request.get(REQUEST_ID_KEY, "")
    return value


def new_request_id(request: web.Request) -> str:
    """The client's ``X-Request-Id`` when it is short and plain, else a fresh one."""
    inbound = request.headers.get(REQUEST_ID_HEADER)
    if inbound and _REQUEST_ID_RE.fullmatch(inbound):
        return inbound
    # 128 random bits as 32 hex digits. A correlation id, not a secret (clients may send their
    # own): the interpreter's generator, seeded from the OS and reseeded in a forked child,
    # instead of a getrandom system call per request (half the cost, more under load).
    return f"{_random_bits(128):032x}"


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id, bind it to the log context, and echo it in the response."""
    request_id = new_request_id(request)
    request[REQUEST_ID_KEY] = request_id
    clear_request_context()
    bind_request_context(request_id=request_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def problem_answer(request: web.Request, exc: Exception) -> web.Response | None:
    """The problem+json answer to ``exc`` raised while handling ``request``; ``None`` for what
    is not an error answer (a 3xx ``HTTPException``, a connection reset): re-raise those. An
    unexpected exception is logged (call this inside the ``except`` block) and becomes a 500."""
    if isinstance(exc, ProblemError):
        return problem_response(exc.to_problem(instance=request.path), headers=exc.headers)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        problem = problem_from_http_exception(exc, instance=request.path)
        passthrough = {k: v for k, v in exc.headers.items() if k.lower() in _PASSTHROUGH}
        return problem_response(problem, headers=passthrough)
    if isinstance(exc, ConnectionResetError):
        return None
    _LOG.exception("unhandled_error", path=request.path, method=request.method)
    problem = Problem(
        status=500,
        code="internal_error",
        title="Internal Server Error",
        detail="The server failed to handle this request; it has been logged.",
        instance=request.path,
    )
    return problem_response(problem)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into problem+json; an unexpected one is logged and becomes a 500."""
    try:
        return await handler(request)
    except Exception as exc:  # CancelledError is a BaseException: it passes through
        response = problem_answer(request, exc)
        if response is None:
            raise
    response.headers[REQUEST_ID_HEADER] = request_id_of(request)
    return response


def route_label(request: web.Request) -> str:
    """The route template of ``request`` (what the HTTP metrics are labelled by)."""
    return _route_label(request)


def _route_label(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else _UNMATCHED_ROUTE


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time requests by route template (never by raw path: bounded cardinality)."""
    metrics = request.app[HTTP_METRICS_KEY]
    started = time.perf_counter()
    metrics.in_flight.inc()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.in_flight.dec()
        metrics.observe(
            request.method, _route_label(request), status, time.perf_counter() - started
        )


def create_service_app(
    settings: ServiceSettings,
    *,
    registry: CollectorRegistry | None = None,
    middlewares: Iterable[Middleware] = (),
    shared_middlewares: bool = True,
) -> web.Application:
    """A new application with the shared middlewares and the health and metrics routes.

    ``shared_middlewares=False``: the application's own ``middlewares`` do what the shared
    ones do (request id and log context, metrics, problems), e.g. the gateway's one pipeline.
    """
    registry = registry if registry is not None else CollectorRegistry()
    shared = (
        [request_context_middleware, metrics_middleware, problem_middleware]
        if shared_middlewares
        else []
    )
    app = web.Application(
        middlewares=[*shared, *middlewares],
        client_max_size=settings.http.max_body_bytes,
    )
    readiness = Readiness()
    app[SETTINGS_KEY] = settings
    app[REGISTRY_KEY] = registry
    app[READINESS_KEY] = readiness
    app[HTTP_METRICS_KEY] = HttpMetrics.register(registry)
    app.router.add_get("/health/live", live_handler)
    app.router.add_get("/health/ready", ready_handler(readiness))
    return app


def create_metrics_app(registry: CollectorRegistry) -> web.Application:
    """The internal application: ``GET /metrics`` for ``registry``, nothing else."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    return app


def metrics_text(app: web.Application) -> str:
    """What the metrics listener would answer for ``app`` now (tests read metrics with it)."""
    return generate_latest(app[REGISTRY_KEY]).decode()


async def start_metrics_listener(
    app: web.Application,
    metrics: MetricsSettings,
    public_port: int,
    *,
    reuse_port: bool = False,
) -> web.AppRunner | None:
    """Serve ``app``'s registry where ``metrics`` says (beside ``public_port``); the runner to
    clean up, or ``None`` when metrics are off. Each worker process has its own registry."""
    if not metrics.enabled:
        return None
    port = metrics.port_beside(public_port)
    runner = web.AppRunner(create_metrics_app(app[REGISTRY_KEY]), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, metrics.host, port, reuse_port=reuse_port or None)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    _LOG.info("metrics_listening", host=metrics.host, port=_bound_port(runner, port))
    return runner


async def serve(
    app: web.Application,
    http: HttpSettings,
    *,
    stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
    reuse_port: bool = False,
    site: Callable[[web.AppRunner, str, int, bool], web.BaseSite] | None = None,
) -> None:
    """Serve ``app`` until SIGTERM, SIGINT or ``stop``; then drain.

    ``site``: makes the public listener from the runner, host, port and ``reuse_port``
    (a service's own HTTP/1.1 listener, an ``Http1Site``); aiohttp's ``TCPSite`` without it.

    The metrics listener starts beside the public one, from the app's own settings (the
    ``SETTINGS_KEY`` ``create_service_app`` stored), and closes after it.

    Draining: readiness turns 503 at once, the listener stays open for ``drain_delay_s`` (so a
    load balancer notices), then closes; in-flight requests get ``shutdown_timeout_s`` to
    finish before cleanup closes the clients.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=http.shutdown_timeout_s, access_log=None
    )
    await runner.setup()
    metrics_runner: web.AppRunner | None = None
    try:
        metrics_runner = await start_metrics_listener(
            app, app[SETTINGS_KEY].metrics, http.port, reuse_port=reuse_port
        )
        if site is None:
            public: web.BaseSite = web.TCPSite(
                runner, http.host, http.port, reuse_port=reuse_port or None
            )
        else:
            public = site(runner, http.host, http.port, reuse_port)
        await public.start()
        port = public.port if isinstance(public, Http1Site) else _bound_port(runner, http.port)
        _LOG.info("listening", host=http.host, port=port)
        if started is not None:
            started(port)
        await stop.wait()
        _LOG.info("draining", drain_delay_s=http.drain_delay_s)
        app[READINESS_KEY].draining = True
        if http.drain_delay_s:
            await asyncio.sleep(http.drain_delay_s)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        _LOG.info("stopped")


def _bound_port(runner: web.AppRunner, fallback: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return fallback


def run(main: Callable[[], Coroutine[Any, Any, None]], *, use_uvloop: bool) -> None:
    """Run the coroutine ``main`` on uvloop when asked and available, else on asyncio.

    A ``SettingsError`` raised while starting (a setting checked where it is used, such as a
    certificate file the clients open) ends the process like one from ``load_settings``: the
    message on stderr and exit status 2, not a traceback.
    """
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            use_uvloop = False
    try:
        if use_uvloop:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
        else:
            asyncio.run(main())
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less when ``stop`` is set meanwhile (a background loop's pause)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


def settle_heap(gen0_threshold: int) -> None:
    """Once a server's app is built: keep the start-up heap out of every collection and
    collect the young less often.

    A request allocates a few hundred short-lived objects, so at CPython's default (700) a
    young collection runs every few requests and every older one walks the imported modules
    too. ``gc.freeze()`` moves what exists now (modules, the app, its caches) to a generation
    no collection visits; a higher threshold makes young collections rarer, each finding
    mostly garbage (the gateway measured 12-19 µs a request, ``docs/performance.md``).
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
