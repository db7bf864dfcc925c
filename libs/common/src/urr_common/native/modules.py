"""The modules mypyc compiles: the gateway's public request path and what it runs on.

One list, read by the builder (``python -m urr_common.native.build``) and by the guard that
decides at import whether the compiled build may be used. A module missing from this list
always runs as Python. Left interpreted, because mypyc refuses them (docs/performance.md,
"the hot path compiled with mypyc"): the pydantic models (``trust``, ``checkapi``), ctypes
(``ratelimit.finetimer``), a base with ``__slots__`` (``checksite``,
``urr_common.http1site``), exception subclasses of builtins (``clientgone``) and async
generators (``ratelimit.lifecycle``).
"""

from __future__ import annotations

GATEWAY = (
    "publicserver",
    "checkserver",
    "publicrequest",
    "chain",
    "context",
    "forwarding",
    "responseheaders",
    "routing",
    "tokencache",
    "paths",
    "ingress",
    "verification",
    "revocation",
    "filters.base",
    "filters.cookie_auth",
    "filters.csrf",
    "filters.jwt_auth",
    "filters.entry_token",
    "filters.ratelimit",
    "cookieheader",
    "refusedcache",
    "prepare",
    "identity_key",
    "ratelimit.pipeline",
    "ratelimit.limiter",
    "ratelimit.window",
    "ratelimit.headers",
    "ratelimit.keys",
    "ratelimit.slots",
    "ratelimit.budget",
    "ratelimit.deny_cache",
    "ratelimit.local",
    "ratelimit.breaker",
    "ratelimit.tenant",
    "ratelimit.routing",
    "ratelimit.usage_tally",
    "ratelimit.metrics",
    "upstream.client",
    "upstream.connection",
    "upstream.pool",
    "upstream.deadlines",
    "upstream.errors",
)
COMMON = ("http1", "resp", "logs")

# (mypyc group, the package's compiled modules); a group is one shared library. The gateway's
# group calls into the common one, so the build is used whole or not at all.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("urr_common", COMMON),
    ("urr_gateway", GATEWAY),
)


def compiled_modules() -> tuple[str, ...]:
    """Every compiled module's full name, in build order."""
    return tuple(f"{package}.{name}" for package, names in GROUPS for name in names)


def shared_library(package: str) -> str:
    """The full name of the shared library a package's group compiles into."""
    return f"{package}._native__mypyc"
