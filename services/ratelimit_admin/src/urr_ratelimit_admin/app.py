"""The Admin API of seed 002 under ``/api/v1/admin/ratelimit/`` (admin role, via the gateway).

Every write is one PostgreSQL transaction together with its audit row; policy-affecting
writes then publish the new policy set to Redis (``publisher.py``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from urr_common.logs import get_logger
from urr_common.payloads import json_response, read_json, validation_errors
from urr_common.problems import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    Unprocessable,
)
from urr_common.ratelimit_policies import Policy
from urr_common.service import create_service_app, request_id_of, sleep_unless_stopped
from urr_common.upstream_security import identity_middleware, identity_of, require_role
from urr_ratelimit_admin import store
from urr_ratelimit_admin.publisher import PolicyPublisher
from urr_ratelimit_admin.settings import RatelimitAdminSettings
from urr_ratelimit_admin.usage_query import Cursor, UsageQuery, parse_usage_query

_LOG = get_logger(__name__)

POOL_KEY = web.AppKey("urr_rl_pool", asyncpg.Pool)
PUBLISHER_KEY = web.AppKey("urr_rl_publisher", PolicyPublisher)
PREFIX = "/api/v1/admin/ratelimit"
#: This service's name in the gateway's routing table: the ``aud`` of assertions it accepts.
AUDIENCE = "ratelimit_admin"
#: A tenant reads its own usage here with its API key (through the gateway).
TENANT_USAGE_PATH = "/api/v1/ratelimit/usage"
API_KEY_HEADER = "X-API-Key"
MAX_TOKEN_LIFETIME = timedelta(days=31)


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    name: str = Field(min_length=1, max_length=200)


class TenantPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    status: Literal["active", "disabled"] | None = None


class QuotaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    monthly_requests: int = Field(gt=0, le=10**12)
    soft_alert_pct: int = Field(default=80, ge=1, le=100)


class TokenRevocationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    jti: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    #: When the token expires anyway (the revocation is kept that long).
    expires_at: datetime

    @field_validator("expires_at")
    @classmethod
    def _aware_and_bounded(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-12-06T10:00:00Z)")
        if value > datetime.now(UTC) + MAX_TOKEN_LIFETIME:
            raise ValueError("no access token lives longer than 31 days")
        return value


def _actor(request: web.Request) -> store.Actor:
    """The admin the gateway asserted (401 without an assertion, 403 for another role)."""
    require_role(request, "admin", code="admin_required")
    return store.Actor(identity_of(request).user_id, request_id_of(request))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _mapped(handler: Handler) -> Handler:
    """Store errors as problems, and the admin check before anything else."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        _actor(request)
        try:
            return await handler(request)
        except store.NotFoundError as exc:
            raise NotFound(str(exc), code="not_found") from exc
        except store.ConflictError as exc:
            raise Conflict(str(exc), code="already_exists") from exc
        except store.UnknownTenantError as exc:
            raise Unprocessable(str(exc), code="no_tenant") from exc

    return wrapped


async def _publish(request: web.Request) -> None:
    """Best effort: the periodic republish catches up if Redis is down now."""
    try:
        async with request.app[POOL_KEY].acquire() as conn:
            policies = await store.published_config(conn)
        await request.app[PUBLISHER_KEY].publish(policies)
    except Exception as exc:  # Redis unreachable: logged; republish_loop retries
        _LOG.warning("policy_publish_failed", error=f"{type(exc).__name__}: {exc}")


async def create_tenant(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, TenantIn)
    async with request.app[POOL_KEY].acquire() as conn:
        row = await store.create_tenant(conn, _actor(request), body.id, body.name)
    return json_response(row, status=201)


async def list_tenants(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL_KEY].acquire() as conn:
        return json_response({"tenants": await store.list_tenants(conn)})


async def get_tenant(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL_KEY].acquire() as conn:
        return json_response(await store.get_tenant(conn, request.match_info["tenant"]))


async def patch_tenant(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, TenantPatch)
    changes = body.model_dump(exclude_none=True)
    async with request.app[POOL_KEY].acquire() as conn:
        row = await store.update_tenant(
            conn, _actor(request), request.match_info["tenant"], changes
        )
    await _publish(request)
    return json_response(row)


async def create_key(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL_KEY].acquire() as conn:
        row = await store.create_key(conn, _actor(request), request.match_info["tenant"])
    await _publish(request)
    return json_response(row, status=201, headers={"Cache-Control": "no-store"})


async def list_keys(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL_KEY].acquire() as conn:
        return json_response({"keys": await store.list_keys(conn, request.match_info["tenant"])})


async def revoke_key(request: web.Request) -> web.StreamResponse:
    try:
        key_id = uuid.UUID(request.match_info["key"])
    except ValueError as exc:
        raise BadRequest("a key id is a UUID", code="invalid_key_id") from exc
    async with request.app[POOL_KEY].acquire() as conn:
        row = await store.revoke_key(conn, _actor(request), key_id)
    await _publish(request)
    return json_response(row)


class _JsonObject(BaseModel):
    """Any JSON object: read_json's checks (type, size, syntax), the fields validated later."""

    model_config = ConfigDict(extra="allow")


async def put_policy(request: web.Request) -> web.StreamResponse:
    body = (await read_json(request, _JsonObject)).model_dump()
    try:
        policy = Policy.model_validate({**body, "id": request.match_info["policy"]})
    except ValidationError as exc:
        raise Unprocessable(
            "the policy is invalid", code="invalid_policy", errors=validation_errors(exc)
        ) from exc
    async with request.app[POOL_KEY].acquire() as conn:
        row, created = await store.put_policy(conn, _actor(request), policy)
    await _publish(request)
    return json_response(row, status=201 if created else 200)


async def list_policies(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL_KEY].acquire() as conn:
        policies = await store.policy_set(conn)
    # The published extras (key digests, revoked jtis) are the limiters' business only.
    return json_response(policies.model_dump(mode="json", include={"version", "policies"}))


async def delete_policy(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL_KEY].acquire() as conn:
        await store.delete_policy(conn, _actor(request), request.match_info["policy"])
    await _publish(request)
    return web.Response(status=204)


async def put_quota(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, QuotaIn)
    async with request.app[POOL_KEY].acquire() as conn:
        row = await store.put_quota(
            conn,
            _actor(request),
            request.match_info["tenant"],
            body.monthly_requests,
            body.soft_alert_pct,
        )
    await _publish(request)
    return json_response(row)


async def revoke_token(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, TokenRevocationIn)
    async with request.app[POOL_KEY].acquire() as conn:
        row = await store.revoke_token(conn, _actor(request), body.jti, body.expires_at)
    await request.app[PUBLISHER_KEY].revoke(body.jti, body.expires_at)
    await _publish(request)
    return json_response(row)


def _int_param(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > high:
        raise BadRequest(f"{name} is a whole number up to {high}", code="invalid_parameter")
    return int(raw)


async def read_audit(request: web.Request) -> web.StreamResponse:
    query = request.query
    async with request.app[POOL_KEY].acquire() as conn:
        rows = await store.read_audit(
            conn,
            actor=query.get("actor"),
            action=query.get("action"),
            target=query.get("target"),
            after_id=_int_param(request, "after", 0, 2**62),
            limit=_int_param(request, "limit", 100, 1000),
        )
    return json_response({"entries": rows})


def _usage_query(request: web.Request) -> UsageQuery:
    try:
        return parse_usage_query(request.query, list(request.query.keys()))
    except ValidationError as exc:
        raise Unprocessable(
            "the usage filters are invalid", code="invalid_filter", errors=validation_errors(exc)
        ) from exc


async def _usage_page(request: web.Request, query: UsageQuery) -> web.StreamResponse:
    after = query.cursor
    async with request.app[POOL_KEY].acquire() as conn:
        rows = await store.read_usage(
            conn,
            tenant=query.tenant,
            policy=query.policy,
            start=query.start,
            end=query.end,
            after=None if after is None else (after.period_start, after.tenant, after.policy),
            limit=query.limit,
        )
    following = None
    if len(rows) == query.limit:
        last = rows[-1]
        following = Cursor(
            period_start=datetime.fromisoformat(last["period_start"]),
            tenant=last["tenant"],
            policy=last["policy"],
        ).encode()
    return json_response({"usage": rows, "next": following})


async def read_usage(request: web.Request) -> web.StreamResponse:
    """Any tenant's usage (admin)."""
    return await _usage_page(request, _usage_query(request))


async def read_own_usage(request: web.Request) -> web.StreamResponse:
    """The usage of the tenant whose API key the request carries, and nobody else's."""
    secret = request.headers.get(API_KEY_HEADER, "")
    async with request.app[POOL_KEY].acquire() as conn:
        tenant = await store.tenant_of_key(conn, secret) if secret else None
    if tenant is None:
        raise Unauthorized(
            f"a valid {API_KEY_HEADER} is needed (unknown, revoked or missing)",
            code="invalid_api_key",
        )
    query = _usage_query(request)
    if query.tenant is not None and query.tenant != tenant:
        raise Forbidden("an API key reads its own tenant's usage only", code="other_tenant")
    return await _usage_page(request, query.model_copy(update={"tenant": tenant}))


async def republish_loop(
    pool: asyncpg.Pool, publisher: PolicyPublisher, every_s: float, stop: asyncio.Event
) -> None:
    """Keep Redis at PostgreSQL's version, whatever a publish after a write missed."""
    while not stop.is_set():
        try:
            async with pool.acquire() as conn:
                policies = await store.published_config(conn)
            if await publisher.published_version() < policies.version:
                await publisher.publish(policies)
        except Exception as exc:  # Redis or PostgreSQL away: try again next period
            _LOG.warning("policy_republish_failed", error=f"{type(exc).__name__}: {exc}")
        await sleep_unless_stopped(stop, every_s)


def create_app(
    settings: RatelimitAdminSettings,
    pool: asyncpg.Pool,
    publisher: PolicyPublisher,
    *,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    app = create_service_app(
        settings,
        registry=registry,
        middlewares=[identity_middleware(settings.identity.verifier(AUDIENCE))],
    )
    app[POOL_KEY] = pool
    app[PUBLISHER_KEY] = publisher
    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/tenants", create_tenant),
        ("GET", "/tenants", list_tenants),
        ("GET", "/tenants/{tenant}", get_tenant),
        ("PATCH", "/tenants/{tenant}", patch_tenant),
        ("POST", "/tenants/{tenant}/keys", create_key),
        ("GET", "/tenants/{tenant}/keys", list_keys),
        ("PUT", "/tenants/{tenant}/quota", put_quota),
        ("POST", "/keys/{key}/revoke", revoke_key),
        ("GET", "/policies", list_policies),
        ("PUT", "/policies/{policy}", put_policy),
        ("DELETE", "/policies/{policy}", delete_policy),
        ("POST", "/tokens/revoke", revoke_token),
        ("GET", "/audit", read_audit),
        ("GET", "/usage", read_usage),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, PREFIX + path, _mapped(handler))
    app.router.add_get(TENANT_USAGE_PATH, read_own_usage)
    return app
