"""The rate-limit model in PostgreSQL. Every write runs in one transaction with its audit row;
policy writes also bump the configuration version the limiters follow."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson

from urr_common.migrations import Migration, apply_migrations, discover
from urr_common.ratelimit_policies import Policy, PolicySet, default_policies

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

COMPONENT = "ratelimit"
KEY_PREFIX = "urr_"


def migrations() -> list[Migration]:
    return discover(files("urr_ratelimit_admin") / "migrations")


async def migrate(pool: asyncpg.Pool) -> list[str]:
    return await apply_migrations(pool, COMPONENT, migrations())


class NotFoundError(LookupError):
    pass


class ConflictError(ValueError):
    pass


class UnknownTenantError(ValueError):
    """A body names a tenant that does not exist (the request is invalid, not a lookup)."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change, for the audit row."""

    user_id: str
    request_id: str


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


async def audit(
    conn: Connection, actor: Actor, action: str, target: str, before: Any, after: Any
) -> None:
    await conn.execute(
        "INSERT INTO rl_audit_log (actor, action, target, before, after, request_id)"
        " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)",
        actor.user_id,
        action,
        target,
        _json(before),
        _json(after),
        actor.request_id,
    )


def _maybe(record: Any) -> dict[str, Any] | None:
    return None if record is None else _row(record)


def _row(record: Any) -> dict[str, Any]:
    """A row as JSON-ready values (``RETURNING`` rows and rows known to exist)."""
    out = {}
    for key, value in dict(record).items():
        out[key] = value.isoformat() if isinstance(value, datetime) else value
        if isinstance(value, uuid.UUID):
            out[key] = str(value)
    return out


# Tenants ---------------------------------------------------------------------------------


async def create_tenant(
    conn: Connection, actor: Actor, tenant_id: str, name: str
) -> dict[str, Any]:
    async with conn.transaction():
        row = _maybe(
            await conn.fetchrow(
                "INSERT INTO rl_tenants (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING"
                " RETURNING id, name, status, created_at, updated_at",
                tenant_id,
                name,
            )
        )
        if row is None:
            raise ConflictError(f"tenant {tenant_id!r} exists")
        await audit(conn, actor, "tenant.create", f"tenant:{tenant_id}", None, row)
    return row


async def get_tenant(conn: Connection, tenant_id: str) -> dict[str, Any]:
    row = _maybe(
        await conn.fetchrow(
            "SELECT id, name, status, created_at, updated_at FROM rl_tenants WHERE id = $1",
            tenant_id,
        )
    )
    if row is None:
        raise NotFoundError(f"no tenant {tenant_id!r}")
    return row


async def list_tenants(conn: Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, name, status, created_at, updated_at FROM rl_tenants ORDER BY id"
    )
    return [_row(row) for row in rows]


async def update_tenant(
    conn: Connection, actor: Actor, tenant_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    async with conn.transaction():
        before = _maybe(
            await conn.fetchrow(
                "SELECT id, name, status, created_at, updated_at FROM rl_tenants"
                " WHERE id = $1 FOR UPDATE",
                tenant_id,
            )
        )
        if before is None:
            raise NotFoundError(f"no tenant {tenant_id!r}")
        after = _row(
            await conn.fetchrow(
                "UPDATE rl_tenants SET name = $2, status = $3, updated_at = now() WHERE id = $1"
                " RETURNING id, name, status, created_at, updated_at",
                tenant_id,
                changes.get("name", before["name"]),
                changes.get("status", before["status"]),
            )
        )
        await audit(conn, actor, "tenant.update", f"tenant:{tenant_id}", before, after)
        await _bump_version(conn)  # a disabled tenant's keys stop working at the limiters
    return after


# API keys --------------------------------------------------------------------------------


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_key(secret: str) -> str | None:
    """The prefix of a well-formed key (``urr_<prefix>_<random>``), else None."""
    # The random part is URL-safe base64, which may itself contain "_".
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] + "_" != KEY_PREFIX or len(parts[1]) != 8 or len(secret) > 100:
        return None
    return parts[1]


async def create_key(conn: Connection, actor: Actor, tenant_id: str) -> dict[str, Any]:
    """A new key; the answer holds the secret, which nothing stores."""
    prefix = secrets.token_hex(4)
    secret = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key_id = uuid.uuid4()
    async with conn.transaction():
        await get_tenant(conn, tenant_id)
        row = _row(
            await conn.fetchrow(
                "INSERT INTO rl_api_keys (id, tenant_id, prefix, secret_hash)"
                " VALUES ($1, $2, $3, $4) RETURNING id, tenant_id, prefix, created_at,"
                " last_used_at, revoked_at",
                key_id,
                tenant_id,
                prefix,
                hash_secret(secret),
            )
        )
        await audit(conn, actor, "key.create", f"key:{key_id}", None, row)
        await _bump_version(conn)
    return {**row, "secret": secret}


async def list_keys(conn: Connection, tenant_id: str) -> list[dict[str, Any]]:
    await get_tenant(conn, tenant_id)
    rows = await conn.fetch(
        "SELECT id, tenant_id, prefix, created_at, last_used_at, revoked_at FROM rl_api_keys"
        " WHERE tenant_id = $1 ORDER BY created_at",
        tenant_id,
    )
    return [_row(row) for row in rows]


async def revoke_key(conn: Connection, actor: Actor, key_id: uuid.UUID) -> dict[str, Any]:
    async with conn.transaction():
        before = _maybe(
            await conn.fetchrow(
                "SELECT id, tenant_id, prefix, created_at, last_used_at, revoked_at"
                " FROM rl_api_keys WHERE id = $1 FOR UPDATE",
                key_id,
            )
        )
        if before is None:
            raise NotFoundError(f"no key {key_id}")
        after = _row(
            await conn.fetchrow(
                "UPDATE rl_api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1"
                " RETURNING id, tenant_id, prefix, created_at, last_used_at, revoked_at",
                key_id,
            )
        )
        await audit(conn, actor, "key.revoke", f"key:{key_id}", before, after)
        await _bump_version(conn)
    return after


async def tenant_of_key(conn: Connection, secret: str) -> str | None:
    """The active tenant a key belongs to; None for unknown, revoked or disabled."""
    prefix = split_key(secret)
    if prefix is None:
        return None
    row = await conn.fetchrow(
        "SELECT k.secret_hash, k.tenant_id FROM rl_api_keys k JOIN rl_tenants t"
        " ON t.id = k.tenant_id WHERE k.prefix = $1 AND k.revoked_at IS NULL"
        " AND t.status = 'active'",
        prefix,
    )
    if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), hash_secret(secret)):
        return None
    return str(row["tenant_id"])


# Policies --------------------------------------------------------------------------------


async def _bump_version(conn: Connection) -> int:
    version = await conn.fetchval(
        "UPDATE rl_config_version SET version = version + 1 RETURNING version"
    )
    return int(version)


async def seed_default_policies(conn: Connection) -> bool:
    """Write the seed categories as policies once, when no policy exists at all."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE rl_policies IN SHARE ROW EXCLUSIVE MODE")
        if await conn.fetchval("SELECT count(*) FROM rl_policies"):
            return False
        for policy in default_policies():
            await conn.execute(
                "INSERT INTO rl_policies (id, tenant_id, body) VALUES ($1, NULL, $2::jsonb)",
                policy.id,
                policy.model_dump_json(),
            )
        await _bump_version(conn)
    return True


async def put_policy(conn: Connection, actor: Actor, policy: Policy) -> tuple[dict[str, Any], bool]:
    """Create or replace; True when created. The row lock orders concurrent writers."""
    async with conn.transaction():
        if policy.tenant is not None and not await conn.fetchval(
            "SELECT 1 FROM rl_tenants WHERE id = $1", policy.tenant
        ):
            raise UnknownTenantError(f"no tenant {policy.tenant!r}")
        # A row lock cannot order writers of a policy that does not exist yet: lock its id.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('rl_policies:' || $1))", policy.id
        )
        before_row = await conn.fetchrow("SELECT body FROM rl_policies WHERE id = $1", policy.id)
        before = None if before_row is None else orjson.loads(before_row["body"])
        after = orjson.loads(policy.model_dump_json())
        await conn.execute(
            "INSERT INTO rl_policies (id, tenant_id, body) VALUES ($1, $2, $3::jsonb)"
            " ON CONFLICT (id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,"
            " body = EXCLUDED.body, updated_at = now()",
            policy.id,
            policy.tenant,
            policy.model_dump_json(),
        )
        action = "policy.create" if before is None else "policy.update"
        await audit(conn, actor, action, f"policy:{policy.id}", before, after)
        await _bump_version(conn)
    return after, before is None


async def delete_policy(conn: Connection, actor: Actor, policy_id: str) -> None:
    async with conn.transaction():
        row = await conn.fetchrow("DELETE FROM rl_policies WHERE id = $1 RETURNING body", policy_id)
        if row is None:
            raise NotFoundError(f"no policy {policy_id!r}")
        await audit(
            conn, actor, "policy.delete", f"policy:{policy_id}", orjson.loads(row["body"]), None
        )
        await _bump_version(conn)


async def policy_set(conn: Connection) -> PolicySet:
    """Every policy under the current version, read in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await conn.fetchval("SELECT version FROM rl_config_version")
        rows = await conn.fetch("SELECT body FROM rl_policies ORDER BY id")
    return PolicySet(
        version=int(version),
        policies=tuple(Policy.model_validate_json(row["body"]) for row in rows),
    )


async def published_config(conn: Connection) -> PolicySet:
    """What the limiters follow: the policies plus quotas, working API keys (by digest) and
    revoked access tokens, all read in one snapshot under one version."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await conn.fetchval("SELECT version FROM rl_config_version")
        rows = await conn.fetch("SELECT body FROM rl_policies ORDER BY id")
        quotas = await conn.fetch("SELECT tenant_id, monthly_requests FROM rl_quotas")
        keys = await conn.fetch(
            "SELECT k.secret_hash, k.tenant_id FROM rl_api_keys k JOIN rl_tenants t"
            " ON t.id = k.tenant_id WHERE k.revoked_at IS NULL AND t.status = 'active'"
        )
        jtis = await conn.fetch("SELECT jti FROM rl_revoked_tokens WHERE expires_at > now()")
    return PolicySet(
        version=int(version),
        policies=tuple(Policy.model_validate_json(row["body"]) for row in rows),
        quotas={str(row["tenant_id"]): int(row["monthly_requests"]) for row in quotas},
        # The column holds SHA-256 of the secret: its hex is ``api_key_digest(secret)``.
        api_keys={bytes(row["secret_hash"]).hex(): str(row["tenant_id"]) for row in keys},
        revoked_jtis=frozenset(str(row["jti"]) for row in jtis),
    )


# Quotas, revocations, audit --------------------------------------------------------------


async def put_quota(
    conn: Connection, actor: Actor, tenant_id: str, monthly: int, soft_pct: int
) -> dict[str, Any]:
    async with conn.transaction():
        await get_tenant(conn, tenant_id)
        before = _maybe(
            await conn.fetchrow(
                "SELECT tenant_id, monthly_requests, soft_alert_pct, updated_at FROM rl_quotas"
                " WHERE tenant_id = $1 FOR UPDATE",
                tenant_id,
            )
        )
        after = _row(
            await conn.fetchrow(
                "INSERT INTO rl_quotas (tenant_id, monthly_requests, soft_alert_pct)"
                " VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO UPDATE SET"
                " monthly_requests = EXCLUDED.monthly_requests,"
                " soft_alert_pct = EXCLUDED.soft_alert_pct, updated_at = now()"
                " RETURNING tenant_id, monthly_requests, soft_alert_pct, updated_at",
                tenant_id,
                monthly,
                soft_pct,
            )
        )
        await audit(conn, actor, "quota.put", f"tenant:{tenant_id}", before, after)
        await _bump_version(conn)
    return after


async def revoke_token(
    conn: Connection, actor: Actor, jti: str, expires_at: datetime
) -> dict[str, Any]:
    async with conn.transaction():
        row = _row(
            await conn.fetchrow(
                "INSERT INTO rl_revoked_tokens (jti, expires_at) VALUES ($1, $2)"
                " ON CONFLICT (jti) DO UPDATE SET expires_at = GREATEST("
                "rl_revoked_tokens.expires_at, EXCLUDED.expires_at)"
                " RETURNING jti, revoked_at, expires_at",
                jti,
                expires_at,
            )
        )
        await audit(conn, actor, "token.revoke", f"jti:{jti}", None, row)
        # The gateways learn revocations with the rest of the configuration (within 1 s).
        await _bump_version(conn)
    return row


async def read_audit(
    conn: Connection,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, at, actor, action, target, before, after, request_id FROM rl_audit_log"
        " WHERE id > $1 AND ($2::text IS NULL OR actor = $2)"
        " AND ($3::text IS NULL OR action = $3) AND ($4::text IS NULL OR target = $4)"
        " ORDER BY id LIMIT $5",
        after_id,
        actor,
        action,
        target,
        limit,
    )
    out = []
    for row in rows:
        item = _row(row)
        for column in ("before", "after"):
            if item[column] is not None:
                item[column] = orjson.loads(item[column])
        out.append(item)
    return out


# Usage snapshots -------------------------------------------------------------------------


async def read_usage(
    conn: Connection,
    *,
    tenant: str | None,
    policy: str | None,
    start: datetime | None,
    end: datetime | None,
    after: tuple[datetime, str, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Snapshot rows by period, then tenant and policy, after the ``after`` sort key."""
    rows = await conn.fetch(
        "SELECT tenant_id AS tenant, policy_id AS policy, period_start, allowed, blocked,"
        " shadow_blocked, quota_used FROM rl_usage_snapshots"
        " WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR policy_id = $2)"
        " AND ($3::timestamptz IS NULL OR period_start >= $3)"
        " AND ($4::timestamptz IS NULL OR period_start < $4)"
        " AND ($5::timestamptz IS NULL OR (period_start, tenant_id, policy_id) > ($5, $6, $7))"
        " ORDER BY period_start, tenant_id, policy_id LIMIT $8",
        tenant,
        policy,
        start,
        end,
        *(after or (None, None, None)),
        limit,
    )
    return [_row(row) for row in rows]
