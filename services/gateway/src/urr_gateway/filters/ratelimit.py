"""The rate-limit filter (order 0): one limiter decision per request, headers on every answer.

It runs after the auth filters (so a logged-in caller is limited per user, an anonymous one per
client address) and before the entry-token filter. A refusal is a 429 problem with
``Retry-After``, ``RateLimit-Policy`` and ``RateLimit``; an allowed answer carries the last two.

Headers reach streamed answers too, as long as the application installs
:func:`add_rate_limit_headers` as an ``on_response_prepare`` signal
(:func:`install_rate_limit_headers` does it): a proxied response is prepared inside the
handler, before this middleware sees it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from urr_common.problems import ProblemError, TooManyRequests
from urr_gateway.context import rate_limit_subject
from urr_gateway.filters.base import GatewayFilter
from urr_gateway.ratelimit.headers import rate_limit_headers, retry_after_seconds
from urr_gateway.ratelimit.keys import hash_tag
from urr_gateway.ratelimit.limiter import SlidingWindowLimiter
from urr_gateway.ratelimit.routing import CategoryRouter
from urr_gateway.ratelimit.window import Decision

FILTER_NAME = "rate_limit"
FILTER_ORDER = 0

#: The decision for this request; the entry-token filter reads ``.revoked`` from it.
RATE_LIMIT_DECISION = web.RequestKey("urr_rate_limit_decision", Decision)

#: The revoked-jti key looked up in the decision's round trip (absent when none was).
RATE_LIMIT_REVOKED_KEY = web.RequestKey("urr_rate_limit_revoked_key", str)

#: Given a request, the revoked-jti key to look up in the same round trip (see
#: ``keys.revoked_jti_key``), or ``None``. Called before the entry token is verified, so it may
#: only use what it can read cheaply (e.g. the unverified ``jti`` of the token).
RevokedKeyResolver = Callable[[web.Request], "str | None"]


def _refusal(decision: Decision, headers: dict[str, str]) -> TooManyRequests:
    retry_s = retry_after_seconds(decision)
    window = next(w for w in decision.windows if w.policy == decision.policy)
    extensions: dict[str, Any] = {"violated-policies": [decision.policy], "retry_after": retry_s}
    return TooManyRequests(
        f"{decision.category.upper()} limit of {window.limit} requests per {window.window_s} s "
        f"exceeded; retry in {retry_s} s",
        code="rate_limited",
        headers=headers,
        **extensions,
    )


def rate_limit_filter(
    limiter: SlidingWindowLimiter,
    routing: CategoryRouter,
    *,
    revoked_key_for: RevokedKeyResolver | None = None,
) -> GatewayFilter:
    """The filter; ``routing`` maps paths to categories (``None``: not limited)."""

    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        category = routing.category_for(request.path)
        if category is None or not limiter.settings.enabled:
            return await handler(request)
        subject = rate_limit_subject(request)
        revoked_key = revoked_key_for(request) if revoked_key_for is not None else None
        if revoked_key is not None and hash_tag(revoked_key) != subject:
            # Another user's token: the entry-token filter refuses it as wrong_user anyway.
            revoked_key = None
        decision = await limiter.check(subject, category, revoked_key=revoked_key)
        request[RATE_LIMIT_DECISION] = decision
        if revoked_key is not None and decision.revoked is not None:
            request[RATE_LIMIT_REVOKED_KEY] = revoked_key
        headers = rate_limit_headers(decision)
        if not decision.allowed:
            raise _refusal(decision, headers)
        try:
            response = await handler(request)
        except (ProblemError, web.HTTPException) as exc:
            # Errors further down still tell the client where it stands.
            for name, value in headers.items():
                exc.headers.setdefault(name, value)
            raise
        if not response.prepared:
            response.headers.update(headers)
        return response

    return GatewayFilter(name=FILTER_NAME, order=FILTER_ORDER, middleware=rate_limit)


def revocation_verdict(request: web.Request, key: str) -> bool | None:
    """Was ``key`` found revoked in this request's rate-limit round trip? ``None`` when that
    exact key was not looked up (deny-cache or fallback answer, no token, another key): the
    caller then asks Redis itself. Fits the entry-token filter's verdict-reader seam."""
    decision: Decision | None = request.get(RATE_LIMIT_DECISION)
    if decision is None or request.get(RATE_LIMIT_REVOKED_KEY) != key:
        return None
    return decision.revoked


async def add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` signal: the decision's headers on any answer, streamed too."""
    decision = request.get(RATE_LIMIT_DECISION)
    if decision is not None:
        for name, value in rate_limit_headers(decision).items():
            response.headers.setdefault(name, value)


def install_rate_limit_headers(app: web.Application) -> None:
    """Register :func:`add_rate_limit_headers` on ``app`` (before it starts)."""
    app.on_response_prepare.append(add_rate_limit_headers)


def install_rate_limit(app: web.Application, limiter: SlidingWindowLimiter) -> None:
    """Everything the public application needs besides the middleware: the header signal,
    loading the script (and opening a connection) at start-up, so the first request does
    not spend its budget on it, and giving the limiter's connections back at shutdown. A
    Redis that is down at start-up does not stop the start."""

    async def prepare(_: web.Application) -> None:
        await limiter.prepare()

    async def close(_: web.Application) -> None:
        await limiter.aclose()

    install_rate_limit_headers(app)
    app.on_startup.append(prepare)
    app.on_cleanup.append(close)
