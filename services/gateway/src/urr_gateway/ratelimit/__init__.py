"""Sliding-window rate limiting: pure window maths, the Redis script, fallbacks, headers."""

from __future__ import annotations

from urr_gateway.ratelimit.breaker import BreakerState, CircuitBreaker
from urr_gateway.ratelimit.config import (
    CategoryLimits,
    FailurePolicy,
    RateLimitSettings,
    RouteRule,
    WindowLimit,
)
from urr_gateway.ratelimit.headers import rate_limit_headers
from urr_gateway.ratelimit.keys import revoked_jti_key, window_key
from urr_gateway.ratelimit.limiter import SlidingWindowLimiter, UnknownCategoryError
from urr_gateway.ratelimit.routing import CategoryRouter, category_for
from urr_gateway.ratelimit.window import Decision, WindowState

__all__ = [
    "BreakerState",
    "CategoryLimits",
    "CategoryRouter",
    "CircuitBreaker",
    "Decision",
    "FailurePolicy",
    "RateLimitSettings",
    "RouteRule",
    "SlidingWindowLimiter",
    "UnknownCategoryError",
    "WindowLimit",
    "WindowState",
    "category_for",
    "rate_limit_headers",
    "revoked_jti_key",
    "window_key",
]
