"""Test support: pyjwt's ``decode`` as the reference ``TokenVerifier.verify`` is held to.

Until issue 17 the project had two verification paths for the same tokens (pyjwt's decode in
``TokenVerifier.verify``, and a lean one the gateway and the queue used). One remains; this is
the other, kept only as an oracle for the differential tests (``test_common_tokens_differential``,
the gateway's ``test_gateway_lean_verify``) and the bookkeeping bench's baseline row: what
pyjwt accepts and refuses, as the reason ``TokenVerifier`` would give.
"""

from __future__ import annotations

from typing import Any

import jwt

from urr_common.tokens import ALGORITHM, TokenError, TokenRejection, TokenVerifier

#: pyjwt's errors as our reasons; order matters: several subclass each other.
_REASONS: list[tuple[type[jwt.PyJWTError], TokenRejection]] = [
    (jwt.ExpiredSignatureError, TokenRejection.EXPIRED),
    (jwt.ImmatureSignatureError, TokenRejection.NOT_YET_VALID),
    (jwt.InvalidIssuedAtError, TokenRejection.NOT_YET_VALID),
    (jwt.InvalidAudienceError, TokenRejection.WRONG_AUDIENCE),
    (jwt.InvalidIssuerError, TokenRejection.WRONG_ISSUER),
    (jwt.MissingRequiredClaimError, TokenRejection.MISSING_CLAIM),
    (jwt.InvalidSignatureError, TokenRejection.BAD_SIGNATURE),
    (jwt.InvalidAlgorithmError, TokenRejection.UNSUPPORTED_ALGORITHM),
]


def pyjwt_decode(verifier: TokenVerifier, token: str, key: Any) -> dict[str, Any]:
    """pyjwt's ``decode`` with the options ``TokenVerifier.verify`` passed it (pyjwt errors)."""
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[ALGORITHM],
        audience=verifier.audience,
        issuer=verifier.issuer,
        leeway=verifier.leeway_s,
        options={"require": list(verifier.required_claims), "strict_aud": True},
    )
    return claims


def pyjwt_verify(verifier: TokenVerifier, token: str) -> dict[str, Any]:
    """``TokenVerifier.verify`` as it was on pyjwt: the header read and ``alg`` pinned, the key
    by ``kid``, then pyjwt's decode; ``TokenError`` with the reason ours gives."""
    if not isinstance(token, str) or not token or len(token) > 8 * 1024:
        raise TokenError(TokenRejection.MALFORMED, "empty or oversized token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError(TokenRejection.MALFORMED, "the token is not a JWS") from exc
    if header.get("alg") != ALGORITHM:
        raise TokenError(TokenRejection.UNSUPPORTED_ALGORITHM, f"alg must be {ALGORITHM}")
    kid = header.get("kid")
    key = verifier.keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenError(TokenRejection.UNKNOWN_KEY, "no such key")
    try:
        claims = pyjwt_decode(verifier, token, key.public_key)
    except jwt.PyJWTError as exc:
        reason = next((r for kind, r in _REASONS if isinstance(exc, kind)), None)
        raise TokenError(reason or TokenRejection.MALFORMED, str(exc)) from exc
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise TokenError(TokenRejection.MISSING_CLAIM, "sub must be a non-empty string")
    return claims
