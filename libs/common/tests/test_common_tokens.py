from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from urr_common.tokens import (
    KeyMaterialError,
    KeySet,
    SigningKey,
    TokenError,
    TokenRejection,
    TokenSigner,
    TokenVerifier,
    VerificationKey,
    load_or_create_signing_key,
    load_verification_keys,
)

ISSUER = "urr-auth"
AUDIENCE = "urr"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("k1")


@pytest.fixture
def signer(key: SigningKey) -> TokenSigner:
    return TokenSigner(key=key, issuer=ISSUER, audience=AUDIENCE, ttl_s=300)


@pytest.fixture
def verifier(key: SigningKey) -> TokenVerifier:
    return TokenVerifier(
        keys=KeySet([key.verification_key()]), issuer=ISSUER, audience=AUDIENCE, leeway_s=5
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, object], payload: dict[str, object], signature: bytes = b"") -> str:
    return ".".join(
        [_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), _b64(signature)]
    )


def _reason(verifier: TokenVerifier, token: str) -> TokenRejection:
    with pytest.raises(TokenError) as caught:
        verifier.verify(token)
    return caught.value.reason


def test_round_trip_keeps_claims_and_adds_standard_ones(signer, verifier) -> None:
    token = signer.sign("user-1", {"email": "a@b.c", "role": "user"})
    claims = verifier.verify(token)
    assert claims["sub"] == "user-1"
    assert claims["email"] == "a@b.c"
    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["exp"] - claims["iat"] == 300
    assert len(claims["jti"]) == 32
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "k1", "typ": "JWT"}


def test_caller_claims_cannot_override_issuer_or_expiry(signer, verifier) -> None:
    token = signer.sign("u", {"iss": "evil", "exp": 9_999_999_999, "aud": "other"})
    claims = verifier.verify(token)
    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["exp"] < time.time() + 400


def test_alg_none_is_refused(signer, verifier) -> None:
    payload = jwt.decode(signer.sign("u"), options={"verify_signature": False})
    token = _forge({"alg": "none", "kid": "k1", "typ": "JWT"}, payload)
    assert _reason(verifier, token) == TokenRejection.UNSUPPORTED_ALGORITHM


def test_hs256_signed_with_the_public_key_is_refused(key, signer, verifier) -> None:
    payload = jwt.decode(signer.sign("u"), options={"verify_signature": False})
    public_pem = key.verification_key().to_pem()
    header = _b64(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    body = _b64(json.dumps(payload).encode())
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    token = f"{header}.{body}.{_b64(mac)}"
    assert _reason(verifier, token) == TokenRejection.UNSUPPORTED_ALGORITHM


def test_expired_token_is_refused_beyond_leeway(signer, verifier) -> None:
    token = signer.sign("u", ttl_s=60, now=time.time() - 120)
    assert _reason(verifier, token) == TokenRejection.EXPIRED


def test_expiry_within_leeway_is_accepted(signer, verifier) -> None:
    token = signer.sign("u", ttl_s=60, now=time.time() - 62)
    assert verifier.verify(token)["sub"] == "u"


def test_not_yet_valid_token_is_refused(signer, verifier) -> None:
    token = signer.sign("u", now=time.time() + 120)
    assert _reason(verifier, token) == TokenRejection.NOT_YET_VALID


def test_wrong_issuer_is_refused(key, verifier) -> None:
    other = TokenSigner(key=key, issuer="urr-queue", audience=AUDIENCE, ttl_s=60)
    assert _reason(verifier, other.sign("u")) == TokenRejection.WRONG_ISSUER


def test_wrong_audience_is_refused(key, verifier) -> None:
    other = TokenSigner(key=key, issuer=ISSUER, audience="urr-entry", ttl_s=60)
    assert _reason(verifier, other.sign("u")) == TokenRejection.WRONG_AUDIENCE


def test_unknown_kid_is_refused(verifier) -> None:
    stranger = TokenSigner(SigningKey.generate("k9"), ISSUER, AUDIENCE, 60)
    assert _reason(verifier, stranger.sign("u")) == TokenRejection.UNKNOWN_KEY


def test_missing_kid_is_refused(key, signer, verifier) -> None:
    payload = jwt.decode(signer.sign("u"), options={"verify_signature": False})
    token = jwt.encode(payload, key.private_key, algorithm="ES256")
    assert _reason(verifier, token) == TokenRejection.UNKNOWN_KEY


def test_key_of_another_signer_under_a_known_kid_fails_the_signature(verifier) -> None:
    impostor = TokenSigner(SigningKey.generate("k1"), ISSUER, AUDIENCE, 60)
    assert _reason(verifier, impostor.sign("u")) == TokenRejection.BAD_SIGNATURE


def test_tampered_payload_is_refused(signer, verifier) -> None:
    header, _, signature = signer.sign("user-1", {"role": "user"}).split(".")
    payload = jwt.decode(signer.sign("user-1"), options={"verify_signature": False})
    payload["role"] = "admin"
    tampered = f"{header}.{_b64(json.dumps(payload).encode())}.{signature}"
    assert _reason(verifier, tampered) == TokenRejection.BAD_SIGNATURE


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub"])
def test_each_missing_required_claim_is_refused(key, claim) -> None:
    now = int(time.time())
    payload = {"sub": "u", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60}
    del payload[claim]
    token = jwt.encode(payload, key.private_key, algorithm="ES256", headers={"kid": "k1"})
    verifier = TokenVerifier(KeySet([key.verification_key()]), ISSUER, AUDIENCE)
    assert _reason(verifier, token) == TokenRejection.MISSING_CLAIM


def test_extra_required_claims_are_enforced(key, signer) -> None:
    verifier = TokenVerifier(
        KeySet([key.verification_key()]),
        ISSUER,
        AUDIENCE,
        required_claims=("exp", "iat", "iss", "aud", "sub", "evt"),
    )
    assert _reason(verifier, signer.sign("u")) == TokenRejection.MISSING_CLAIM
    assert verifier.verify(signer.sign("u", {"evt": "demo"}))["evt"] == "demo"


def test_empty_subject_is_refused(signer, verifier) -> None:
    assert _reason(verifier, signer.sign("")) == TokenRejection.MISSING_CLAIM


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c", "..", "x" * 9000, "eyJhbGciOiJFUzI1NiJ9..", "é.é.é"]
)
def test_garbage_is_malformed(verifier, token) -> None:
    assert _reason(verifier, token) in {TokenRejection.MALFORMED, TokenRejection.UNKNOWN_KEY}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_escapes_as_another_exception(token: str) -> None:
    key = SigningKey.generate("fz")
    verifier = TokenVerifier(KeySet([key.verification_key()]), ISSUER, AUDIENCE)
    with pytest.raises(TokenError):
        verifier.verify(token)


def test_rotation_old_and_new_keys_verify_while_both_published() -> None:
    old, new = SigningKey.generate("2026-10"), SigningKey.generate("2026-11")
    old_token = TokenSigner(old, ISSUER, AUDIENCE, 60).sign("u")
    new_token = TokenSigner(new, ISSUER, AUDIENCE, 60).sign("u")
    keys = KeySet([old.verification_key(), new.verification_key()])
    verifier = TokenVerifier(keys, ISSUER, AUDIENCE)
    assert verifier.verify(old_token)["sub"] == "u"
    assert verifier.verify(new_token)["sub"] == "u"
    keys.remove("2026-10")
    assert _reason(verifier, old_token) == TokenRejection.UNKNOWN_KEY
    assert verifier.verify(new_token)["sub"] == "u"


def test_jwks_round_trip_publishes_only_public_parts() -> None:
    keys = KeySet(SigningKey.generate(kid).verification_key() for kid in ("a", "b"))
    document = keys.to_jwks()
    assert [jwk["kid"] for jwk in document["keys"]] == ["a", "b"]
    for jwk in document["keys"]:
        assert jwk["kty"] == "EC"
        assert jwk["crv"] == "P-256"
        assert jwk["alg"] == "ES256"
        assert "d" not in jwk
    parsed = KeySet.from_jwks(json.loads(json.dumps(document)))
    assert {key.kid for key in parsed} == {"a", "b"}


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"keys": "x"},
        {"keys": [{"kty": "RSA", "kid": "r"}]},
        {"keys": [{"kty": "EC", "crv": "P-384", "kid": "p"}]},
        {"keys": [{"kty": "EC", "crv": "P-256"}]},
        {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": "AA", "y": "AA"}]},
        {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "alg": "HS256"}]},
        {"keys": ["not an object"]},
    ],
)
def test_unusable_jwks_documents_are_refused(document) -> None:
    with pytest.raises(KeyMaterialError):
        KeySet.from_jwks(document)


def test_jwks_with_a_private_part_is_refused() -> None:
    key = SigningKey.generate("p")
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.private_key))
    with pytest.raises(KeyMaterialError, match="private"):
        KeySet.from_jwks({"keys": [{**jwk, "kid": "p"}]})


def test_keys_must_be_p256() -> None:
    with pytest.raises(KeyMaterialError):
        SigningKey("k", ec.generate_private_key(ec.SECP384R1()))


def test_key_file_is_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "access" / "local-1.pem"
    first = load_or_create_signing_key(path, "local-1")
    assert path.stat().st_mode & 0o777 == 0o600
    second = load_or_create_signing_key(path, "local-1")
    assert first.verification_key().to_jwk() == second.verification_key().to_jwk()
    assert list(path.parent.iterdir()) == [path]


def test_verification_keys_load_from_public_or_private_pem(tmp_path: Path) -> None:
    private = load_or_create_signing_key(tmp_path / "old.pem", "old")
    (tmp_path / "pub").mkdir()
    newer = SigningKey.generate("new").verification_key()
    (tmp_path / "pub" / "new.pem").write_bytes(newer.to_pem())
    keys = load_verification_keys([tmp_path / "old.pem", tmp_path / "pub" / "new.pem"])
    assert [key.kid for key in keys] == ["old", "new"]
    assert keys[0].to_jwk() == private.verification_key().to_jwk()


def test_bad_pem_is_a_key_material_error() -> None:
    with pytest.raises(KeyMaterialError):
        SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "x")
    with pytest.raises(KeyMaterialError):
        VerificationKey.from_pem(b"not a pem", "x")
