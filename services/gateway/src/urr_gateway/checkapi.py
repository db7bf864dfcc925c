"""``POST /internal/v1/ratelimit/check``: the limiter as a service for other services.

``{"key", "category", "cost"}`` -> ``{"allowed", "limit", "remaining", "reset_ms",
"retry_after_ms", "degraded"}``. A separate small application for an internal listener (never
routed from the public port). Keys live in their own namespace (``{k:<key>}``), apart from the
gateway's per-user and per-address subjects. Bad input is a 4xx problem and changes nothing.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from pydantic import BaseModel, ConfigDict, Field

from urr_common.payloads import json_response, read_json
from urr_common.problems import Unprocessable
from urr_common.service import problem_middleware, request_context_middleware
from urr_gateway.ratelimit.config import RateLimitSettings
from urr_gateway.ratelimit.keys import check_api_subject
from urr_gateway.ratelimit.limiter import SlidingWindowLimiter
from urr_gateway.ratelimit.metrics import DECISION_BUCKETS_S

CHECK_PATH = "/internal/v1/ratelimit/check"
#: A check request is a few dozen bytes; anything near this is not one.
MAX_BODY_BYTES = 4096
#: Printable ASCII, space included.
KEY_PATTERN = r"^[\x20-\x7e]{1,256}$"

LIMITER_KEY = web.AppKey("urr_check_limiter", SlidingWindowLimiter)


class CheckRequest(BaseModel):
    # Strict: "3" or true is not a cost; unknown fields are mistakes worth reporting.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    key: str = Field(min_length=1, max_length=256, pattern=KEY_PATTERN)
    category: str = Field(min_length=1, max_length=64)
    cost: int = Field(default=1, ge=1)


def create_check_app(
    limiter: SlidingWindowLimiter,
    settings: RateLimitSettings | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The check API; ``settings`` defaults to the limiter's own (they must agree)."""
    settings = settings if settings is not None else limiter.settings
    categories = frozenset(settings.categories) & frozenset(limiter.categories)
    latency = Histogram(
        "urr_ratelimit_check_request_seconds",
        "Check API requests, from body read to answer, by outcome",
        ["outcome"],
        buckets=DECISION_BUCKETS_S,
        registry=registry if registry is not None else CollectorRegistry(),
    )

    async def check(request: web.Request) -> web.Response:
        started = time.perf_counter()
        outcome = "invalid"
        try:
            body = await read_json(request, CheckRequest)
            if body.category not in categories:
                raise Unprocessable(
                    f"unknown category; known: {', '.join(sorted(categories))}",
                    code="unknown_category",
                )
            max_cost = limiter.max_cost(body.category)
            if body.cost > max_cost:
                raise Unprocessable(
                    f"cost must be between 1 and {max_cost} for {body.category}",
                    code="cost_exceeds_limit",
                )
            decision = await limiter.check(
                check_api_subject(body.key), body.category, cost=body.cost
            )
            outcome = "allowed" if decision.allowed else "blocked"
            return json_response(
                {
                    "allowed": decision.allowed,
                    "limit": decision.limit,
                    "remaining": decision.remaining,
                    "reset_ms": decision.reset_ms,
                    "retry_after_ms": decision.retry_after_ms,
                    "degraded": decision.degraded,
                }
            )
        finally:
            latency.labels(outcome).observe(time.perf_counter() - started)

    app = web.Application(
        middlewares=[request_context_middleware, problem_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[LIMITER_KEY] = limiter
    app.router.add_post(CHECK_PATH, check)
    return app
