"""Issue 22: the gateway verifies access and entry tokens on ``TokenVerifier``'s one path
(pyjwt's checks without pyjwt's decode; issue 17 made it the only one). Every attack pyjwt
refused is refused here, through ``CachedTokenVerifier`` as the filters call it, with the
same reason; a token naming another algorithm is refused before any key fetch."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from urr_common.tokens import (
    KeySet,
    SigningKey,
    TokenError,
    TokenRejection,
    TokenSigner,
    TokenVerifier,
)
from urr_common.tokens_testing import pyjwt_verify
from urr_gateway.context import Identity
from urr_gateway.filters.entry_token import ENTRY_REQUIRED_CLAIMS, EntryClaims, entry_claims
from urr_gateway.filters.jwt_auth import ACCESS_REQUIRED_CLAIMS, identity_from_claims
from urr_gateway.jwks import JwksKeySource
from urr_gateway.refusedcache import RefusedTokenCache
from urr_gateway.tokencache import VerifiedTokenCache
from urr_gateway.verification import CachedTokenVerifier

KEY = SigningKey.generate("access-1")
OTHER = SigningKey.generate("access-1")  # same kid, a key nobody trusts


class CountingFetch:
    """A JWKS endpoint that serves the trusted key and counts how often it was asked."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> Mapping[str, Any]:
        self.calls += 1
        return KeySet([KEY.verification_key()]).to_jwks()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "user-1",
        "email": "user-1@example.com",
        "role": "user",
        "iss": "urr-auth",
        "aud": "urr",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "jti-1",
        "evt": "event-1",
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def _signed(claims: dict[str, Any], key: SigningKey = KEY, **header: Any) -> str:
    return jwt.encode(
        claims, key.private_key, algorithm="ES256", headers={"kid": key.kid, **header}
    )


def _hs256_with_the_public_key(claims: dict[str, Any]) -> str:
    """The algorithm-confusion attack: HMAC keyed with the (public) verification key."""
    secret = KEY.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = _b64(json.dumps({"alg": "HS256", "kid": "access-1", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def _unsigned(claims: dict[str, Any], kid: str = "access-1") -> str:
    head = _b64(json.dumps({"alg": "none", "kid": kid}).encode())
    return f"{head}.{_b64(json.dumps(claims).encode())}."


def _tampered(token: str, **overrides: Any) -> str:
    """The payload rewritten (a role raised, another user), the original signature kept."""
    head, _, signature = token.split(".")
    return f"{head}.{_b64(json.dumps(_claims(**overrides)).encode())}.{signature}"


def _access(fetch: CountingFetch | None = None) -> CachedTokenVerifier[Identity]:
    source = JwksKeySource("access", fetch, [] if fetch else [KEY.verification_key()])
    checker = TokenVerifier(
        keys=KeySet(), issuer="urr-auth", audience="urr", required_claims=ACCESS_REQUIRED_CLAIMS
    )
    return CachedTokenVerifier(
        source,
        checker,
        identity_from_claims,
        VerifiedTokenCache(100, 30.0),
        RefusedTokenCache(100, 10.0),
    )


def _pyjwt_reason(token: str) -> TokenRejection | None:
    """What pyjwt's decode (the previous path, now only an oracle) says of ``token``."""
    checker = TokenVerifier(
        keys=KeySet([KEY.verification_key()]),
        issuer="urr-auth",
        audience="urr",
        required_claims=ACCESS_REQUIRED_CLAIMS,
    )
    try:
        identity_from_claims(pyjwt_verify(checker, token))
    except TokenError as exc:
        return exc.reason
    return None


ATTACKS = {
    "forged (another key under the trusted kid)": _signed(_claims(role="admin"), OTHER),
    "payload rewritten, signature kept": _tampered(_signed(_claims()), role="admin"),
    "another user's payload, signature kept": _tampered(_signed(_claims()), sub="victim"),
    "expired": _signed(_claims(iat=1000, nbf=1000, exp=2000)),
    "not yet valid": _signed(_claims(nbf=int(time.time()) + 3600)),
    "wrong issuer": _signed(_claims(iss="urr-queue")),
    "wrong audience": _signed(_claims(aud="urr-entry")),
    "audience as a list": _signed(_claims(aud=["urr"])),
    "no exp": _signed(_claims(exp=None)),
    "no role": _signed(_claims(role=None)),
    "alg none": _unsigned(_claims(role="admin")),
    "HS256 keyed with the public key": _hs256_with_the_public_key(_claims(role="admin")),
    "signature cut short": _signed(_claims())[:-8],
    "signature of zeros": _signed(_claims()).rsplit(".", 1)[0] + "." + _b64(bytes(64)),
    "two segments": ".".join(_signed(_claims()).split(".")[:2]),
    "non-canonical base64 in the signature": _signed(_claims()) + "=",
}


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_every_attack_is_refused_for_the_reason_pyjwt_gave(name: str) -> None:
    token = ATTACKS[name]
    with pytest.raises(TokenError) as refused:
        await _access().verify(token)
    expected = _pyjwt_reason(token)
    assert expected is not None, "the attack must be one pyjwt refused"
    assert refused.value.reason is expected, name


async def test_a_refused_token_stays_refused_from_the_cache() -> None:
    verifier = _access()
    token = ATTACKS["forged (another key under the trusted kid)"]
    for _ in range(3):
        with pytest.raises(TokenError) as refused:
            await verifier.verify(token)
        assert refused.value.reason is TokenRejection.BAD_SIGNATURE


async def test_a_valid_token_is_accepted_with_its_identity() -> None:
    identity = await _access().verify(_signed(_claims()))
    assert identity == Identity(
        user_id="user-1", email="user-1@example.com", role="user", jti="jti-1"
    )


@pytest.mark.parametrize("token", [ATTACKS["alg none"], ATTACKS["HS256 keyed with the public key"]])
async def test_another_algorithm_is_refused_before_any_key_fetch(token: str) -> None:
    fetch = CountingFetch()
    unknown_kid = token.replace(token.split(".")[0], _b64(b'{"alg":"HS256","kid":"rotated"}'))
    for candidate in (token, unknown_kid):
        with pytest.raises(TokenError) as refused:
            await _access(fetch).verify(candidate)
        assert refused.value.reason is TokenRejection.UNSUPPORTED_ALGORITHM
    assert fetch.calls == 0


async def test_an_unknown_kid_is_refused_after_one_fetch() -> None:
    fetch = CountingFetch()
    stranger = SigningKey.generate("rotated-2")
    with pytest.raises(TokenError) as refused:
        await _access(fetch).verify(_signed(_claims(), stranger))
    assert refused.value.reason is TokenRejection.UNKNOWN_KEY
    assert fetch.calls == 1


async def test_entry_tokens_on_the_lean_path() -> None:
    entry_key = SigningKey.generate("entry-1")
    source = JwksKeySource("entry", None, [entry_key.verification_key()])
    checker = TokenVerifier(
        keys=KeySet(),
        issuer="urr-queue",
        audience="urr-entry",
        required_claims=ENTRY_REQUIRED_CLAIMS,
    )
    verifier: CachedTokenVerifier[EntryClaims] = CachedTokenVerifier(
        source, checker, entry_claims, VerifiedTokenCache(100, 30.0)
    )
    signer = TokenSigner(entry_key, "urr-queue", "urr-entry", 900)
    good = signer.sign("user-1", {"evt": "event-1"})
    assert await verifier.verify(good) == EntryClaims(
        "user-1", "event-1", jwt.decode(good, options={"verify_signature": False})["jti"]
    )
    forged = TokenSigner(SigningKey.generate("entry-1"), "urr-queue", "urr-entry", 900)
    expired = signer.sign("user-1", {"evt": "event-1"}, now=time.time() - 3600)
    access_as_entry = TokenSigner(entry_key, "urr-auth", "urr", 900).sign("user-1", {"evt": "e"})
    cases = {
        forged.sign("user-1", {"evt": "event-1"}): TokenRejection.BAD_SIGNATURE,
        _tampered(
            good, sub="victim", iss="urr-queue", aud="urr-entry"
        ): TokenRejection.BAD_SIGNATURE,
        expired: TokenRejection.EXPIRED,
        access_as_entry: TokenRejection.WRONG_ISSUER,
        signer.sign("user-1"): TokenRejection.MISSING_CLAIM,  # no evt
    }
    for token, reason in cases.items():
        with pytest.raises(TokenError) as refused:
            await verifier.verify(token)
        assert refused.value.reason is reason
