"""How an upstream service knows who calls it: the gateway's assertion, or a service credential.

- ``identity_middleware`` verifies ``X-Urr-Identity`` (``urr_common.identity``) on every
  request that carries one: a valid one publishes ``request[IDENTITY]``, an invalid one is a
  401 at once. Handlers that need a user call ``identity_of`` / ``require_role``: without a
  valid assertion they answer 401, whatever ``X-User-*`` headers say (nobody reads those).
  Public routes (health, public reads) never ask and keep working anonymously.
- Internal routes (``/internal/...``) are not on the public port at all. ``internal_app``
  builds the application of a service's internal listener (public port + 2000 unless set),
  where every request needs ``Authorization: Bearer <secret>`` of a caller named in
  ``URR_INTERNAL__CALLERS``; the caller's name is in ``request[CALLER]``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from urr_common.identity import ASSERTION_HEADER, AssertedIdentity, AssertionVerifier
from urr_common.logs import get_logger
from urr_common.problems import Forbidden, Unauthorized
from urr_common.service import problem_middleware, request_context_middleware
from urr_common.tokens import KeyMaterialError, KeySet, TokenError, load_verification_keys

_LOG = get_logger(__name__)

IDENTITY = web.RequestKey("urr_identity", AssertedIdentity)
CALLER = web.RequestKey("urr_internal_caller", str)
PUBLIC_APP = web.AppKey("urr_public_app", web.Application)
INTERNAL_APP = web.AppKey("urr_internal_app", web.Application)
INTERNAL_PREFIX = "/internal/"
#: The internal listener's port when none is set: the public port plus this (3007 -> 5007).
INTERNAL_PORT_OFFSET = 2000
#: A service credential shorter than this is a placeholder, not a secret.
MIN_SECRET_LENGTH = 24
_CALLER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_IDENTITY_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="urr-gateway"'}
_SERVICE_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="urr-internal"'}


class UpstreamIdentitySettings(BaseModel):
    """``URR_IDENTITY__*``: the gateway keys whose assertions this service accepts.

    Several keys may be given at once (both sources are merged), so the gateway's key can
    rotate: publish the new public key here first, then switch the gateway, then drop the old.
    Without any key every assertion is refused: routes that need a user answer 401 (closed).
    """

    #: PEM files of the gateway's public keys; the ``kid`` is each file's stem. A name may be a
    #: glob (``/var/run/urr/keys/identity/*.pem``: a mounted Secret of ``<kid>.pem`` files).
    public_key_files: list[Path] = Field(default_factory=list)
    #: Or a JWKS document inline (``{"keys": [...]}``), e.g. from a Kubernetes Secret.
    jwks: str | None = None
    leeway_s: int = Field(default=5, ge=0, le=60)
    #: Longest lifetime (``exp - iat``) an assertion may claim; the gateway uses ~15 s.
    max_lifetime_s: int = Field(default=60, ge=1, le=300)

    @field_validator("public_key_files")
    @classmethod
    def _files_hold_keys(cls, files: list[Path]) -> list[Path]:
        for path in files:
            if not _is_glob(path) and not path.is_file():
                raise ValueError(f"the gateway public key file {path} does not exist")
        try:
            load_verification_keys(_expand(files))
        except (KeyMaterialError, ValueError, OSError) as exc:
            raise ValueError(f"a gateway public key file is unusable: {exc}") from exc
        return files

    @field_validator("jwks")
    @classmethod
    def _jwks_parses(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            KeySet.from_jwks(json.loads(value))
        except (KeyMaterialError, ValueError) as exc:
            detail = f'must be a JWKS document {{"keys": [...]}} of P-256 keys: {exc}'
            raise ValueError(detail) from exc
        return value

    def key_set(self) -> KeySet:
        keys = KeySet(load_verification_keys(_expand(self.public_key_files)))
        if self.jwks:
            for key in KeySet.from_jwks(json.loads(self.jwks)):
                keys.add(key)
        return keys

    def verifier(self, audience: str) -> AssertionVerifier:
        keys = self.key_set()
        if not len(keys):
            _LOG.warning("identity_keys_missing", audience=audience)
        return AssertionVerifier(
            keys=keys,
            audience=audience,
            leeway_s=self.leeway_s,
            max_lifetime_s=self.max_lifetime_s,
            reload=self.key_set,
        )


def check_callers(callers: dict[str, SecretStr]) -> dict[str, SecretStr]:
    """``ValueError`` for a caller name or secret that cannot be used (a settings validator)."""
    for name, secret in callers.items():
        if not name or not set(name) <= _CALLER_NAME_CHARS:
            raise ValueError(f"caller name {name!r} must be lower-case letters, digits, - or _")
        if len(secret.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"the secret of caller {name!r} must be at least {MIN_SECRET_LENGTH} "
                "characters (generate one: openssl rand -hex 32)"
            )
    return callers


class InternalListenerSettings(BaseModel):
    """``URR_INTERNAL__*``: the listener of a service's ``/internal/...`` routes."""

    #: Loopback or a private interface only; NetworkPolicies admit the named callers.
    host: str = "127.0.0.1"
    #: ``None``: the public port + 2000 (3007 -> 5007), or a free port when that is 0.
    port: int | None = Field(default=None, ge=0, le=65535)
    #: Caller name -> its bearer secret, as JSON: ``{"ticket": "..."}``.
    callers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("callers")
    @classmethod
    def _callers_are_usable(cls, callers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        return check_callers(callers)

    def port_beside(self, public_port: int) -> int:
        if self.port is not None:
            return self.port
        return public_port + INTERNAL_PORT_OFFSET if public_port else 0

    def check_port(self, public_port: int, metrics_port: int) -> None:
        """``ValueError`` when the internal port would collide or be out of range."""
        port = self.port_beside(public_port)
        if port > 65535:
            raise ValueError(
                f"the internal port would be {port}: set URR_INTERNAL__PORT (0-65535) explicitly"
            )
        if port and port in (public_port, metrics_port):
            raise ValueError(
                f"URR_INTERNAL__PORT ({port}) must differ from the public and metrics ports"
            )


class ServiceCredentialSettings(BaseModel):
    """``URR_<GROUP>__CREDENTIAL__*`` of a caller: its name and secret at another service."""

    name: str = ""
    secret: SecretStr | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> Self:
        secret = self.secret.get_secret_value() if self.secret is not None else ""
        if bool(self.name) != bool(secret):
            raise ValueError("set both the caller name and its secret, or neither")
        if secret and len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"the secret must be at least {MIN_SECRET_LENGTH} characters")
        return self

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header to send (empty when no credential is set)."""
        if self.secret is None:
            return {}
        return {"Authorization": f"Bearer {self.secret.get_secret_value()}"}


def _is_glob(path: Path) -> bool:
    return any(char in path.name for char in "*?[")


def _expand(paths: list[Path]) -> list[Path]:
    """Files named, with globs expanded (sorted; hidden files such as a Secret mount's
    ``..data`` links are skipped)."""
    found: list[Path] = []
    for path in paths:
        if _is_glob(path):
            found += sorted(
                match
                for match in path.parent.glob(path.name)
                if match.is_file() and not match.name.startswith(".")
            )
        else:
            found.append(path)
    return found


def identity_middleware(verifier: AssertionVerifier) -> Middleware:
    """Verify ``X-Urr-Identity`` when present; an invalid one is a 401 on any route."""

    @web.middleware
    async def verify_identity(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = request.headers.get(ASSERTION_HEADER)
        if token is not None:
            path = request.raw_path.partition("?")[0]
            try:
                request[IDENTITY] = verifier.verify(token, method=request.method, path=path)
            except TokenError as exc:
                raise Unauthorized(
                    f"the identity assertion was refused: {exc.reason}",
                    code="invalid_identity",
                    headers=_IDENTITY_CHALLENGE,
                ) from exc
        return await handler(request)

    return verify_identity


@web.middleware
async def no_internal_routes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The public port never answers ``/internal/...`` (it lives on the internal listener)."""
    if request.path.startswith(INTERNAL_PREFIX):
        raise web.HTTPNotFound()
    return await handler(request)


def identity_of(request: web.Request) -> AssertedIdentity:
    """The verified caller, or 401 ``identity_required``."""
    identity: AssertedIdentity | None = request.get(IDENTITY)
    if identity is None:
        raise Unauthorized(
            "this route needs a user identity asserted by the gateway",
            code="identity_required",
            headers=_IDENTITY_CHALLENGE,
        )
    return identity


def require_role(request: web.Request, role: str, *, code: str = "role_required") -> None:
    """401 without a verified identity, 403 when it has another role."""
    if identity_of(request).role != role:
        raise Forbidden(f"this needs the {role} role", code=code)


def credential_secrets(callers: Mapping[str, SecretStr]) -> list[tuple[str, bytes]]:
    """``(name, secret bytes)`` of every caller, the form ``caller_of`` compares against."""
    return [(name, secret.get_secret_value().encode()) for name, secret in callers.items()]


def caller_of(authorization: str, secrets: Sequence[tuple[str, bytes]]) -> str | None:
    """The caller whose secret ``authorization`` (an ``Authorization`` header value) bears,
    or ``None``. Every listener that checks service credentials decides through this."""
    scheme, _, given = authorization.partition(" ")
    caller = None
    if scheme.lower() == "bearer" and given:
        offered = given.strip().encode()
        for name, secret in secrets:
            # Compare with every secret, in constant time, so timing tells nothing.
            if hmac.compare_digest(offered, secret):
                caller = name
    return caller


def service_credential_refusal() -> Unauthorized:
    """The 401 problem for a request without a valid service credential."""
    return Unauthorized(
        "this internal route needs a service credential",
        code="service_credential_required",
        headers=_SERVICE_CHALLENGE,
    )


def service_credential_middleware(callers: Mapping[str, SecretStr]) -> Middleware:
    """Every request needs ``Authorization: Bearer`` with one caller's secret."""
    secrets = credential_secrets(callers)

    @web.middleware
    async def check_caller(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/health/"):
            caller = caller_of(request.headers.get("Authorization", ""), secrets)
            if caller is None:
                raise service_credential_refusal()
            request[CALLER] = caller
        return await handler(request)

    return check_caller


def internal_app(
    callers: Mapping[str, SecretStr],
    add_routes: Callable[[web.Application], None],
    public: web.Application | None = None,
) -> web.Application:
    """The internal listener's application: problem answers, caller check, ``add_routes``.

    With ``public``, the two are linked (``PUBLIC_APP`` / ``INTERNAL_APP``), so internal
    handlers reach the service's state through ``public_app_of(request)``.
    """
    app = web.Application(
        middlewares=[
            request_context_middleware,
            problem_middleware,
            service_credential_middleware(callers),
        ]
    )
    add_routes(app)
    if public is not None:
        app[PUBLIC_APP] = public
        public[INTERNAL_APP] = app
    return app


def public_app_of(request: web.Request) -> web.Application:
    """The service's public application, from a handler on either listener."""
    return request.app.get(PUBLIC_APP, request.app)


def serve_internal_listener(
    public: web.Application, settings: InternalListenerSettings, public_port: int
) -> None:
    """Start the internal listener of ``public`` once its own start-up has run (its
    ``cleanup_ctx`` entries come first, so the state internal handlers use exists)."""

    async def listener(app: web.Application) -> AsyncIterator[None]:
        runner = await start_internal_listener(app[INTERNAL_APP], settings, public_port)
        try:
            yield
        finally:
            await runner.cleanup()

    public.cleanup_ctx.append(listener)


async def start_internal_listener(
    app: web.Application, settings: InternalListenerSettings, public_port: int
) -> web.AppRunner:
    """Serve ``app`` where ``settings`` says; the runner to clean up."""
    port = settings.port_beside(public_port)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    _LOG.info("internal_listening", host=settings.host, port=port)
    return runner
