"""Test support: play the gateway towards an upstream under test.

Tests of an upstream (queue, ticket, auth, ratelimit_admin) used to send ``X-User-*`` headers;
the upstreams now believe only a signed assertion. ``TEST_GATEWAY_KEY`` is a key made once per
test process; ``identity_settings()`` makes an upstream trust it, and ``mint`` signs what the
gateway would send. ``as_gateway(audience)`` is an aiohttp client middleware that turns the
test-only ``X-Test-Act-As: ["<user id>", "<role>"]`` header of a request into the assertion for that
exact method and path (and removes it), so existing call sites stay one-liners. The check is
not weakened: the upstream verifies a real ES256 assertion.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse

from urr_common.identity import ASSERTION_HEADER, AssertionSigner
from urr_common.tokens import KeySet, SigningKey
from urr_common.upstream_security import UpstreamIdentitySettings

TEST_GATEWAY_KEY = SigningKey.generate("test-gateway")
ACT_AS_HEADER = "X-Test-Act-As"
_SIGNER = AssertionSigner(TEST_GATEWAY_KEY, reuse_s=0.0)


def identity_settings() -> UpstreamIdentitySettings:
    """Settings that make an upstream trust ``TEST_GATEWAY_KEY``."""
    return UpstreamIdentitySettings(
        jwks=json.dumps(KeySet([TEST_GATEWAY_KEY.verification_key()]).to_jwks())
    )


def identity_env() -> dict[str, str]:
    """The same, as environment variables for a service run as a real process."""
    return {
        "URR_IDENTITY__JWKS": json.dumps(KeySet([TEST_GATEWAY_KEY.verification_key()]).to_jwks())
    }


def write_test_gateway_key(directory: Path) -> Path:
    """``TEST_GATEWAY_KEY`` as a private PEM file, for a real gateway in a test
    (``URR_IDENTITY__PRIVATE_KEY_FILE``; its ``URR_IDENTITY__KEY_ID`` is ``TEST_GATEWAY_KEY.kid``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{TEST_GATEWAY_KEY.kid}.pem"
    path.write_bytes(TEST_GATEWAY_KEY.to_pem())
    path.chmod(0o600)
    return path


def mint(user_id: str, role: str, *, audience: str, method: str, path: str) -> str:
    """A valid assertion for one request."""
    return _SIGNER.assertion(user_id, role, audience=audience, method=method, path=path)


def act_as(user_id: str, role: str = "user", **extra: str) -> dict[str, str]:
    """Headers asking the ``as_gateway`` client middleware to assert this user."""
    return {ACT_AS_HEADER: json.dumps([user_id, role]), **extra}


def as_gateway(audience: str) -> ClientMiddlewareType:
    """Client middleware: ``X-Test-Act-As`` becomes a signed ``X-Urr-Identity``."""

    async def middleware(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        act = request.headers.pop(ACT_AS_HEADER, None)
        if act is not None:
            user_id, role = json.loads(act)
            request.headers[ASSERTION_HEADER] = mint(
                user_id,
                role,
                audience=audience,
                method=request.method,
                path=request.url.raw_path,
            )
        return await handler(request)

    return middleware
