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

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from urr_common.problems import ProblemError, TooManyRequests, Unauthorized
from urr_gateway.context import RequestFacts, facts_of, peek, rate_limit_subject, subject_of
from urr_gateway.filters.base import GatewayFilter
from urr_gateway.forwarding import API_KEY_HEADER
from urr_gateway.middleware import middleware
from urr_gateway.prepare import add_sync_receiver
from urr_gateway.ratelimit.headers import rate_limit_headers, retry_after_seconds
from urr_gateway.ratelimit.keys import hash_tag
from urr_gateway.ratelimit.lifecycle import limiter_lifecycle
from urr_gateway.ratelimit.limiter import SlidingWindowLimiter
from urr_gateway.ratelimit.policyset import PolicyWatcher
from urr_gateway.ratelimit.routing import CategoryRouter
from urr_gateway.ratelimit.tenant import CompiledPolicies, TenantDecision
from urr_gateway.ratelimit.window import Decision

FILTER_NAME = "rate_limit"
FILTER_ORDER = 0

#: The decision for this request; the entry-token filter reads ``.revoked`` from it.
RATE_LIMIT_DECISION = web.RequestKey("urr_rate_limit_decision", Decision)

#: The revoked-jti key looked up in the decision's round trip (absent when none was).
RATE_LIMIT_REVOKED_KEY = web.RequestKey("urr_rate_limit_revoked_key", str)

#: The tenant decision of a request that came with a working ``X-API-Key``.
TENANT_DECISION = web.RequestKey("urr_rate_limit_tenant_decision", TenantDecision)


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


def _tenant_refusal(decided: TenantDecision, headers: dict[str, str]) -> TooManyRequests:
    if decided.quota_exceeded:
        retry_s = retry_after_seconds(decided.decision)
        return TooManyRequests(
            f"the monthly quota of tenant {decided.tenant} is used up; it renews in {retry_s} s",
            code="quota_exceeded",
            headers=headers,
            retry_after=retry_s,
        )
    return _refusal(decided.decision, headers)


def _unknown_api_key() -> Unauthorized:
    return Unauthorized(
        "the API key is unknown or revoked",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'ApiKey realm="urr"'},
    )


async def _with_headers(
    request: web.Request, handler: Handler, headers: dict[str, str]
) -> web.StreamResponse:
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


class _RateLimit:
    def __init__(
        self,
        limiter: SlidingWindowLimiter,
        routing: CategoryRouter,
        revoked_key_for: RevokedKeyResolver | None,
        policies: PolicyWatcher | None,
    ) -> None:
        self._limiter = limiter
        self._routing = routing
        self._revoked_key_for = revoked_key_for
        self._policies = policies

    async def _tenant(
        self,
        request: web.Request,
        facts: RequestFacts | None,
        current: CompiledPolicies,
        api_key: str,
    ) -> dict[str, str] | None:
        """A request with ``X-API-Key``: its tenant's governing policy and quota decide."""
        tenant = current.tenant_of_key(api_key)
        if tenant is None:
            raise _unknown_api_key()
        compiled = current.governing(tenant, request.method, request.path)
        if compiled is None:
            return None
        decided = await self._limiter.check_tenant(
            tenant,
            compiled,
            cost=min(compiled.policy.cost, compiled.max_cost),
            quota=current.quotas.get(tenant, 0),
        )
        request[RATE_LIMIT_DECISION] = decided.decision
        request[TENANT_DECISION] = decided
        if facts is not None:
            facts.rate_limit_decision = decided.decision
        headers = rate_limit_headers(decided.decision)
        if not decided.decision.allowed:
            raise _tenant_refusal(decided, headers)
        if facts is not None:
            facts.rate_limit_headers = headers  # the pipeline puts them on the answer
        return headers

    async def decide(
        self, request: web.Request, facts: RequestFacts | None, category: str
    ) -> dict[str, str] | None:
        """The decision's headers for the answer (``None``: not limited); raises the 429."""
        cost = 1
        policies = self._policies
        if policies is not None:
            current = policies.current
            api_key = request.headers.get(API_KEY_HEADER)
            if api_key is not None:
                return await self._tenant(request, facts, current, api_key)
            if current.published:
                compiled = current.governing(None, request.method, request.path)
                if compiled is None:
                    return None
                category, cost = compiled.id, min(compiled.policy.cost, compiled.max_cost)
        if facts is not None:
            subject = subject_of(facts.identity, facts.client_ip)
        else:
            subject = rate_limit_subject(request)
        revoked_key = self._revoked_key_for(request) if self._revoked_key_for else None
        if revoked_key is not None and hash_tag(revoked_key) != subject:
            # Another user's token: the entry-token filter refuses it as wrong_user anyway.
            revoked_key = None
        decision = await self._limiter.check(subject, category, cost=cost, revoked_key=revoked_key)
        # The request's state dict itself (as ``context.peek`` reads it): aiohttp's and the
        # public listener's ``__setitem__`` are a Python call each, per request.
        state = request._state
        state[RATE_LIMIT_DECISION] = decision
        if facts is not None:
            facts.rate_limit_decision = decision
        if revoked_key is not None and decision.revoked is not None:
            state[RATE_LIMIT_REVOKED_KEY] = revoked_key
            if facts is not None:
                facts.rate_limit_revoked_key = revoked_key
        headers = rate_limit_headers(decision)
        if not decision.allowed:
            raise _refusal(decision, headers)
        if facts is not None:
            facts.rate_limit_headers = headers  # the pipeline puts them on the answer
        return headers

    def step(self, request: web.Request, facts: RequestFacts) -> Awaitable[object] | None:
        category = self._routing.category_for(request.path)
        if category is None or not self._limiter.settings.enabled:
            return None
        # ``decide`` itself, not a wrapper coroutine: one level less to resume when the
        # decision comes back from Redis (it leaves its headers on ``facts``).
        return self.decide(request, facts, category)

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        category = self._routing.category_for(request.path)
        if category is None or not self._limiter.settings.enabled:
            return await handler(request)
        headers = await self.decide(request, None, category)
        if headers is None:
            return await handler(request)
        return await _with_headers(request, handler, headers)


def rate_limit_filter(
    limiter: SlidingWindowLimiter,
    routing: CategoryRouter,
    *,
    revoked_key_for: RevokedKeyResolver | None = None,
    policies: PolicyWatcher | None = None,
) -> GatewayFilter:
    """The filter; ``routing`` maps paths to categories (``None``: not limited).

    With ``policies`` (the published configuration): a request with ``X-API-Key`` is its
    tenant's (an unknown or revoked key is a 401) and is decided by the tenant's governing
    policy and quota; other requests follow the published default policies once a set has
    been published (until then ``routing``'s configured categories, the same seed limits).
    """
    if policies is not None:
        policies.on_change(lambda compiled: limiter.use_policies(compiled.defaults))
    rate_limit = _RateLimit(limiter, routing, revoked_key_for, policies)
    return GatewayFilter(
        name=FILTER_NAME,
        order=FILTER_ORDER,
        middleware=middleware(rate_limit.middleware),
        step=rate_limit.step,
    )


def revocation_verdict(request: web.Request, key: str) -> bool | None:
    """Was ``key`` found revoked in this request's rate-limit round trip? ``None`` when that
    exact key was not looked up (deny-cache or fallback answer, no token, another key): the
    caller then asks Redis itself. Fits the entry-token filter's verdict-reader seam."""
    facts = facts_of(request)
    if facts is not None and facts.rate_limit_decision is not None:
        if facts.rate_limit_revoked_key != key:
            return None
        return facts.rate_limit_decision.revoked
    decision: Decision | None = request.get(RATE_LIMIT_DECISION)
    if decision is None or request.get(RATE_LIMIT_REVOKED_KEY) != key:
        return None
    return decision.revoked


def decision_headers(request: web.Request) -> dict[str, str] | None:
    """The headers of the request's decision (``None``: no decision was made)."""
    facts = facts_of(request)
    if facts is not None and facts.rate_limit_headers is not None:
        return facts.rate_limit_headers
    decision = peek(request, RATE_LIMIT_DECISION)
    return rate_limit_headers(decision) if decision is not None else None


def set_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The decision's headers on an answer being prepared (an upstream's own are kept)."""
    headers = decision_headers(request)
    if headers is not None:
        for name, value in headers.items():
            response.headers.setdefault(name, value)


async def add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` signal: the decision's headers on any answer, streamed too."""
    set_rate_limit_headers(request, response)


#: Set on an application whose own ``on_response_prepare`` receiver already adds the
#: decision's headers (the gateway's: ``responseheaders``), so none is added twice.
RATE_LIMIT_HEADERS_INSTALLED = web.AppKey("urr_rate_limit_headers_installed", bool)


def install_rate_limit_headers(app: web.Application) -> None:
    """Register :func:`add_rate_limit_headers` on ``app`` (before it starts)."""
    if not app.get(RATE_LIMIT_HEADERS_INSTALLED, False):
        app.on_response_prepare.append(add_rate_limit_headers)
        add_sync_receiver(app, add_rate_limit_headers, set_rate_limit_headers)
        app[RATE_LIMIT_HEADERS_INSTALLED] = True


def install_rate_limit(app: web.Application, limiter: SlidingWindowLimiter) -> None:
    """Everything the public application needs besides the middleware: the header signal,
    loading the script (and opening a connection) at start-up, so the first request does
    not spend its budget on it, and giving the limiter's connections back at shutdown. A
    Redis that is down at start-up does not stop the start."""

    install_rate_limit_headers(app)
    app.cleanup_ctx.append(limiter_lifecycle(limiter))
