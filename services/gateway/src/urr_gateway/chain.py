"""The filter chain, declared once: the order every request passes through the gateway.

ingress      origin secret, client address (trusted proxies by CIDR), canonical path,
             route, upstream headers (not a filter: it runs first so every filter sees
             the same facts)
-2 cookie_auth   access_token cookie -> Authorization: Bearer
-1 jwt_auth      strip client X-User-*, verify, set identity; a bad token leaves the
                 caller anonymous and records the refusal
 0 rate_limit    sliding window in Redis (injected: built on its own branch); an
                 anonymous caller, forged token or not, is limited per client address
 1 auth_gate     the recorded refusal (401), CSRF for cookie-authenticated changes,
                 login/role per route: refusals come after the limiter, so they are limited
 2 entry_token   Tier-2 entry token on seat and reservation routes
   proxy         the handler (``proxy.UpstreamProxy``); signs the caller's identity into
                 X-Urr-Identity for the one upstream, method and path

The gateway runs all of it in one aiohttp middleware (``GatewayPipeline``): the request id and
log context, the HTTP metrics, problem answers (what ``urr_common.service``'s three shared
middlewares do for other services), ingress, then each filter as a plain call (its ``step``)
and the handler. One coroutine frame per request instead of nine, no ``Request`` key lookups
between filters (they share one ``context.RequestFacts``), and a filter with nothing to wait
for creates no coroutine.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from urr_common.logs import start_request_context
from urr_common.metrics import HttpMetrics, loop_adder
from urr_common.problems import ProblemError
from urr_common.service import (
    REQUEST_ID_HEADER,
    REQUEST_ID_KEY,
    new_request_id,
    problem_answer,
    route_label,
)
from urr_gateway.context import RequestFacts
from urr_gateway.filters.base import GatewayFilter, Step
from urr_gateway.ingress import Ingress, ingress_middleware
from urr_gateway.middleware import middleware
from urr_gateway.trust import TrustSettings

#: Name and order of every filter, in the order they run.
FILTER_ORDER: tuple[tuple[str, int], ...] = (
    ("cookie_auth", -2),
    ("jwt_auth", -1),
    ("rate_limit", 0),
    ("auth_gate", 1),
    ("entry_token", 2),
)


class ChainError(ValueError):
    """A filter was given in a slot that is not its own."""


def build_chain(
    *,
    cookie_auth: GatewayFilter,
    jwt_auth: GatewayFilter,
    rate_limit: GatewayFilter | None,
    auth_gate: GatewayFilter,
    entry_token: GatewayFilter,
) -> tuple[GatewayFilter, ...]:
    """The filters in running order; the rate limit is optional until it is merged."""
    given = {
        "cookie_auth": cookie_auth,
        "jwt_auth": jwt_auth,
        "rate_limit": rate_limit,
        "auth_gate": auth_gate,
        "entry_token": entry_token,
    }
    chain = []
    for name, order in FILTER_ORDER:
        gateway_filter = given[name]
        if gateway_filter is None:
            continue
        if gateway_filter.order != order:
            raise ChainError(f"{gateway_filter.name} has order {gateway_filter.order}, not {order}")
        chain.append(gateway_filter)
    return tuple(chain)


def chain_middlewares(
    filters: Sequence[GatewayFilter], *, trust: TrustSettings
) -> list[Middleware]:
    """The aiohttp middlewares: ingress, then the filters by ascending order."""
    ordered = sorted(filters, key=lambda gateway_filter: gateway_filter.order)
    return [
        ingress_middleware(trust),
        *(gateway_filter.middleware for gateway_filter in ordered),
    ]


def _error_answer(
    request: web.Request, exc: Exception, facts: RequestFacts | None, request_id: str
) -> web.Response | None:
    """The problem answer to ``exc`` (``None``: re-raise it, with the request id on it when
    it is an ``HTTPException``), as ``urr_common.service``'s problem middleware answers."""
    answer_headers = facts.rate_limit_headers if facts is not None else None
    if answer_headers and isinstance(exc, ProblemError | web.HTTPException):
        # Errors after the limiter still tell the client where it stands.
        for name, value in answer_headers.items():
            exc.headers.setdefault(name, value)
    problem = problem_answer(request, exc)
    if problem is None:
        if isinstance(exc, web.HTTPException):
            exc.headers[REQUEST_ID_HEADER] = request_id
        return None
    problem.headers[REQUEST_ID_HEADER] = request_id
    return problem


class GatewayPipeline:
    """Everything between aiohttp's router and the handler, as one middleware.

    Filters run as their ``step`` when every filter has one; when any is given only as a
    middleware (tests put stand-ins in a slot), all of them run as middlewares in the same
    order, around the handler, inside the same request context, metrics and problems.
    """

    def __init__(
        self, filters: Sequence[GatewayFilter], *, trust: TrustSettings, metrics: HttpMetrics
    ) -> None:
        ordered = sorted(filters, key=lambda gateway_filter: gateway_filter.order)
        self._ingress = Ingress(trust)
        self._metrics = metrics
        steps = [gateway_filter.step for gateway_filter in ordered]
        self._steps: tuple[Step, ...] | None = None
        self._middlewares: tuple[Middleware, ...] = ()
        if all(step is not None for step in steps):
            self._steps = tuple(step for step in steps if step is not None)
        else:
            self._middlewares = tuple(gateway_filter.middleware for gateway_filter in ordered)

    @property
    def ingress(self) -> Ingress:
        return self._ingress

    @property
    def steps(self) -> tuple[Step, ...] | None:
        """The filters as steps (``None`` when they run as middlewares)."""
        return self._steps

    def middleware(self) -> Middleware:
        ingress = self._ingress
        steps = self._steps
        middlewares = self._middlewares
        metrics = self._metrics
        add_in_flight = loop_adder(metrics.in_flight)
        perf_counter = time.perf_counter

        @middleware
        async def gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
            received = request
            request_id = new_request_id(request)
            request[REQUEST_ID_KEY] = request_id
            start_request_context(request_id)
            started = perf_counter()
            add_in_flight(1)
            status = 500
            facts: RequestFacts | None = None
            try:
                try:
                    request, facts = ingress(request, request_id)
                    if steps is not None:
                        for step in steps:
                            pending = step(request, facts)
                            if pending is not None:
                                await pending
                        response = await handler(request)
                    else:
                        for middleware in reversed(middlewares):
                            handler = functools.partial(middleware, handler=handler)
                        response = await handler(request)
                except Exception as exc:  # CancelledError is a BaseException: it passes
                    problem = _error_answer(received, exc, facts, request_id)
                    if problem is None:
                        if isinstance(exc, web.HTTPException):
                            status = exc.status
                        raise
                    status = problem.status
                    return problem
                if not response.prepared:
                    if facts is not None and facts.rate_limit_headers:
                        response.headers.update(facts.rate_limit_headers)
                    response.headers[REQUEST_ID_HEADER] = request_id
                status = response.status
                return response
            finally:
                add_in_flight(-1)
                metrics.observe(
                    received.method, route_label(received), status, perf_counter() - started
                )

        return gateway
