"""ES256 tokens shared by every tier: access tokens, Tier-1 and Tier-2 tokens.

A ``TokenSigner`` holds one private key and names it with a ``kid``. A ``TokenVerifier`` holds a
``KeySet`` of public keys by ``kid``, so a new key can be published before it signs anything
and an old one kept until the last token it signed has expired (rotation without a flag day).
Verification pins the algorithm to ES256: the token's own ``alg`` header is compared, never
obeyed, which closes ``alg: none`` and the HS256-with-the-public-key confusion.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm

ALGORITHM = "ES256"
#: Claims every token of ours carries; issuers add their own on top.
BASE_REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "sub")
#: A kid is echoed into logs and URLs; keep it short and plain.
_MAX_KID_LENGTH = 64
#: A token larger than this is refused before any parsing.
MAX_TOKEN_BYTES = 8 * 1024
_ES256_SIGNATURE_BYTES = 64
_BASE64URL = re.compile("[A-Za-z0-9_-]*")
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


class TokenRejection(StrEnum):
    """Why a token was refused; stable strings for logs, metrics and error codes."""

    MALFORMED = "malformed"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    MISSING_CLAIM = "missing_claim"


class TokenError(Exception):
    """A token failed verification; ``reason`` says which check refused it."""

    def __init__(self, reason: TokenRejection, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail


class KeyMaterialError(ValueError):
    """A key or JWKS document cannot be used (wrong curve, private part in a JWKS, bad PEM)."""


@dataclass(frozen=True)
class VerificationKey:
    """A public P-256 key and the ``kid`` tokens name it by."""

    kid: str
    public_key: ec.EllipticCurvePublicKey

    def __post_init__(self) -> None:
        _check_kid(self.kid)
        if not isinstance(self.public_key.curve, ec.SECP256R1):
            raise KeyMaterialError(f"key {self.kid!r} is not on P-256, which ES256 requires")

    def to_jwk(self) -> dict[str, str]:
        """The public JWK (RFC 7517) with ``kid``, ``use`` and ``alg``."""
        jwk: dict[str, str] = ECAlgorithm.to_jwk(self.public_key, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": ALGORITHM}

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> VerificationKey:
        if not isinstance(jwk, Mapping):
            raise KeyMaterialError("a JWK must be an object")
        if "d" in jwk:
            raise KeyMaterialError("a published JWK must not contain a private part")
        if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
            raise KeyMaterialError("only EC P-256 keys are accepted")
        if jwk.get("alg", ALGORITHM) != ALGORITHM or jwk.get("use", "sig") != "sig":
            raise KeyMaterialError("the key is not an ES256 signing key")
        kid = jwk.get("kid")
        if not isinstance(kid, str):
            raise KeyMaterialError("the JWK has no kid")
        try:
            key = ECAlgorithm.from_jwk(dict(jwk))
        except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise KeyMaterialError(f"the JWK {kid!r} is not a valid EC key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise KeyMaterialError("the JWK is not a public key")
        return cls(kid=kid, public_key=key)

    @classmethod
    def from_pem(cls, pem: bytes, kid: str) -> VerificationKey:
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise KeyMaterialError(f"the PEM for {kid!r} is not a public key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise KeyMaterialError(f"the PEM for {kid!r} is not an EC key")
        return cls(kid=kid, public_key=key)

    def to_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True)
class SigningKey:
    """A private P-256 key with its ``kid``."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_kid(self.kid)
        if not isinstance(self.private_key.curve, ec.SECP256R1):
            raise KeyMaterialError(f"key {self.kid!r} is not on P-256, which ES256 requires")

    @classmethod
    def generate(cls, kid: str) -> SigningKey:
        return cls(kid=kid, private_key=ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes, kid: str) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            detail = f"the PEM for {kid!r} is not an unencrypted private key"
            raise KeyMaterialError(detail) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyMaterialError(f"the PEM for {kid!r} is not an EC private key")
        return cls(kid=kid, private_key=key)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def verification_key(self) -> VerificationKey:
        return VerificationKey(kid=self.kid, public_key=self.private_key.public_key())


class KeySet:
    """Public keys by ``kid``; what a verifier trusts and what a JWKS document publishes."""

    def __init__(self, keys: Iterable[VerificationKey] = ()) -> None:
        self._keys: dict[str, VerificationKey] = {}
        for key in keys:
            self.add(key)

    def add(self, key: VerificationKey) -> None:
        self._keys[key.kid] = key

    def remove(self, kid: str) -> None:
        self._keys.pop(kid, None)

    def get(self, kid: str) -> VerificationKey | None:
        return self._keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[VerificationKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def to_jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document (``{"keys": [...]}``) publishing every key."""
        return {"keys": [key.to_jwk() for key in self._keys.values()]}

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any]) -> KeySet:
        """Parse a JWKS document; one unusable key makes the whole document unusable."""
        keys = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(keys, list):
            raise KeyMaterialError('a JWKS document is an object with a "keys" list')
        return cls(VerificationKey.from_jwk(jwk) for jwk in keys)


@dataclass(frozen=True)
class TokenSigner:
    """Issues ES256 tokens with ``iss``, ``aud``, ``iat``, ``nbf``, ``exp`` and ``jti``."""

    key: SigningKey
    issuer: str
    audience: str
    ttl_s: int

    def sign(
        self,
        subject: str,
        claims: Mapping[str, Any] | None = None,
        *,
        ttl_s: int | None = None,
        now: float | None = None,
    ) -> str:
        issued_at = int(now if now is not None else time.time())
        payload: dict[str, Any] = {
            **(claims or {}),
            "sub": subject,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + (ttl_s if ttl_s is not None else self.ttl_s),
        }
        payload.setdefault("jti", uuid.uuid4().hex)
        return jwt.encode(
            payload, self.key.private_key, algorithm=ALGORITHM, headers={"kid": self.key.kid}
        )


@dataclass
class TokenVerifier:
    """Checks signature, algorithm, ``kid``, times (with leeway), issuer, audience, claims."""

    keys: KeySet
    issuer: str
    audience: str
    leeway_s: int = 10
    required_claims: tuple[str, ...] = BASE_REQUIRED_CLAIMS

    def verify(self, token: str, *, now: float | None = None) -> dict[str, Any]:
        """The verified claims, or ``TokenError`` naming the first check that failed.

        The one verification path of every tier (issue 17): ``parse_jws`` (shape, header,
        ``alg`` pinned before any key is looked up), then ``verify_parsed``. It refuses what
        pyjwt's ``decode`` refused, for the same reason (``test_common_tokens_differential``),
        at about half its CPU."""
        return self.verify_parsed(parse_jws(token), now=now)

    def verify_parsed(self, parsed: ParsedJws, *, now: float | None = None) -> dict[str, Any]:
        """``verify`` of a token ``parse_jws`` has taken apart (callers that fetch the key
        first, by ``parsed.kid``): key, signature, payload, registered claims, ``sub``."""
        key = self.keys.get(parsed.kid)
        if key is None:
            raise TokenError(TokenRejection.UNKNOWN_KEY, f"no key {parsed.kid[:_MAX_KID_LENGTH]!r}")
        claims = _signed_claims(key, parsed.signing_input, parsed.payload, parsed.signature)
        self.check_registered(claims, time.time() if now is None else now)
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise TokenError(TokenRejection.MISSING_CLAIM, "sub must be a non-empty string")
        return claims

    def check_registered(self, claims: dict[str, Any], now: float) -> None:
        """pyjwt's claim checks of ``verify``: required, ``iat``, ``nbf``, ``exp`` (with the
        leeway), ``iss``, strict ``aud``, ``sub`` and ``jti`` types; its refusals."""
        for name in self.required_claims:
            if claims.get(name) is None:
                raise TokenError(TokenRejection.MISSING_CLAIM, f'missing the "{name}" claim')
        self._check_times(claims, now)
        if "iss" not in claims:
            raise TokenError(TokenRejection.MISSING_CLAIM, 'missing the "iss" claim')
        if not isinstance(claims["iss"], str) or claims["iss"] != self.issuer:
            raise TokenError(TokenRejection.WRONG_ISSUER, "Invalid issuer")
        if not claims.get("aud"):
            raise TokenError(TokenRejection.MISSING_CLAIM, 'missing the "aud" claim')
        if not isinstance(claims["aud"], str) or claims["aud"] != self.audience:
            raise TokenError(TokenRejection.WRONG_AUDIENCE, "Audience doesn't match (strict)")
        for name in ("sub", "jti"):
            if name in claims and not isinstance(claims[name], str):
                raise TokenError(TokenRejection.MALFORMED, f"{name} must be a string")

    def _check_times(self, claims: dict[str, Any], now: float) -> None:
        leeway = self.leeway_s
        if "iat" in claims:
            issued = _as_int(claims["iat"], TokenRejection.NOT_YET_VALID)
            if issued > now + leeway:
                raise TokenError(TokenRejection.NOT_YET_VALID, "The token is not yet valid (iat)")
        if "nbf" in claims and _as_int(claims["nbf"], TokenRejection.MALFORMED) > now + leeway:
            raise TokenError(TokenRejection.NOT_YET_VALID, "The token is not yet valid (nbf)")
        if "exp" in claims and _as_int(claims["exp"], TokenRejection.MALFORMED) <= now - leeway:
            raise TokenError(TokenRejection.EXPIRED, "Signature has expired")


def _as_int(value: Any, reason: TokenRejection) -> int:
    """A time claim as pyjwt reads it (``int(value)``), or ``TokenError(reason)``."""
    try:
        return int(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise TokenError(reason, "a time claim must be an integer") from exc


def split_jws(token: str) -> tuple[str, str, str]:
    """A compact JWS's three segments; ``TokenError(MALFORMED)`` for anything else.

    With ``jws_kid`` and ``jws_claims``: the JWS checks of pyjwt's decode, with its refusals,
    at about half its cost (issue 22: one fresh token per request in a polling crowd)."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        raise TokenError(TokenRejection.MALFORMED, "empty or oversized token")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError(TokenRejection.MALFORMED, "the token is not a JWS")
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True, slots=True)
class ParsedJws:
    """A compact JWS whose shape and header passed: the ``kid`` to look the key up by, and
    what the signature check and the claims need."""

    kid: str
    signing_input: bytes
    payload: bytes
    signature: bytes


def parse_jws(token: str) -> ParsedJws:
    """Every check that needs no key, in pyjwt's order with its refusals: three canonical
    base64url segments and a JSON object header (MALFORMED), a string ``kid`` and no ``crit``
    or ``b64`` (MALFORMED), ``alg`` pinned to ES256 (UNSUPPORTED_ALGORITHM), a ``kid``
    (UNKNOWN_KEY). A caller may fetch the key by ``kid`` before ``verify_parsed``."""
    header_segment, payload_segment, signature_segment = split_jws(token)
    try:
        header = json.loads(_b64url(header_segment))
        payload = _b64url(payload_segment)
        signature = _b64url(signature_segment)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise TokenError(TokenRejection.MALFORMED, "the token is not a JWS") from exc
    signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
    return ParsedJws(_header_kid(header), signing_input, payload, signature)


def jws_claims(parts: tuple[str, str, str], key: VerificationKey) -> dict[str, Any]:
    """The payload of ``parts`` as a JSON object, once its ES256 signature by ``key`` holds
    over the first two segments as sent (``TokenError``: MALFORMED or BAD_SIGNATURE)."""
    header_segment, payload_segment, signature_segment = parts
    try:
        payload = _b64url(payload_segment)
        signature = _b64url(signature_segment)
    except ValueError as exc:
        raise TokenError(TokenRejection.MALFORMED, "a segment is not base64url") from exc
    signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
    return _signed_claims(key, signing_input, payload, signature)


def _signed_claims(
    key: VerificationKey, signing_input: bytes, payload: bytes, signature: bytes
) -> dict[str, Any]:
    if not _signature_holds(key, signature, signing_input):
        raise TokenError(TokenRejection.BAD_SIGNATURE, "Signature verification failed")
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise TokenError(TokenRejection.MALFORMED, "the payload is not JSON") from exc
    if not isinstance(claims, dict):
        raise TokenError(TokenRejection.MALFORMED, "the payload must be a JSON object")
    return claims


def _b64url(segment: str) -> bytes:
    """One JWS segment's bytes; ``ValueError`` unless it is canonical base64url (at most two
    ``=`` of padding, only the URL-safe alphabet, no stray bits): pyjwt's rule."""
    stripped = segment.rstrip("=")
    padding = len(segment) - len(stripped)
    if (
        padding > 2
        or (padding and len(segment) % 4)
        or len(stripped) % 4 == 1
        or not _BASE64URL.fullmatch(stripped)
    ):
        raise ValueError("not base64url")
    decoded = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped.encode("ascii"):
        raise ValueError("not canonical base64url")
    return decoded


def jws_kid(header_segment: str) -> str:
    """The ``kid`` of a JWS header that pins ES256; ``TokenError`` as ``parse_jws`` refuses."""
    try:
        header = json.loads(_b64url(header_segment))
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise TokenError(TokenRejection.MALFORMED, "the token is not a JWS") from exc
    return _header_kid(header)


def _header_kid(header: object) -> str:
    if not isinstance(header, dict):
        raise TokenError(TokenRejection.MALFORMED, "the token is not a JWS")
    kid = header.get("kid")
    if "kid" in header and not isinstance(kid, str):
        raise TokenError(TokenRejection.MALFORMED, "the kid must be a string")
    if "crit" in header or "b64" in header:  # extensions the gateway never uses
        raise TokenError(TokenRejection.MALFORMED, "unsupported header parameters")
    if header.get("alg") != ALGORITHM:
        raise TokenError(TokenRejection.UNSUPPORTED_ALGORITHM, f"alg must be {ALGORITHM}")
    if not isinstance(kid, str):  # absent: any other non-string was refused above
        raise TokenError(TokenRejection.UNKNOWN_KEY, "the header names no kid")
    return kid


def _signature_holds(key: VerificationKey, signature: bytes, signing_input: bytes) -> bool:
    """ES256: ``signature`` is r || s, 32 bytes each (RFC 7518 §3.4)."""
    if len(signature) != _ES256_SIGNATURE_BYTES:
        return False
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        key.public_key.verify(der, signing_input, _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True


def _check_kid(kid: str) -> None:
    if not kid or len(kid) > _MAX_KID_LENGTH or not kid.isascii() or not kid.isprintable():
        raise KeyMaterialError("a kid is 1-64 printable ASCII characters")


def load_or_create_signing_key(path: Path, kid: str) -> SigningKey:
    """Read the PEM at ``path``, or generate a key there (mode 0600) on first start.

    The new key is written to a private temporary file and hard-linked into place, which
    fails if the name exists: two processes starting together agree on one complete key.
    """
    if path.exists():
        return SigningKey.from_pem(path.read_bytes(), kid)
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = SigningKey.generate(kid)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(candidate.to_pem())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return SigningKey.from_pem(path.read_bytes(), kid)
    finally:
        temporary.unlink(missing_ok=True)
    return candidate


def load_verification_keys(paths: Iterable[Path]) -> list[VerificationKey]:
    """Public keys from PEM files (public or private); the ``kid`` is each file's stem."""
    keys = []
    for path in paths:
        pem = path.read_bytes()
        if b"PRIVATE KEY" in pem:
            keys.append(SigningKey.from_pem(pem, path.stem).verification_key())
        else:
            keys.append(VerificationKey.from_pem(pem, path.stem))
    return keys
