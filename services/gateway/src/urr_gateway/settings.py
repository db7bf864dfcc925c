"""The gateway's configuration: one ``GatewaySettings`` read from ``URR_*`` variables.

Every block has the defaults of the local stack (DESIGN.md §3), so ``python -m urr_gateway``
runs beside ``make up`` with no variables set. Production overrides the addresses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from urr_common.settings import HttpSettings, RedisSettings, ServiceSettings, TrustedKeysSettings
from urr_common.upstream_security import check_callers
from urr_gateway.ratelimit.config import RateLimitSettings
from urr_gateway.shedding import SheddingSettings
from urr_gateway.trust import TrustSettings

#: A request body larger than this is refused with 413 (overridable with
#: ``URR_HTTP__MAX_BODY_BYTES``); bodies are streamed, never buffered, so this is a policy
#: limit, not a memory one.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


def _upstream_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("an upstream is an http:// or https:// base URL")
    return value.rstrip("/")


class UpstreamSettings(BaseModel):
    """Base URL of each service the routing table names (``URR_UPSTREAMS__AUTH`` ...)."""

    auth: str = "http://127.0.0.1:3005"
    queue: str = "http://127.0.0.1:3007"
    ticket: str = "http://127.0.0.1:3002"
    admission_log: str = "http://127.0.0.1:3030"
    ratelimit_admin: str = "http://127.0.0.1:3040"

    @field_validator("auth", "queue", "ticket", "admission_log", "ratelimit_admin")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return _upstream_url(value)


class ProxySettings(BaseModel):
    """How the reverse proxy talks to upstreams (whom it trusts in front: ``TrustSettings``)."""

    #: Time to open a TCP connection to an upstream; past it the answer is 502.
    connect_timeout_s: float = Field(default=2.0, gt=0.0)
    #: Longest silence while reading an upstream's answer; past it the answer is 504.
    read_timeout_s: float = Field(default=30.0, gt=0.0)
    #: Each upstream has its own pool (its bulkhead): at most ``max_connections_per_host``
    #: connections, or ``max_connections`` when that is 0. A slow upstream fills only its own.
    max_connections: int = Field(default=512, ge=1)
    max_connections_per_host: int = Field(default=0, ge=0)
    #: Idle keep-alive connections are closed after this long.
    keepalive_timeout_s: float = Field(default=30.0, gt=0.0)
    #: Longest wait for a connection of a full pool; past it the answer is 503 with
    #: ``Retry-After`` (``upstream_busy``).
    pool_timeout_s: float = Field(default=2.0, gt=0.0)
    #: A client's request body must arrive whole within this time ...
    body_timeout_s: float = Field(default=60.0, gt=0.0)
    #: ... and, after ``body_rate_grace_s``, at least this fast on average (0: no minimum);
    #: otherwise the request ends with 408 (``body_timeout``).
    min_body_rate_bytes_per_s: int = Field(default=1024, ge=0)
    body_rate_grace_s: float = Field(default=5.0, ge=0.0)

    @property
    def connections_per_upstream(self) -> int:
        return self.max_connections_per_host or self.max_connections


class TokenCacheSettings(BaseModel):
    """Key and verified-token caches shared by the JWT and entry-token filters."""

    #: An unknown ``kid`` triggers at most one JWKS fetch per this interval (per key source
    #: and worker). Short, because a key rotated in just after a fetch is refused until the
    #: next one; a client sending random kids still causes only one fetch per interval.
    jwks_min_refetch_interval_s: float = Field(default=5.0, ge=0.0)
    #: Keys are refreshed in the background once the last fetch is older than this, so a key
    #: withdrawn from the JWKS stops being trusted.
    jwks_max_age_s: float = Field(default=300.0, gt=0.0)
    jwks_fetch_timeout_s: float = Field(default=2.0, gt=0.0)
    #: A verified token's claims are reused for at most this long (never past its ``exp``).
    verified_ttl_s: float = Field(default=30.0, ge=0.0)
    #: Verified tokens remembered per filter; the oldest is forgotten first.
    verified_max_entries: int = Field(default=10_000, ge=0)
    #: A refused token's reason is reused for this long, so a repeated forged token costs a
    #: lookup, not an ES256 verify (0 turns the refused cache off).
    refused_ttl_s: float = Field(default=10.0, ge=0.0, le=300.0)
    #: Refused tokens remembered per filter; the least recently seen is forgotten first.
    refused_max_entries: int = Field(default=10_000, ge=0, le=1_000_000)


class InternalListenerSettings(BaseModel):
    """Where the rate-limit check API listens: loopback or a private network only, and who
    may call it (``URR_INTERNAL__CALLERS``: ``{"<caller>": "<bearer secret>"}``; none set:
    every call is refused with 401 ``service_credential_required``)."""

    host: str = "127.0.0.1"
    port: int = Field(default=3011, ge=0, le=65535)
    callers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("callers")
    @classmethod
    def _callers_are_usable(cls, callers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        return check_callers(callers)


# The gateway's defaults live on subclasses, not in ``default_factory`` values: a nested
# variable (``URR_HTTP__HOST``) builds its block from the class defaults, so a default set only
# in a factory would silently fall back to the base class's value.
class GatewayHttpSettings(HttpSettings):
    port: int = Field(default=3001, ge=0, le=65535)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    #: ``URR_HTTP__SERVER``: what serves the public port. ``protocol``: the gateway's own
    #: HTTP/1.1 listener (``publicserver``, issue 17: the same pipeline and proxy without
    #: aiohttp's server objects); ``aiohttp``: aiohttp's server with the pipeline as its one
    #: middleware.
    server: Literal["protocol", "aiohttp"] = "protocol"
    #: ``URR_HTTP__GC_GEN0_THRESHOLD``: 0 leaves the interpreter's garbage collector as it
    #: is. N > 0: once listening, everything allocated at start-up is moved out of the
    #: collector's sight (``gc.freeze``: the app, its caches, imported modules) and a
    #: young-generation collection runs every N net allocations instead of 700, so fewer and
    #: shorter collections land inside requests (the tail latency). 20,000 by default: in 14 of
    #: 14 same-run pairs it lowered the P99 (about halved) and in 13 the CPU per request
    #: (docs/performance.md); the price is cyclic garbage living a few MB longer.
    gc_gen0_threshold: int = Field(default=20_000, ge=0, le=1_000_000)


class AccessTrustSettings(TrustedKeysSettings):
    """Access tokens, signed by the auth service."""

    jwks_url: str | None = "http://127.0.0.1:3005/.well-known/jwks.json"
    issuer: str = "urr-auth"
    audience: str = "urr"


class EntryTrustSettings(TrustedKeysSettings):
    """Tier-2 entry tokens, signed by the queue service."""

    jwks_url: str | None = "http://127.0.0.1:3007/.well-known/jwks.json"
    issuer: str = "urr-queue"
    audience: str = "urr-entry"


class IdentityAssertionSettings(BaseModel):
    """``URR_IDENTITY__*``: the key the gateway signs upstream identity assertions with.

    Upstreams verify ``X-Urr-Identity`` (``urr_common.identity``) with its public half
    (their ``URR_IDENTITY__PUBLIC_KEY_FILES`` or ``URR_IDENTITY__JWKS``).
    """

    #: PEM of the EC P-256 private key; made on first start when missing (local runs). In
    #: Kubernetes it is mounted from the Secret ``urr-gateway-identity-key``.
    private_key_file: Path = Path(".urr/keys/identity/local-1.pem")
    #: Written into every assertion's header; upstreams look the key up by it (and take it
    #: from the public key's file name, so it must also be a usable file name).
    key_id: str = Field(default="local-1", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    #: Lifetime of one assertion: long enough for a slow upstream queue, short enough that a
    #: leaked one is soon worthless.
    ttl_s: int = Field(default=15, ge=2, le=60)
    #: One signed assertion serves identical requests (user, role, upstream, method, path)
    #: for this long: signing costs tens of microseconds, a polling client repeats itself.
    reuse_s: float = Field(default=1.0, ge=0.0, le=5.0)

    @model_validator(mode="after")
    def _reuse_within_lifetime(self) -> Self:
        if self.reuse_s * 2 > self.ttl_s:
            raise ValueError(
                "URR_IDENTITY__REUSE_S must be at most half of URR_IDENTITY__TTL_S, so a reused "
                "assertion still has most of its life left when an upstream sees it"
            )
        return self


class GatewaySettings(ServiceSettings):
    service_name: str = "gateway"
    http: GatewayHttpSettings = Field(default_factory=GatewayHttpSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    access_trust: AccessTrustSettings = Field(default_factory=AccessTrustSettings)
    entry_trust: EntryTrustSettings = Field(default_factory=EntryTrustSettings)
    identity: IdentityAssertionSettings = Field(default_factory=IdentityAssertionSettings)
    upstreams: UpstreamSettings = Field(default_factory=UpstreamSettings)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    token_cache: TokenCacheSettings = Field(default_factory=TokenCacheSettings)
    #: Budget of the revoked-entry-token lookup in Redis; past it the token is accepted
    #: (fail open, counted), the same rule as the rate limiter's ``open`` policy. Measured on
    #: the event loop, so it includes the loop's own lag: a saturated worker needs headroom.
    revocation_timeout_s: float = Field(default=0.1, gt=0.0)
    #: The check API's listener; started only when a check application is provided.
    internal: InternalListenerSettings = Field(default_factory=InternalListenerSettings)
    #: Worker processes sharing the public port (SO_REUSEPORT); 1 serves in-process.
    workers: int = Field(default=1, ge=1, le=64)
    #: Categories, limits, failure policies, budget and breaker (``URR_RATE_LIMIT__*``).
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    #: Who is in front of the gateway and which sites may send cookies (``URR_TRUST__*``).
    trust: TrustSettings = Field(default_factory=TrustSettings)
    #: Per-peer-address admission before HTTP parsing on the public port (``URR_SHED__*``).
    shed: SheddingSettings = Field(default_factory=SheddingSettings)
