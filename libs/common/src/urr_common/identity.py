"""The gateway's signed identity assertion: who the caller is, for one upstream and one request.

The gateway verifies the user's access token; an upstream must not take its word for it over an
unsigned header that anyone reaching the upstream could send (``X-User-Role: admin``). So the
gateway signs, per forwarded request, a compact ES256 JWT in ``X-Urr-Identity`` with:

- ``sub`` (user id) and ``role``;
- ``aud``: the upstream's name in the gateway's routing table, so an assertion meant for the
  ticket service is worthless at the queue;
- ``htm`` / ``htp``: the request's method and path (names from RFC 9449, DPoP), so an
  assertion seen in one request cannot authorise another;
- ``iat`` / ``exp`` seconds apart and ``jti``.

Pure logic: ``AssertionSigner`` (with a one-second reuse cache: signing costs tens of
microseconds and a polling client repeats the same request) and ``AssertionVerifier``
(with a small cache of verified assertions, for the same reason on the other side).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from urr_common.logs import get_logger
from urr_common.tokens import (
    ALGORITHM,
    KeySet,
    SigningKey,
    TokenError,
    TokenRejection,
    TokenVerifier,
    VerificationKey,
    jws_claims,
    jws_kid,
    split_jws,
)

_LOG = get_logger(__name__)
ASSERTION_HEADER = "X-Urr-Identity"
ASSERTION_ISSUER = "urr-gateway"
ASSERTION_CLAIMS = ("iss", "aud", "exp", "iat", "sub", "role", "htm", "htp", "jti")
#: Identity values end up in logs and database rows: short and printable.
_MAX_CLAIM_LENGTH = 320
#: Bound on both caches; cleared whole when full (a flood of distinct keys just misses).
_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class AssertedIdentity:
    """The verified caller of one request."""

    user_id: str
    role: str
    #: The assertion's id (for logs; reused assertions share it within their reuse window).
    jti: str


@dataclass
class AssertionSigner:
    """Signs assertions with the gateway's key; reuses one for ``reuse_s`` per request shape."""

    key: SigningKey
    ttl_s: int = 15
    reuse_s: float = 1.0
    issuer: str = ASSERTION_ISSUER
    _cache: dict[tuple[str, str, str, str, str], tuple[float, str]] = field(
        default_factory=dict, repr=False
    )
    #: (kid, encoded header) of the key last signed with.
    _header: tuple[str, bytes] | None = field(default=None, repr=False)

    def assertion(
        self,
        user_id: str,
        role: str,
        *,
        audience: str,
        method: str,
        path: str,
        now: float | None = None,
    ) -> str:
        """The assertion for this user, upstream, method and path (fresh or reused)."""
        at = time.time() if now is None else now
        cache_key = (user_id, role, audience, method, path)
        cached = self._cache.get(cache_key)
        if cached is not None and at - cached[0] < self.reuse_s:
            return cached[1]
        token = self.sign(user_id, role, audience=audience, method=method, path=path, now=at)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[cache_key] = (at, token)
        return token

    def sign(
        self, user_id: str, role: str, *, audience: str, method: str, path: str, now: float
    ) -> str:
        issued_at = int(now)
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user_id,
            "role": role,
            "aud": audience,
            "htm": method,
            "htp": path,
            "iat": issued_at,
            # +1: a reused assertion (up to reuse_s old, iat truncated) still has ttl_s left.
            "exp": issued_at + self.ttl_s + 1,
            "jti": uuid.uuid4().hex,
        }
        return es256_compact(self._header_segment(), payload, self.key)

    def _header_segment(self) -> bytes:
        """The protected header as pyjwt writes it (``alg``, ``kid``, ``typ``, keys sorted),
        encoded once per key: every assertion repeats it."""
        kid = self.key.kid
        cached = self._header
        if cached is None or cached[0] != kid:
            cached = self._header = (kid, jws_header_segment(kid))
        return cached[1]


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
#: r and s of a P-256 signature, each this many bytes (RFC 7518 §3.4).
_ES256_HALF = 32


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def jws_header_segment(kid: str) -> bytes:
    """The encoded header of an ES256 JWT naming ``kid``, byte for byte pyjwt's
    (``jwt.encode(..., algorithm="ES256", headers={"kid": kid})``)."""
    header = {"alg": ALGORITHM, "kid": kid, "typ": "JWT"}
    return _b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())


def es256_compact(header_segment: bytes, payload: dict[str, Any], key: SigningKey) -> str:
    """A compact ES256 JWS of ``payload`` under ``header_segment`` (``jws_header_segment``),
    as pyjwt's ``jwt.encode`` makes it (the same JSON, the same raw r || s signature) without
    its generic header and option handling, which cost about as much again as the signature
    itself: the gateway signs an assertion for every request of a new visitor (issue 22)."""
    signing_input = (
        header_segment + b"." + _b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    r, s = decode_dss_signature(key.private_key.sign(signing_input, _ECDSA_SHA256))
    signature = r.to_bytes(_ES256_HALF, "big") + s.to_bytes(_ES256_HALF, "big")
    return (signing_input + b"." + _b64url(signature)).decode("ascii")


@dataclass
class AssertionVerifier:
    """Checks an assertion for this upstream (``audience``) and this request."""

    keys: KeySet
    audience: str
    issuer: str = ASSERTION_ISSUER
    leeway_s: int = 5
    #: Assertions that claim to live longer than this are refused even when signed: the
    #: gateway never issues one, so such a token was made with a stolen or misused key.
    max_lifetime_s: int = 60
    #: Reads the trusted keys again (from their files) when an assertion names an unknown
    #: ``kid``, at most once per ``reload_every_s``: a new gateway key dropped into a mounted
    #: Secret is trusted without a restart, and a flood of junk kids costs one read per period.
    reload: Callable[[], KeySet] | None = None
    reload_every_s: float = 10.0
    _verified: dict[str, tuple[dict[str, Any], float]] = field(default_factory=dict, repr=False)
    #: Header segment -> the ``kid`` it names (after its ``alg`` was checked).
    _header_kids: dict[str, str] = field(default_factory=dict, repr=False)
    _reloaded_at: float = field(default=float("-inf"), repr=False)
    #: The registered claims (required, times, ``iss``, strict ``aud``, ``sub``/``jti``
    #: types) as every token of ours is checked: ``TokenVerifier``'s one implementation.
    _registered: TokenVerifier = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._registered = TokenVerifier(
            KeySet(), self.issuer, self.audience, self.leeway_s, ASSERTION_CLAIMS
        )

    def verify(
        self, token: str, *, method: str, path: str, now: float | None = None
    ) -> AssertedIdentity:
        at = time.time() if now is None else now
        claims = self._claims(token, at)
        if claims.get("htm") != method or claims.get("htp") != path:
            raise TokenError(
                TokenRejection.WRONG_AUDIENCE, "the assertion was made for another request"
            )
        return AssertedIdentity(user_id=claims["sub"], role=claims["role"], jti=claims["jti"])

    def _claims(self, token: str, now: float) -> dict[str, Any]:
        cached = self._verified.get(token)
        if cached is not None:
            claims, expires = cached
            if now <= expires:
                return claims
            del self._verified[token]
            raise TokenError(TokenRejection.EXPIRED, "the assertion has expired")
        claims = self._verify_signed(token, now)
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[token] = (claims, float(claims["exp"]) + self.leeway_s)
        return claims

    def _verify_signed(self, token: str, now: float) -> dict[str, Any]:
        """Signature, then claims, of a token not seen before.

        The JWS is taken apart here rather than by pyjwt, which costs about as much again as
        the ES256 check itself (a second parse of the header, generic option handling):
        every request of a polling crowd brings a new assertion (issue 22). The checks are
        pyjwt's, in its order, with the same refusals: exactly three segments, ``alg`` pinned
        to ES256 (compared, never obeyed), a known ``kid``, a 64-byte raw signature verified
        over the first two segments as sent, then a JSON object payload whose claims pass.
        """
        parts = split_jws(token)
        claims = jws_claims(parts, self._key_for(parts[0], now))
        self._registered.check_registered(claims, now)
        check_assertion_claims(
            claims, now=now, leeway_s=self.leeway_s, max_lifetime_s=self.max_lifetime_s
        )
        return claims

    def _key_for(self, header_segment: str, now: float) -> VerificationKey:
        """The trusted key the header names (``alg`` checked); the header's ``kid`` is kept
        per header segment, which the gateway repeats in every assertion it signs."""
        kid = self._header_kids.get(header_segment)
        if kid is None:
            kid = jws_kid(header_segment)
            if len(self._header_kids) >= _CACHE_LIMIT:
                self._header_kids.clear()
            self._header_kids[header_segment] = kid
        key = self.keys.get(kid)
        if key is None and self._reload_keys(now):
            key = self.keys.get(kid)
        if key is None:
            raise TokenError(TokenRejection.UNKNOWN_KEY, f"no key {kid[:64]!r}")
        return key

    def _reload_keys(self, now: float) -> bool:
        """Read the keys again if allowed now; True when a new key set is in place."""
        if self.reload is None or now - self._reloaded_at < self.reload_every_s:
            return False
        self._reloaded_at = now
        try:
            self.keys = self.reload()
        except (OSError, ValueError) as exc:  # a half-written Secret update: keep the old set
            _reload_failed(exc)
            return False
        return True


def _reload_failed(exc: Exception) -> None:
    _LOG.warning("identity_keys_reload_failed", error=f"{type(exc).__name__}: {exc}"[:300])


def check_assertion_claims(
    claims: dict[str, Any], *, now: float, leeway_s: int, max_lifetime_s: int
) -> None:
    """Times and shapes of a signature-checked assertion; ``TokenError`` when unusable.

    Times are checked here (not by pyjwt) against the ``now`` given, so tests need no clock.
    """
    for name in ("sub", "role", "htm", "htp", "jti"):
        value = claims.get(name)
        if not isinstance(value, str) or not value or len(value) > _MAX_CLAIM_LENGTH:
            raise TokenError(TokenRejection.MISSING_CLAIM, f"{name} must be a short string")
        if not value.isprintable():
            raise TokenError(TokenRejection.MALFORMED, f"{name} must be printable")
    issued_at, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued_at, int) or not isinstance(expires, int):
        raise TokenError(TokenRejection.MISSING_CLAIM, "iat and exp must be integers")
    if expires - issued_at > max_lifetime_s:
        raise TokenError(TokenRejection.MALFORMED, "the assertion claims too long a lifetime")
    if now > expires + leeway_s:
        raise TokenError(TokenRejection.EXPIRED, "the assertion has expired")
    if issued_at > now + leeway_s:
        raise TokenError(TokenRejection.NOT_YET_VALID, "the assertion is from the future")
