"""Access tokens: what auth signs for a user, and how it checks its own tokens.

Claims: ``iss`` ``urr-auth``, ``aud`` ``urr``, ``sub`` (the user id), ``email``, ``role``,
``iat``/``nbf``/``exp``, ``jti``; header ``kid``. The key set holds the current key and every
previous public key still configured, so tokens signed before a rotation stay valid until
they expire, here and at every verifier reading the published JWKS.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from urr_auth.settings import AccessTokenSettings
from urr_auth.users import Role, User
from urr_common.tokens import (
    BASE_REQUIRED_CLAIMS,
    KeyMaterialError,
    KeySet,
    SigningKey,
    TokenError,
    TokenRejection,
    TokenSigner,
    TokenVerifier,
    load_or_create_signing_key,
    load_verification_keys,
)

ACCESS_TOKEN_CLAIMS = (*BASE_REQUIRED_CLAIMS, "email", "role")
#: Clock skew tolerated between this service and the machines that minted a token.
LEEWAY_S = 10


@dataclass(frozen=True)
class AccessIdentity:
    """Who a verified token says the caller is."""

    user_id: uuid.UUID
    email: str
    role: Role
    claims: dict[str, Any]


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in_s: int


class AccessTokens:
    """Signs access tokens with the current key; verifies against current and previous keys."""

    def __init__(self, settings: AccessTokenSettings, key: SigningKey, keys: KeySet) -> None:
        self._ttl_s = settings.ttl_s
        self._signer = TokenSigner(
            key=key, issuer=settings.issuer, audience=settings.audience, ttl_s=settings.ttl_s
        )
        self._verifier = TokenVerifier(
            keys=keys,
            issuer=settings.issuer,
            audience=settings.audience,
            leeway_s=LEEWAY_S,
            required_claims=ACCESS_TOKEN_CLAIMS,
        )
        self.keys = keys

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def issue(self, user: User) -> IssuedToken:
        token = self._signer.sign(str(user.id), {"email": user.email, "role": user.role.value})
        return IssuedToken(token=token, expires_in_s=self._ttl_s)

    def verify(self, token: str) -> AccessIdentity:
        """The identity in ``token``; ``TokenError`` when it is not one of ours or is unusable."""
        claims = self._verifier.verify(token)
        try:
            user_id = uuid.UUID(claims["sub"])
            role = Role(claims["role"])
        except (ValueError, TypeError, AttributeError) as exc:
            raise TokenError(TokenRejection.MISSING_CLAIM, "sub or role is malformed") from exc
        email = claims["email"]
        if not isinstance(email, str):
            raise TokenError(TokenRejection.MISSING_CLAIM, "email must be a string")
        return AccessIdentity(user_id=user_id, email=email, role=role, claims=claims)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return self.keys.to_jwks()


def load_access_tokens(settings: AccessTokenSettings) -> AccessTokens:
    """Load (or create on first start) the signing key, plus the previous public keys.

    Blocking file I/O: call it in a thread. The public half is also written next to the
    private key (``public/<kid>.pem``) so verifiers configured with PEM files can use it.
    """
    key = load_or_create_signing_key(settings.private_key_file, settings.key_id)
    write_public_key(key, settings.private_key_file.parent / "public" / f"{key.kid}.pem")
    for path in settings.previous_public_key_files:
        if not path.is_file():
            raise KeyMaterialError(f"previous public key file {path} does not exist")
    previous = load_verification_keys(settings.previous_public_key_files)
    keys = KeySet(previous)
    # The current key last, so it wins if a previous file reuses its kid by mistake.
    keys.add(key.verification_key())
    return AccessTokens(settings, key, keys)


def write_public_key(key: SigningKey, path: Path) -> None:
    """Write ``key``'s public PEM at ``path`` unless it is already there."""
    pem = key.verification_key().to_pem()
    if path.exists() and path.read_bytes() == pem:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_bytes(pem)
    temporary.replace(path)
