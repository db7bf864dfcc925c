"""The auth service's aiohttp application."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from urr_auth import handlers
from urr_auth.access_tokens import load_access_tokens
from urr_auth.accounts import Accounts
from urr_auth.appkeys import ACCESS_TOKENS_KEY, ACCOUNTS_KEY, METRICS_KEY, SETTINGS_KEY
from urr_auth.metrics import AuthMetrics
from urr_auth.passwords import Passwords
from urr_auth.settings import AuthSettings
from urr_auth.users import UserStore, migrate
from urr_common.clients import open_postgres
from urr_common.logs import get_logger
from urr_common.service import READINESS_KEY, REGISTRY_KEY, create_service_app
from urr_common.upstream_security import identity_middleware

_LOG = get_logger(__name__)

#: This service's name in the gateway's routing table: the ``aud`` of assertions it accepts.
AUDIENCE = "auth"


def create_app(
    settings: AuthSettings, *, registry: CollectorRegistry | None = None
) -> web.Application:
    """The application; keys, the password pool and PostgreSQL open when it starts."""
    app = create_service_app(
        settings,
        registry=registry,
        middlewares=[
            identity_middleware(settings.identity.verifier(AUDIENCE)),
            handlers.database_unavailable_middleware,
        ],
    )
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = AuthMetrics.register(app[REGISTRY_KEY])
    app.cleanup_ctx.append(_signing_keys)
    app.cleanup_ctx.append(_accounts)
    app.router.add_post("/api/v1/auth/register", handlers.register)
    app.router.add_post("/api/v1/auth/login", handlers.login)
    app.router.add_post("/api/v1/auth/logout", handlers.logout)
    app.router.add_get("/api/v1/auth/me", handlers.me)
    app.router.add_get("/.well-known/jwks.json", handlers.jwks)
    return app


async def _signing_keys(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY].access_tokens
    tokens = await asyncio.to_thread(load_access_tokens, settings)
    app[ACCESS_TOKENS_KEY] = tokens
    _LOG.info("signing_key_loaded", kid=settings.key_id, published=[k.kid for k in tokens.keys])
    yield


async def _accounts(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    passwords = Passwords(settings.argon2, observe=app[METRICS_KEY].observe_password)
    try:
        await passwords.start()
        async with open_postgres(settings.postgres) as pool:
            applied = await migrate(pool)
            if applied:
                _LOG.info("migrations_applied", names=applied)
            store = UserStore(pool)
            accounts = Accounts(store, passwords)
            app[ACCOUNTS_KEY] = accounts
            app[READINESS_KEY].add_check("postgres", store.ping)
            if settings.bootstrap_admin_email and settings.bootstrap_admin_password:
                await accounts.ensure_admin(
                    settings.bootstrap_admin_email,
                    settings.bootstrap_admin_password.get_secret_value(),
                )
            yield
    finally:
        await asyncio.to_thread(passwords.close)
