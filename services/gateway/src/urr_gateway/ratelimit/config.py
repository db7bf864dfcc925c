"""Rate-limit settings: categories, the path routing table, failure policies and timings.

Plain pydantic models, nested by the gateway's settings class (``rate_limit:
RateLimitSettings``, so ``URR_RATE_LIMIT__BUDGET_MS=10`` and so on). The defaults are the
public contract in DESIGN.md §4.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: ``open`` answers "allowed" (marked degraded) while Redis is unusable, the operations
#: guide's allow-all rule; ``local`` keeps limiting with an in-process sliding window at the
#: same limit, for categories where fail-open would be a brute-force window (AUTH).
FailurePolicy = Literal["open", "local"]

#: Category and policy names go into Redis keys and into structured-field tokens of the
#: ``RateLimit`` headers, so they stay short, lower-case and plain.
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

#: The longest gathering window of the limiter's Redis pipeline (issue 17's bound, in µs;
#: envoy's ratelimit service batches in 150-500 µs) and the check API's by default.
PIPELINE_WINDOW_MAX_US = 500
PIPELINE_WINDOW_DEFAULT_US = 250


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError("must be 1-32 characters of a-z, 0-9, '_' or '-', starting with a letter")
    return value


class WindowLimit(BaseModel):
    """At most ``limit`` units in any ``window_s``-second sliding window."""

    model_config = ConfigDict(frozen=True)

    limit: int = Field(ge=1, le=10_000)
    window_s: int = Field(ge=1, le=86_400)
    #: Policy name in the headers; defaults to the category name, or ``<category>-<w>s`` when
    #: the category has several windows.
    name: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _check_name(value)


class CategoryLimits(BaseModel):
    """One rate-limit category: its windows (all must admit a request) and failure policy."""

    model_config = ConfigDict(frozen=True)

    windows: tuple[WindowLimit, ...] = Field(min_length=1, max_length=4)
    failure_policy: FailurePolicy = "open"

    @field_validator("windows")
    @classmethod
    def _distinct_windows(cls, value: tuple[WindowLimit, ...]) -> tuple[WindowLimit, ...]:
        # The window length is part of the Redis key, so two windows of one length would
        # share a log.
        lengths = [window.window_s for window in value]
        if len(set(lengths)) != len(lengths):
            raise ValueError("two windows of one category must differ in length")
        return value


class RouteRule(BaseModel):
    """Requests whose path is ``prefix`` or lies under it belong to ``category``."""

    model_config = ConfigDict(frozen=True)

    prefix: str
    category: str

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.removesuffix("/*").rstrip("/")
        if not value.startswith("/"):
            raise ValueError("a path prefix starts with '/'")
        return value


def _default_categories() -> dict[str, CategoryLimits]:
    return {
        "auth": CategoryLimits(
            windows=(WindowLimit(limit=20, window_s=60),), failure_policy="local"
        ),
        "queue": CategoryLimits(windows=(WindowLimit(limit=60, window_s=60),)),
        "booking": CategoryLimits(windows=(WindowLimit(limit=10, window_s=60),)),
        "general": CategoryLimits(windows=(WindowLimit(limit=100, window_s=60),)),
    }


def _default_routes() -> tuple[RouteRule, ...]:
    return (
        RouteRule(prefix="/api/v1/auth", category="auth"),
        RouteRule(prefix="/api/v1/queue", category="queue"),
        RouteRule(prefix="/api/v1/reservations", category="booking"),
        RouteRule(prefix="/api/v1/seats", category="booking"),
    )


class RateLimitSettings(BaseModel):
    """Everything the limiter, its HTTP filter and the check API are configured with."""

    model_config = ConfigDict(frozen=True)

    enabled: bool = True
    categories: dict[str, CategoryLimits] = Field(default_factory=_default_categories)
    #: Longest matching prefix wins; paths no rule matches use ``default_category``.
    routes: tuple[RouteRule, ...] = Field(default_factory=_default_routes)
    default_category: str = "general"
    #: Never limited (probes and scrapes must work while a client is throttled).
    exempt_prefixes: tuple[str, ...] = ("/health", "/metrics")

    #: Time allowed to one Redis decision once it is sent (``budget.py`` explains how a busy
    #: event loop is told apart from a slow Redis).
    budget_ms: float = Field(default=10.0, gt=0.0, le=5_000.0)
    #: ``per_call``: longest wait for a reply while the event loop itself runs late (a burst
    #: on this process); past it the decision follows the failure policy like any Redis
    #: failure. ``pipeline``: how long a connection may owe replies with none arriving (and
    #: none unread in its socket) before it is replaced; its budget asks the socket instead.
    congestion_cap_ms: float = Field(default=250.0, gt=0.0, le=10_000.0)
    #: ``pipeline``: the decisions of one event-loop tick (or of ``pipeline_window_us``) go
    #: to Redis as one write per node on a lean connection, each still its own atomic script
    #: evaluation (``pipeline.py``). ``per_call``: one redis-py call per decision (the path
    #: before pipelining, ~100-150 µs of client CPU more per decision).
    transport: Literal["pipeline", "per_call"] = "pipeline"
    #: How long a batch may gather decisions before it is written: 0 sends the decisions
    #: issued in the same event-loop tick together (no added wait); at most 500 µs. With a
    #: window, a decision arriving within it of the previous one holds the batch while the
    #: next is expected inside the window (a steady stream of separate requests then shares
    #: one Redis write and one reply read); decisions further apart than the window are
    #: written at once. A batch whose next decision does not come is written by a timer once
    #: the window has passed (a ``timerfd``; where there is none, the window rounded up to
    #: the event loop's millisecond). The wait is spent from each decision's ``budget_ms``
    #: (``pipeline.py``). This one is the gateway's own decisions' (its public requests):
    #: default 0, since a 250 µs window measured 4 % more CPU per request and 4 % fewer
    #: requests/s on the closed-loop gateway bench (docs/performance.md, ``i17-check5``).
    pipeline_window_us: int = 0
    #: The same window for the decisions of the check API (``POST
    #: /internal/v1/ratelimit/check``), whose callers send separate requests spaced out in
    #: time: default 250 µs, which measured 5-10 % less server CPU per request than 0 at
    #: 5,000 evenly spaced requests/s with P99 inside 2 ms (docs/performance.md,
    #: ``i17-check5``). A gateway decision arriving while a check-API batch is held sends it
    #: with its own tick.
    check_pipeline_window_us: int = PIPELINE_WINDOW_DEFAULT_US
    #: A batch holding this many decisions is written at once, mid-tick, so that Redis runs
    #: it while the rest of the tick is still being decided (client and Redis overlap).
    pipeline_max_batch: int = Field(default=16, ge=1, le=10_000)
    #: Decisions waiting on Redis at once per process; more queue for a slot (outside the
    #: budget) rather than open connections beyond the client's pool.
    max_in_flight: int = Field(default=64, ge=1, le=10_000)
    #: Consecutive Redis failures that open the circuit breaker.
    breaker_failures: int = Field(default=3, ge=1, le=1_000)
    #: How long an open breaker skips Redis before one probe is let through.
    breaker_open_s: float = Field(default=1.0, gt=0.0, le=300.0)

    #: How often each process reads the published policy set's version (besides following
    #: the change channel): the bound on how stale a lost notification leaves it.
    policy_poll_s: float = Field(default=0.25, gt=0.0, le=1.0)
    #: How often decisions without a tenant are added to the anonymous usage hashes
    #: (``usage_tally.py``): the most a crashed process's usage figures can miss.
    usage_flush_s: float = Field(default=1.0, gt=0.0, le=60.0)

    #: Subjects known to be over a limit, refused from memory until their reset.
    deny_cache_size: int = Field(default=10_000, ge=0, le=1_000_000)
    #: Subjects the in-process fallback limiter tracks at most (least recently used go).
    local_max_subjects: int = Field(default=50_000, ge=1, le=5_000_000)

    @field_validator("pipeline_window_us", "check_pipeline_window_us")
    @classmethod
    def _window_bound(cls, value: int) -> int:
        if not 0 <= value <= PIPELINE_WINDOW_MAX_US:
            raise ValueError(
                f"the Redis pipeline's gathering window is between 0 (the decisions of one "
                f"event-loop tick, no added wait) and {PIPELINE_WINDOW_MAX_US} µs; got {value}"
            )
        return value

    @field_validator("categories")
    @classmethod
    def _category_names(cls, value: dict[str, CategoryLimits]) -> dict[str, CategoryLimits]:
        if not value:
            raise ValueError("at least one category is needed")
        for name in value:
            _check_name(name)
        return value

    @model_validator(mode="after")
    def _references_exist(self) -> RateLimitSettings:
        known = set(self.categories)
        if self.default_category not in known:
            raise ValueError(f"default_category {self.default_category!r} is not a category")
        for rule in self.routes:
            if rule.category not in known:
                raise ValueError(f"route {rule.prefix!r} names unknown category {rule.category!r}")
        return self
