"""``POST /internal/v1/ratelimit/check``: the limiter as a service for other services.

Two request shapes, told apart by their fields:

- **Tenant policies** (seed 002): ``{"apiKey" | "tenant", "route", "method", "cost"}`` ->
  ``{"allowed", "tenant", "policy", "limit", "remaining", "reset_ms", "retry_after_ms",
  "retry_after", "quota_remaining", "quota_reset_ms", "shadow", "degraded"}``. The governing
  policy of the tenant for that route and method decides, together with the tenant's monthly
  quota, in one round trip (``tenant_decision.lua``); an unknown or revoked ``apiKey`` is a
  401 problem. ``tenant`` is for trusted internal callers that know their tenant already.
- **Legacy**: ``{"key", "category", "cost"}`` -> ``{"allowed", "limit", "remaining",
  "reset_ms", "retry_after_ms", "degraded"}``, unchanged; keys live in their own namespace
  (``{k:<key>}``), apart from the gateway's per-user and per-address subjects.

A separate small application for an internal listener (never routed from the public port);
every call needs ``Authorization: Bearer <secret>`` of a caller in ``URR_INTERNAL__CALLERS``.
Bad input is a 4xx problem and changes nothing.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping
from contextvars import Context
from typing import Any, Self

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Histogram
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from urr_common.metrics import loop_observer
from urr_common.payloads import read_json, validated
from urr_common.problems import ProblemError, Unauthorized, Unprocessable
from urr_common.ratelimit_policies import METHODS
from urr_common.service import problem_middleware, request_context_middleware
from urr_common.upstream_security import (
    caller_of,
    credential_secrets,
    service_credential_middleware,
)
from urr_gateway.ratelimit.config import RateLimitSettings
from urr_gateway.ratelimit.keys import check_api_subject
from urr_gateway.ratelimit.limiter import SlidingWindowLimiter, UnknownCategoryError
from urr_gateway.ratelimit.metrics import DECISION_BUCKETS_S, LatencyFold
from urr_gateway.ratelimit.policyset import PolicyWatcher
from urr_gateway.ratelimit.tenant import CompiledPolicies
from urr_gateway.ratelimit.window import Decision, ms_to_s_up

CHECK_PATH = "/internal/v1/ratelimit/check"
#: A check request is a few dozen bytes; anything near this is not one.
MAX_BODY_BYTES = 4096
#: Printable ASCII, space included.
KEY_PATTERN = r"^[\x20-\x7e]{1,256}$"
#: The admin service's tenant ids.
TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
#: A path as the gateway sees it: printable, no spaces.
ROUTE_PATTERN = r"^/[\x21-\x7e]{0,2047}$"

JSON = "application/json"

LIMITER_KEY = web.AppKey("urr_check_limiter", SlidingWindowLimiter)


class CheckRequest(BaseModel):
    # Strict: "3" or true is not a cost; unknown fields are mistakes worth reporting.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    key: str = Field(min_length=1, max_length=256, pattern=KEY_PATTERN)
    category: str = Field(min_length=1, max_length=64)
    cost: int = Field(default=1, ge=1)


class PolicyCheckRequest(BaseModel):
    """A tenant's request, named by its API key or (trusted callers) its tenant id."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    apiKey: str | None = Field(default=None, min_length=1, max_length=200, pattern=KEY_PATTERN)
    tenant: str | None = Field(default=None, pattern=TENANT_PATTERN)
    route: str = Field(pattern=ROUTE_PATTERN)
    method: str
    cost: int = Field(default=1, ge=1)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value.upper() not in METHODS:
            raise ValueError(f"method must be one of {', '.join(sorted(METHODS))}")
        return value.upper()

    @model_validator(mode="after")
    def _one_subject(self) -> Self:
        if (self.apiKey is None) == (self.tenant is None):
            raise ValueError("give exactly one of apiKey and tenant")
        return self


class _AnyObject(BaseModel):
    """Any JSON object (read_json's type, size and syntax checks); the shape is chosen after."""

    model_config = ConfigDict(extra="allow")


_POLICY_FIELDS = frozenset({"apiKey", "tenant", "route", "method"})


def parse_check_body(data: dict[str, Any]) -> CheckRequest | PolicyCheckRequest:
    """The request shape ``data`` is (any tenant-policy field picks that shape);
    ``Unprocessable`` with the field errors when it is not a valid one."""
    model: type[CheckRequest | PolicyCheckRequest] = (
        PolicyCheckRequest if _POLICY_FIELDS & data.keys() else CheckRequest
    )
    return validated(model, data)


_LEGACY_FIELDS = frozenset({"key", "category", "cost"})
_KEY_CHARS = re.compile(r"[\x20-\x7e]{1,256}")


def plain_legacy_fields(data: dict[str, Any]) -> tuple[str, str, int] | None:
    """``data``'s key, category and cost when it plainly is a valid legacy request, checked
    in plain Python (a third of pydantic's cost, and no model built: ``model_construct``
    alone measured 4-9 µs); ``None`` otherwise, and ``parse_check_body`` then decides and
    words the errors. Accepts nothing ``CheckRequest`` would refuse (a property test holds
    the two together)."""
    key = data.get("key")
    category = data.get("category")
    cost = data.get("cost", 1)
    if (
        type(key) is str
        and type(category) is str
        and type(cost) is int
        and cost >= 1
        and 0 < len(category) <= 64
        and data.keys() <= _LEGACY_FIELDS
        and _KEY_CHARS.fullmatch(key) is not None
    ):
        return key, category, cost
    return None


def plain_legacy_body(data: dict[str, Any]) -> CheckRequest | None:
    """``plain_legacy_fields`` as the model ``parse_check_body`` would make."""
    fields = plain_legacy_fields(data)
    if fields is None:
        return None
    key, category, cost = fields
    return CheckRequest.model_construct(key=key, category=category, cost=cost)


def check_latency_histogram(registry: CollectorRegistry | None) -> Histogram:
    return Histogram(
        "urr_ratelimit_check_request_seconds",
        "Check API requests, from body read to answer, by outcome",
        ["outcome"],
        buckets=DECISION_BUCKETS_S,
        registry=registry if registry is not None else CollectorRegistry(),
    )


class CheckService:
    """What the check API decides, apart from how it is served: the caller's credential
    (``caller``) and a JSON object in, the answer's JSON bytes out, a ``ProblemError`` for
    bad input. The aiohttp application (``create_check_app``) and the check API's own
    listener (``urr_gateway.checkserver``) both answer through one of these."""

    def __init__(
        self,
        limiter: SlidingWindowLimiter,
        registry: CollectorRegistry | None = None,
        *,
        policies: PolicyWatcher | None = None,
        callers: Mapping[str, SecretStr] | None = None,
    ) -> None:
        self.limiter = limiter
        self._policies = policies
        self._seed = CompiledPolicies.seed()
        #: ``None``: no credential asked (tests and benchmarks that build the app bare).
        self.secrets = credential_secrets(callers) if callers is not None else None
        if policies is not None:
            policies.on_change(lambda compiled: limiter.use_policies(compiled.defaults))
        latency = check_latency_histogram(registry)
        # Bound once: ``labels()`` per request costs a lock and a dict lookup. An answer's
        # latency is appended to its outcome's list and folded into the histogram whenever
        # it is read (``LatencyFold``: the same series and values, one append per answer).
        self._fold = LatencyFold()
        self._fold.watch(latency)
        self._fold_at = self._fold.fold_at
        self._latencies = {
            outcome: self._fold.series(latency.labels(outcome))
            for outcome in ("allowed", "blocked")
        }
        self._observe_invalid = loop_observer(latency.labels("invalid"))

    def _observe(self, outcome: str, latency_s: float) -> None:
        """One answer's latency under ``outcome`` (allowed or blocked)."""
        latencies = self._latencies[outcome]
        latencies.append(latency_s)
        if len(latencies) >= self._fold_at:
            self._fold.fold()

    def caller(self, authorization: str) -> str | None:
        """The caller ``authorization`` proves (``"anonymous"`` when none is asked)."""
        if self.secrets is None:
            return "anonymous"
        return caller_of(authorization, self.secrets)

    async def answer(self, data: dict[str, Any], started: float) -> bytes:
        """The answer to the request ``data`` (received at ``started``, a perf counter)."""
        try:
            fields = plain_legacy_fields(data)
            if fields is not None:
                outcome, payload = await self._legacy(*fields)
            else:
                body = parse_check_body(data)
                if isinstance(body, CheckRequest):
                    outcome, payload = await self._legacy(body.key, body.category, body.cost)
                else:
                    outcome, payload = await self._tenant_check(body)
        except BaseException:
            self._observe_invalid(time.perf_counter() - started)
            raise
        self._observe(outcome, time.perf_counter() - started)
        return orjson.dumps(payload)

    def answer_soon(
        self,
        data: dict[str, Any],
        started: float,
        reply: Callable[..., None],
        *reply_args: Any,
        context: Context | None = None,
    ) -> bool:
        """``answer`` without a task when ``data`` plainly is a valid legacy request: the
        limiter's ``check_soon``, then ``reply(*reply_args, answer bytes, None)`` once, or
        ``reply(*reply_args, None, error)`` (a ``ProblemError`` for bad input: unknown
        category, cost over the limit). False, with nothing done, for any other request: ask
        ``answer``. (``reply_args`` rather than a caller's partial: one object and one call
        level fewer per request.) ``context``: the caller's own context for this request,
        in which the reply then runs (``SlidingWindowLimiter.check_soon``)."""
        fields = plain_legacy_fields(data)
        if fields is None:
            return False
        key, category, cost = fields
        try:
            self._check_legacy(category, cost)
        except ProblemError:
            self._observe_invalid(time.perf_counter() - started)
            raise
        self.limiter.check_soon(
            check_api_subject(key),
            category,
            functools.partial(self._legacy_decided, started, reply, reply_args),
            cost=cost,
            context=context,
        )
        return True

    def _legacy_decided(
        self,
        started: float,
        reply: Callable[..., None],
        reply_args: tuple[Any, ...],
        decision: Decision | None,
        error: BaseException | None,
    ) -> None:
        if decision is None:
            self._observe_invalid(time.perf_counter() - started)
            reply(*reply_args, None, error)
            return
        body = legacy_answer_bytes(decision)
        # ``_observe`` inlined: one append per answer.
        latencies = self._latencies["allowed" if decision.allowed else "blocked"]
        latencies.append(time.perf_counter() - started)
        if len(latencies) >= self._fold_at:
            self._fold.fold()
        reply(*reply_args, body, None)

    def _check_legacy(self, category: str, cost: int) -> None:
        """The 422s of a legacy request the limiter would refuse to decide."""
        limiter = self.limiter
        try:
            max_cost = limiter.max_cost(category)
        except UnknownCategoryError:
            raise Unprocessable(
                f"unknown category; known: {', '.join(sorted(limiter.categories))}",
                code="unknown_category",
            ) from None
        if cost > max_cost:
            raise Unprocessable(
                f"cost must be between 1 and {max_cost} for {category}",
                code="cost_exceeds_limit",
            )

    async def _legacy(self, key: str, category: str, cost: int) -> tuple[str, dict[str, Any]]:
        self._check_legacy(category, cost)
        return _legacy_answer(await self.limiter.check(check_api_subject(key), category, cost=cost))

    async def _tenant_check(self, body: PolicyCheckRequest) -> tuple[str, dict[str, Any]]:
        current = self._policies.current if self._policies is not None else self._seed
        # Exactly one of the two is given (the model checks it).
        tenant = body.tenant if body.apiKey is None else current.tenant_of_key(body.apiKey)
        if tenant is None:
            raise Unauthorized("the API key is unknown or revoked", code="invalid_api_key")
        compiled = current.governing(tenant, body.method, body.route)
        if compiled is None:
            return "allowed", {"allowed": True, "tenant": tenant, "policy": None, "shadow": False}
        if body.cost > compiled.max_cost:
            raise Unprocessable(
                f"cost must be between 1 and {compiled.max_cost} under policy {compiled.id}",
                code="cost_exceeds_limit",
            )
        decided = await self.limiter.check_tenant(
            tenant, compiled, cost=body.cost, quota=current.quotas.get(tenant, 0)
        )
        decision = decided.decision
        policy = decided.policy
        return "allowed" if decision.allowed else "blocked", {
            "allowed": decision.allowed,
            "tenant": tenant,
            "policy": {
                "id": policy.id,
                "name": policy.name,
                "tenant": policy.tenant,
                "mode": policy.mode,
                "windows": [w.model_dump() for w in policy.windows],
            },
            "limit": decision.limit,
            "remaining": decision.remaining,
            "reset_ms": decision.reset_ms,
            "retry_after_ms": decision.retry_after_ms,
            "retry_after": ms_to_s_up(decision.retry_after_ms),
            "quota_remaining": decided.quota_remaining,
            "quota_reset_ms": decided.quota_reset_ms,
            "quota_exceeded": decided.quota_exceeded,
            "shadow": decided.shadow,
            "degraded": decision.degraded,
        }


_LEGACY_JSON = (
    b'{"allowed":%s,"limit":%d,"remaining":%d,"reset_ms":%d,"retry_after_ms":%d,"degraded":%s}'
)


def legacy_answer_bytes(decision: Decision) -> bytes:
    """The JSON of a legacy answer: the bytes ``orjson.dumps`` makes of ``_legacy_answer``'s
    fields (a test holds them together), formatted without the dict in between."""
    return _LEGACY_JSON % (
        b"true" if decision.allowed else b"false",
        decision.limit,
        decision.remaining,
        decision.reset_ms,
        decision.retry_after_ms,
        b"true" if decision.degraded else b"false",
    )


def _legacy_answer(decision: Decision) -> tuple[str, dict[str, Any]]:
    """The outcome label and the JSON fields of a legacy answer."""
    return "allowed" if decision.allowed else "blocked", {
        "allowed": decision.allowed,
        "limit": decision.limit,
        "remaining": decision.remaining,
        "reset_ms": decision.reset_ms,
        "retry_after_ms": decision.retry_after_ms,
        "degraded": decision.degraded,
    }


CHECK_SERVICE_KEY = web.AppKey("urr_check_service", CheckService)


def create_check_app(
    limiter: SlidingWindowLimiter,
    settings: RateLimitSettings | None = None,
    registry: CollectorRegistry | None = None,
    *,
    policies: PolicyWatcher | None = None,
    callers: Mapping[str, SecretStr] | None = None,
) -> web.Application:
    """The check API as an aiohttp application. ``policies``: the published configuration
    this worker follows (its start and stop belong to whoever owns it: ``server.build_apps``
    installs it on the public app); without it the tenant shape is decided by the seed
    default policies. ``settings`` is accepted for existing callers; the categories are the
    limiter's own, published default policies included, read per request since they change
    at run time. The app carries its ``CheckService`` (``CHECK_SERVICE_KEY``), so a server
    may answer through the lean listener (``urr_gateway.checkserver.CheckSite``) instead."""
    service = CheckService(limiter, registry, policies=policies, callers=callers)

    async def check(request: web.Request) -> web.Response:
        started = time.perf_counter()
        data = (await read_json(request, _AnyObject)).model_dump()
        return web.Response(body=await service.answer(data, started), content_type=JSON)

    middlewares: list[Middleware] = [request_context_middleware, problem_middleware]
    if callers is not None:
        # The wired gateway always passes URR_INTERNAL__CALLERS (empty: nobody may call).
        middlewares.append(service_credential_middleware(callers))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[LIMITER_KEY] = limiter
    app[CHECK_SERVICE_KEY] = service
    app.router.add_post(CHECK_PATH, check)
    return app
