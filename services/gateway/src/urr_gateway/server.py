"""Serve the gateway in this process: the public app and the internal check API.

``build_apps`` is the one place the rate limiter is wired in: one limiter per worker shares
the worker's Redis client and metrics registry with the public app and the check API.

The public port is served by the gateway's own HTTP/1.1 listener (``publicserver``) or by
aiohttp's server (``URR_HTTP__SERVER``); either way behind the per-address shedding of
``shedding`` and running the same application (pipeline, proxy, health checks). The check
API always has its own listener (``checkserver``); both are built on ``http1``.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from urr_common import native
from urr_common.clients import redis_client
from urr_common.http1 import Http1Site
from urr_common.logs import get_logger
from urr_common.service import READINESS_KEY, REGISTRY_KEY, settle_heap, start_metrics_listener
from urr_common.tasks import bounded_step
from urr_gateway.app import create_app
from urr_gateway.checkapi import CHECK_SERVICE_KEY, create_check_app
from urr_gateway.checkserver import CheckSite
from urr_gateway.filters.ratelimit import install_rate_limit, rate_limit_filter, revocation_verdict
from urr_gateway.publicserver import PublicServer
from urr_gateway.ratelimit import CategoryRouter, SlidingWindowLimiter
from urr_gateway.ratelimit.policyset import PolicyWatcher, install_policy_watcher
from urr_gateway.revocation import revocation_key_of
from urr_gateway.settings import GatewaySettings
from urr_gateway.shedding import Shedder, public_site

_LOG = get_logger(__name__)
#: Beyond ``shutdown_timeout_s`` (the drain of in-flight requests), what the cleanup hooks
#: may take before a worker gives up on one of them and exits anyway.
CLEANUP_MARGIN_S = 2.5
#: What the /metrics listener gets to close even when the others used the whole budget.
METRICS_CLOSE_S = 0.5


@dataclass(frozen=True)
class GatewayApps:
    public: web.Application
    #: The rate-limit check API (``POST /internal/v1/ratelimit/check``), on its own listener.
    internal: web.Application | None = None


def build_apps(settings: GatewaySettings) -> GatewayApps:
    """The applications one worker serves (called inside the worker's running loop)."""
    registry = CollectorRegistry()
    redis = redis_client(settings.redis)
    limiter = SlidingWindowLimiter(redis, settings.rate_limit, registry=registry)
    # The published rate-limit configuration, followed once per worker for both apps.
    policies = PolicyWatcher(redis, poll_s=settings.rate_limit.policy_poll_s)
    public = create_app(
        settings,
        registry=registry,
        redis=redis,
        rate_limit_filter=rate_limit_filter(
            limiter,
            CategoryRouter.from_settings(settings.rate_limit),
            revoked_key_for=revocation_key_of,
            policies=policies,
        ),
        revocation_verdict=revocation_verdict,
        access_token_revoked=policies.is_revoked,
        revocation_exists=limiter.key_exists,
    )
    install_rate_limit(public, limiter)
    install_policy_watcher(public, policies)
    internal = create_check_app(
        limiter, registry=registry, policies=policies, callers=settings.internal.callers
    )
    return GatewayApps(public=public, internal=internal)


def public_protocol_site(
    runner: web.AppRunner,
    app: web.Application,
    settings: GatewaySettings,
    host: str,
    port: int,
    reuse_port: bool = False,
) -> Http1Site:
    """The public port served by the gateway's own HTTP/1.1 listener (``publicserver``),
    behind the same per-address shedding as the aiohttp site when it is enabled."""
    shed = settings.shed
    wrap = Shedder(shed, settings.trust, app.get(REGISTRY_KEY)).factory if shed.enabled else None
    return Http1Site(
        runner,
        lambda: PublicServer(app),
        host,
        port,
        drain_timeout_s=settings.http.shutdown_timeout_s,
        reuse_port=reuse_port or None,
        wrap=wrap,
    )


def tune_gc(gen0_threshold: int) -> None:
    """``URR_HTTP__GC_GEN0_THRESHOLD`` (0: leave the collector alone)."""
    if not gen0_threshold:
        return
    settle_heap(gen0_threshold)
    _LOG.info("gc_tuned", gen0_threshold=gen0_threshold, frozen=gc.get_freeze_count())


async def serve_gateway(
    apps: GatewayApps,
    settings: GatewaySettings,
    *,
    reuse_port: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT or ``stop``, then drain both listeners.

    Draining: readiness answers 503 at once, the listeners stay open ``drain_delay_s`` (so a
    load balancer moves away), then close; in-flight requests get ``shutdown_timeout_s``.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    http = settings.http
    runners: list[web.AppRunner] = []
    metrics: web.AppRunner | None = None
    try:
        # Metrics first, as urr_common.service.serve does: once the public port answers, its
        # /metrics beside it does too (and closes after it, cleanup going in reverse).
        metrics = await start_metrics_listener(
            apps.public, settings.metrics, http.port, reuse_port=reuse_port
        )
        if metrics is not None:
            runners.append(metrics)
        listeners = [(apps.public, http.host, http.port)]
        if apps.internal is not None:
            listeners.append((apps.internal, settings.internal.host, settings.internal.port))
        for app, host, port in listeners:
            if stop.is_set():  # told to stop while starting: open nothing more
                break
            runner = web.AppRunner(
                app,
                handle_signals=False,
                shutdown_timeout=http.shutdown_timeout_s,
                access_log=None,
            )
            await runner.setup()
            runners.append(runner)
            site: web.BaseSite
            if app is apps.public and http.server == "protocol":
                site = public_protocol_site(runner, app, settings, host, port, reuse_port)
            elif app is apps.public:  # shed floods per peer address before parsing them
                site = public_site(
                    runner,
                    settings.shed,
                    settings.trust,
                    app.get(REGISTRY_KEY),
                    host=host,
                    port=port,
                    reuse_port=reuse_port or None,
                )
            elif (service := app.get(CHECK_SERVICE_KEY)) is not None:  # the lean listener
                site = CheckSite(
                    runner,
                    service,
                    host,
                    port,
                    drain_timeout_s=http.shutdown_timeout_s,
                    reuse_port=reuse_port or None,
                )
            else:
                site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
            await site.start()
            _LOG.info("listening", host=host, port=port, internal=app is apps.internal)
        # Whether the request path runs compiled, and if not why (an operator comparing pods'
        # CPU needs to know; URR_NATIVE=1 in the image refuses to start without it).
        compiled = native.status()
        _LOG.info("native_build", compiled=len(compiled.compiled), reason=compiled.reason)
        if not stop.is_set():  # a full collection is no use to a worker about to stop
            tune_gc(http.gc_gen0_threshold)
        await stop.wait()
        _LOG.info("draining", drain_delay_s=http.drain_delay_s)
        apps.public[READINESS_KEY].draining = True
        if http.drain_delay_s:
            await asyncio.sleep(http.drain_delay_s)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await _close_runners(runners, metrics, apps, http.shutdown_timeout_s)
        _LOG.info("stopped")


async def _close_runners(
    runners: list[web.AppRunner],
    metrics: web.AppRunner | None,
    apps: GatewayApps,
    shutdown_timeout_s: float,
) -> None:
    # The shutdown fits inside the supervisor's deadline (it kills a worker after
    # drain_delay_s + shutdown_timeout_s + 5 s), whatever a step does: the listeners drain
    # side by side (each bounded by shutdown_timeout_s on its own, so in series they would
    # add up past it), their applications' cleanup hooks (Redis, upstream pools, JWKS,
    # limiter) share the margin, and a hook that never returns is left behind rather than
    # hold up the others. /metrics closes last, as it opened first.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + shutdown_timeout_s + CLEANUP_MARGIN_S
    await asyncio.gather(
        *(
            bounded_step(
                f"cleanup_{_runner_name(runner, apps)}",
                runner.cleanup(),
                deadline - loop.time(),
                _LOG,
            )
            for runner in runners
            if runner is not metrics
        )
    )
    if metrics is not None:
        budget = max(deadline - loop.time(), METRICS_CLOSE_S)
        await bounded_step("cleanup_metrics", metrics.cleanup(), budget, _LOG)


def _runner_name(runner: web.AppRunner, apps: GatewayApps) -> str:
    return "internal" if runner.app is apps.internal else "public"
