"""The gateway application factory.

``create_app(settings, ...)`` is sync and opens nothing: the shared upstream session, the
Redis client and the JWKS fetches start in ``cleanup_ctx`` inside the running loop. The rate
limiter, built on its own branch, comes in as an argument (``rate_limit_filter``), so wiring
it is one edit in ``server.build_apps``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from urr_common.clients import redis_client
from urr_common.identity import AssertionSigner
from urr_common.logs import get_logger
from urr_common.service import HTTP_METRICS_KEY, create_service_app
from urr_common.settings import TrustedKeysSettings
from urr_common.tasks import CLOSE_STEP_S, bounded_step
from urr_common.tokens import (
    KeySet,
    TokenVerifier,
    load_or_create_signing_key,
    load_verification_keys,
)
from urr_gateway.chain import GatewayPipeline, build_chain
from urr_gateway.context import Identity
from urr_gateway.filters.base import GatewayFilter
from urr_gateway.filters.cookie_auth import cookie_auth_filter
from urr_gateway.filters.entry_token import (
    ENTRY_REQUIRED_CLAIMS,
    EntryClaims,
    entry_claims,
    entry_token_filter,
)
from urr_gateway.filters.jwt_auth import (
    ACCESS_REQUIRED_CLAIMS,
    auth_gate_filter,
    identity_from_claims,
    jwt_auth_filter,
)
from urr_gateway.jwks import JwksKeySource, http_jwks_fetcher
from urr_gateway.metrics import GatewayMetrics
from urr_gateway.proxy import (
    UpstreamProxy,
    open_jwks_session,
    open_upstream_client,
    upstream_urls,
)
from urr_gateway.refusedcache import RefusedTokenCache
from urr_gateway.responseheaders import install_response_headers
from urr_gateway.revocation import (
    PrecheckedRevocation,
    RedisRevocationCheck,
    VerdictReader,
    stored_verdict,
)
from urr_gateway.settings import GatewaySettings, IdentityAssertionSettings, TokenCacheSettings
from urr_gateway.tokencache import VerifiedTokenCache
from urr_gateway.upstream import UpstreamClient
from urr_gateway.verification import CachedTokenVerifier

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

T = TypeVar("T")
_LOG = get_logger(__name__)

UPSTREAM_SESSION_KEY = web.AppKey("urr_gateway_upstream_session", aiohttp.ClientSession)
UPSTREAM_CLIENT_KEY = web.AppKey("urr_gateway_upstream_client", UpstreamClient)
REDIS_KEY: web.AppKey[Redis | RedisCluster] = web.AppKey("urr_gateway_redis")
GATEWAY_METRICS_KEY = web.AppKey("urr_gateway_metrics", GatewayMetrics)
ACCESS_KEYS_KEY = web.AppKey("urr_gateway_access_keys", JwksKeySource)
ENTRY_KEYS_KEY = web.AppKey("urr_gateway_entry_keys", JwksKeySource)
#: The app's pipeline and proxy handler, for a server that runs them without aiohttp's
#: request objects (``bench/gateway_protocol_prototype.py`` measures one).
PIPELINE_KEY = web.AppKey("urr_gateway_pipeline", GatewayPipeline)
PROXY_KEY = web.AppKey("urr_gateway_proxy", UpstreamProxy)


def create_app(
    settings: GatewaySettings,
    *,
    registry: CollectorRegistry | None = None,
    redis: Redis | RedisCluster | None = None,
    rate_limit_filter: GatewayFilter | None = None,
    revocation_verdict: VerdictReader = stored_verdict,
    access_token_revoked: Callable[[str], bool] | None = None,
    revocation_exists: Callable[[str], Awaitable[int]] | None = None,
) -> web.Application:
    """The public gateway application.

    ``redis``: a client to share with the rate limiter (the app closes it on shutdown); by
    default one is made from ``settings.redis``. ``rate_limit_filter``: the order-0 filter.
    ``revocation_verdict``: where the entry-token filter finds the limiter's answer to the
    revoked-jti lookup it made in its own round trip (else the filter asks Redis itself).
    ``access_token_revoked(jti)``: access tokens revoked by ``jti`` are refused (401).
    ``revocation_exists(key)``: how that fallback sends its ``EXISTS`` (the limiter's
    pipelined connection); by default through the Redis client.
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = GatewayMetrics.register(registry)
    holder: dict[str, aiohttp.ClientSession] = {}
    upstream_holder: dict[str, UpstreamClient] = {}

    def session() -> aiohttp.ClientSession:
        return holder["session"]

    access_keys = _key_source("access", settings.access_trust, settings, session, metrics)
    entry_keys = _key_source("entry", settings.entry_trust, settings, session, metrics)
    access = CachedTokenVerifier(
        access_keys,
        _verifier(settings.access_trust, ACCESS_REQUIRED_CLAIMS),
        identity_from_claims,
        _cache(settings.token_cache, Identity),
        _refused(settings.token_cache),
    )
    entry = CachedTokenVerifier(
        entry_keys,
        _verifier(settings.entry_trust, ENTRY_REQUIRED_CLAIMS),
        entry_claims,
        _cache(settings.token_cache, EntryClaims),
        _refused(settings.token_cache),
    )
    redis_holder: dict[str, Redis | RedisCluster] = {}
    revocation = PrecheckedRevocation(
        RedisRevocationCheck(
            lambda: redis_holder["redis"],
            settings.revocation_timeout_s,
            metrics.revocation_failures,
            revocation_exists,
        ),
        revocation_verdict,
    )
    filters = build_chain(
        cookie_auth=cookie_auth_filter(),
        jwt_auth=jwt_auth_filter(access, metrics.token_rejections, access_token_revoked),
        rate_limit=rate_limit_filter,
        auth_gate=auth_gate_filter(settings.trust.site_origins),
        entry_token=entry_token_filter(entry, revocation, metrics.token_rejections),
    )
    app = create_service_app(settings, registry=registry, shared_middlewares=False)
    pipeline = GatewayPipeline(filters, trust=settings.trust, metrics=app[HTTP_METRICS_KEY])
    app.middlewares.append(pipeline.middleware())
    install_response_headers(app, settings.trust)
    app[GATEWAY_METRICS_KEY] = metrics
    app[ACCESS_KEYS_KEY] = access_keys
    app[ENTRY_KEYS_KEY] = entry_keys

    async def clients(app: web.Application) -> AsyncIterator[None]:
        client = redis if redis is not None else redis_client(settings.redis)
        redis_holder["redis"] = app[REDIS_KEY] = client
        holder["session"] = app[UPSTREAM_SESSION_KEY] = open_jwks_session(settings)
        upstream_holder["client"] = app[UPSTREAM_CLIENT_KEY] = open_upstream_client(settings)
        # Learn the keys now, without holding up start-up if an issuer is still starting:
        # a request that needs a key joins the fetch in flight.
        warmups = [asyncio.create_task(source.refresh()) for source in (access_keys, entry_keys)]
        try:
            yield
        finally:
            # Each step bounded on its own: one that never ends (a driver that turns its
            # cancellation into an error and retries) must not keep the others from closing.
            for task in warmups:
                task.cancel()
            steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("jwks_warmups", lambda: asyncio.gather(*warmups, return_exceptions=True)),
                ("access_keys", access_keys.close),
                ("entry_keys", entry_keys.close),
                ("jwks_session", holder["session"].close),
                ("upstream_client", upstream_holder["client"].close),
                ("redis", client.aclose),
            ]
            for step, close in steps:
                await bounded_step(step, close(), CLOSE_STEP_S, _LOG)

    app.cleanup_ctx.append(clients)
    proxy = UpstreamProxy(
        upstream_urls(settings),
        lambda: upstream_holder["client"],
        settings.http.max_body_bytes,
        metrics,
        settings.proxy,
        identity_signer(settings.identity),
    )
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    app[PIPELINE_KEY] = pipeline
    app[PROXY_KEY] = proxy
    return app


def _key_source(
    name: str,
    trust: TrustedKeysSettings,
    settings: GatewaySettings,
    session: Callable[[], aiohttp.ClientSession],
    metrics: GatewayMetrics,
) -> JwksKeySource:
    cache = settings.token_cache
    fetch = (
        http_jwks_fetcher(session, trust.jwks_url, cache.jwks_fetch_timeout_s)
        if trust.jwks_url
        else None
    )
    return JwksKeySource(
        name,
        fetch,
        load_verification_keys(trust.public_key_files),
        min_refetch_interval_s=cache.jwks_min_refetch_interval_s,
        max_age_s=cache.jwks_max_age_s,
        observer=lambda outcome: metrics.jwks_fetches.labels(name, outcome).inc(),
    )


def _verifier(trust: TrustedKeysSettings, required: tuple[str, ...]) -> TokenVerifier:
    return TokenVerifier(
        keys=KeySet(),
        issuer=trust.issuer,
        audience=trust.audience,
        leeway_s=trust.leeway_s,
        required_claims=required,
    )


def _cache(settings: TokenCacheSettings, _: type[T]) -> VerifiedTokenCache[T]:
    return VerifiedTokenCache(settings.verified_max_entries, settings.verified_ttl_s)


def _refused(settings: TokenCacheSettings) -> RefusedTokenCache:
    return RefusedTokenCache(settings.refused_max_entries, settings.refused_ttl_s)


def identity_signer(settings: IdentityAssertionSettings) -> AssertionSigner:
    """The signer of upstream identity assertions (key made on first start when missing)."""
    key = load_or_create_signing_key(settings.private_key_file, settings.key_id)
    return AssertionSigner(key, ttl_s=settings.ttl_s, reuse_s=settings.reuse_s)
