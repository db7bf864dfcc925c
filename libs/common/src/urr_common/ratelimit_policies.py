"""Rate-limit policies (seed 002's ``ApiPolicy``): what they are, how one is chosen.

Pure: the admin service validates and stores them, the limiters read the published set and
ask ``governing`` which one decides a request.

**Route patterns** are paths of segments: a literal segment matches itself, ``*`` matches one
segment, and a final ``**`` matches the rest of the path (none included):
``/api/v1/queue/*/status``, ``/api/v1/reservations/**``, ``/**``.

**Which policy governs** (documented for operators, tested): among the policies whose pattern
and methods match, the highest ``priority`` wins; at equal priority a tenant's own policy wins
over a default one, then the pattern with more literal segments, then the smaller id. So an
operator overrides a default for one tenant by giving the tenant a policy of the same
priority, and overrides everything by a higher priority.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_WINDOW_S = 31 * 24 * 3600
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._~{}:@-]+$")


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(gt=0, le=10**9)
    window_s: int = Field(gt=0, le=MAX_WINDOW_S)


def compile_route(pattern: str) -> re.Pattern[str]:
    """The regex a route pattern stands for; ValueError naming what is wrong."""
    if not pattern.startswith("/") or len(pattern) > 200:
        raise ValueError("a route pattern starts with '/' and has at most 200 characters")
    segments = pattern[1:].split("/")
    parts: list[str] = []
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        if segment == "**":
            if not last:
                raise ValueError("'**' may only end a route pattern")
            parts.append("(?:/.*)?")
        elif segment == "*":
            parts.append("/[^/]+")
        elif segment == "" and last and position > 0:
            parts.append("/")
        elif _SEGMENT_RE.fullmatch(segment):
            parts.append("/" + re.escape(segment))
        else:
            raise ValueError(f"route pattern segment {segment!r} is not a literal, '*' or '**'")
    if pattern == "/**":
        return re.compile(r"^/.*$")
    return re.compile("^" + "".join(parts) + "$")


class Policy(BaseModel):
    """One policy: the tenant it belongs to (``None``: the default set) and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    tenant: str | None = Field(default=None, max_length=64)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    route: str
    #: Empty: every method.
    methods: frozenset[str] = frozenset()
    windows: tuple[Window, ...] = Field(min_length=1, max_length=4)
    cost: int = Field(default=1, ge=1, le=1000)
    failure: Literal["open", "local", "closed"] = "open"
    mode: Literal["enforce", "shadow"] = "enforce"
    priority: int = Field(default=0, ge=-1000, le=1000)

    @field_validator("route")
    @classmethod
    def _route_compiles(cls, value: str) -> str:
        compile_route(value)
        return value

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: frozenset[str]) -> frozenset[str]:
        upper = frozenset(method.upper() for method in value)
        unknown = sorted(upper - METHODS)
        if unknown:
            raise ValueError(f"unknown methods {unknown}")
        return upper

    @model_validator(mode="after")
    def _distinct_windows(self) -> Self:
        lengths = [window.window_s for window in self.windows]
        if len(set(lengths)) != len(lengths):
            raise ValueError("two windows of one policy must differ in length")
        return self

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        return compile_route(self.route)

    @cached_property
    def specificity(self) -> int:
        return sum(1 for segment in self.route.split("/") if segment and "*" not in segment)

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method.upper() not in self.methods:
            return False
        return self._pattern.match(path) is not None


def governing(
    policies: Iterable[Policy], tenant: str | None, method: str, path: str
) -> Policy | None:
    """The policy that decides this request (see the module docstring for the order)."""
    candidates = [
        policy
        for policy in policies
        if (policy.tenant is None or policy.tenant == tenant) and policy.matches(method, path)
    ]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda p: (-p.priority, p.tenant is None, -p.specificity, p.id),
    )


class PolicySet(BaseModel):
    """What the admin service publishes: every policy, under a version that only grows.

    The limiters need more than policies to decide in one round trip without asking
    PostgreSQL, so the same versioned document carries the tenants' monthly quotas, the
    digests of the API keys that work (active keys of active tenants: a revoked key or a
    disabled tenant is simply absent) and the access-token ``jti``s still revoked. Any change
    to one of them bumps the version, so one version check keeps a limiter current.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=0)
    policies: tuple[Policy, ...]
    #: Tenant -> requests (cost units) allowed per calendar month, UTC.
    quotas: dict[str, int] = Field(default_factory=dict)
    #: ``api_key_digest(secret)`` -> tenant.
    api_keys: dict[str, str] = Field(default_factory=dict)
    revoked_jtis: frozenset[str] = frozenset()


def api_key_digest(secret: str) -> str:
    """What the published set knows an API key by: SHA-256 hex (the secret is 256 random bits,
    so a plain hash cannot be reversed and needs no salt)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def default_policies() -> Sequence[Policy]:
    """The four categories of seed 004 as default policies (DESIGN.md §4)."""
    minute = (60,)

    def policy(pid: str, route: str, limit: int, failure: str, priority: int) -> Policy:
        return Policy.model_validate(
            {
                "id": pid,
                "name": pid,
                "route": route,
                "windows": [{"limit": limit, "window_s": w} for w in minute],
                "failure": failure,
                "priority": priority,
            }
        )

    return (
        policy("auth", "/api/v1/auth/**", 20, "local", 10),
        policy("queue", "/api/v1/queue/**", 60, "open", 10),
        policy("booking-reservations", "/api/v1/reservations/**", 10, "open", 10),
        policy("booking-seats", "/api/v1/seats/**", 10, "open", 10),
        policy("general", "/**", 100, "open", 0),
    )


#: Where the admin service publishes the policy set (JSON of ``PolicySet``), and the channel
#: it announces each new version on; limiters read the key at start and on every message.
POLICY_SET_KEY = "ratelimit:policies"
POLICY_CHANNEL = "ratelimit:policies:changed"


def revoked_access_token_key(jti: str) -> str:
    """Present while an access token with this ``jti`` is revoked (expires with the token)."""
    return f"ratelimit:revoked-jti:{jti}"
