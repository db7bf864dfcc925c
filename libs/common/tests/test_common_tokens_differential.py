"""Differential fuzz: ``TokenVerifier.verify`` against pyjwt's ``decode`` with the options the
project used before it verified everything on one path (issue 17).

The reference (``urr_common.tokens_testing.pyjwt_verify``) is the old ``TokenVerifier.verify``
kept as an oracle: thousands of hand-crafted and mutated tokens go through both and must be
accepted or refused alike, for the same reason class, with the same claims. A divergence in
which ours accepts what pyjwt refuses is a security bug; where ours refuses what pyjwt accepts
the case is listed in ``_STRICTER`` with why.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from urr_common.tokens import (
    BASE_REQUIRED_CLAIMS,
    KeySet,
    SigningKey,
    TokenError,
    TokenRejection,
    TokenSigner,
    TokenVerifier,
)
from urr_common.tokens_testing import pyjwt_verify

ISSUER = "urr-auth"
AUDIENCE = "urr"
LEEWAY = 5
KEY = SigningKey.generate("k1")
STRANGER = SigningKey.generate("k1")  # the trusted kid, a key nobody trusts
OTHER_KID = SigningKey.generate("k2")
PUBLIC_PEM = KEY.verification_key().to_pem()
_ECDSA = ec.ECDSA(hashes.SHA256())
_HEADER = json.dumps({"alg": "ES256", "kid": "k1", "typ": "JWT"}).encode()
_NONE_HEADER = base64.urlsafe_b64encode(b'{"alg":"none","kid":"k1"}').rstrip(b"=").decode()
#: The order of P-256's group: (r, n - s) is the other valid signature of the same message.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _verifier() -> TokenVerifier:
    return TokenVerifier(
        keys=KeySet([KEY.verification_key()]), issuer=ISSUER, audience=AUDIENCE, leeway_s=LEEWAY
    )


def _outcome(check: Callable[[str], dict[str, Any]], token: Any) -> tuple[str, object]:
    try:
        return ("accepted", check(token))
    except TokenError as refused:
        return ("refused", refused.reason)
    except Exception as crash:
        return ("crashed", type(crash).__name__)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_sign(header: bytes, payload: bytes, key: SigningKey = KEY) -> str:
    """A token over exactly these header and payload bytes (duplicate keys, NaN, non-objects)."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    der = key.private_key.sign(signing_input.encode(), _ECDSA)
    r, s = decode_dss_signature(der)
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _good_claims(now: int) -> dict[str, Any]:
    return {
        "sub": "u1", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now,
        "exp": now + 300, "jti": "j1", "role": "user",
    }  # fmt: skip


_ABSENT = object()


def _time_values(now: int) -> list[object]:
    # Away from the leeway boundary by >= 2 s: the two paths read the clock apart.
    return [
        now, now + 300, now - 300, now + LEEWAY - 2, now - LEEWAY + 2, now + LEEWAY + 2,
        now - LEEWAY - 2, float(now + 300), now + 300.9, float("nan"), float("inf"),
        float("-inf"), True, False, str(now + 300), str(now - 300), " 99999999999 ",
        "1_999_999_999", "soon", "", None, [now + 300], {"t": 1}, 10**40, -(10**40), 0, -1,
        1.5e300, _ABSENT,
    ]  # fmt: skip


def _claim_variants(now: int) -> Iterator[dict[str, Any]]:
    for name in ("exp", "iat", "nbf"):
        for value in _time_values(now):
            claims = _good_claims(now)
            if value is _ABSENT:
                del claims[name]
            else:
                claims[name] = value
            yield claims
    odd: dict[str, list[object]] = {
        "iss": [ISSUER, "urr-other", "", 5, None, [ISSUER], {"i": 1}, ISSUER + "\x00", True],
        "aud": [AUDIENCE, "other", "", 5, None, [AUDIENCE], [AUDIENCE, "x"], [], {"a": 1}, True],
        "sub": ["u1", "", 7, None, ["u1"], True, "u\x00", "ü" * 200, {"s": 1}],
        "jti": ["j", "", 3, None, [1], True],
        "role": ["admin", 1, None],
    }
    for name, values in odd.items():
        for value in [*values, _ABSENT]:
            claims = _good_claims(now)
            if value is _ABSENT:
                claims.pop(name, None)
            else:
                claims[name] = value
            yield claims
    rng = random.Random(17)
    names = list(_good_claims(now))
    pool = [v for v in _time_values(now) if v is not _ABSENT] + ["x", 0, None, AUDIENCE, ISSUER]
    for _ in range(400):  # several odd claims at once: which refusal comes first
        claims = _good_claims(now)
        for name in rng.sample(names, rng.randint(2, 4)):
            if rng.random() < 0.2:
                del claims[name]
            else:
                claims[name] = rng.choice(pool)
        yield claims


def _dumps(claims: dict[str, Any]) -> bytes:
    return json.dumps(claims).encode()  # allow_nan: NaN and Infinity as Python writes them


def _payload_variants(now: int) -> Iterator[bytes]:
    good = _dumps(_good_claims(now))
    yield good
    yield b"[1]"
    yield b'"text"'
    yield b"1"
    yield b"null"
    yield b"true"
    yield b"{"
    yield b""
    yield b"\xff\xfe"
    yield b"[" * 5000 + b"]" * 5000
    yield b'{"a":' * 3000 + b"1" + b"}" * 3000
    claims = _good_claims(now)
    # Duplicate keys: json (and pyjwt) keep the last one.
    yield good[:-1] + b', "exp": 1}'
    yield good[:-1] + f', "aud": "other", "aud": "{AUDIENCE}"}}'.encode()
    yield good[:-1] + b', "sub": "", "sub": "u2"}'
    yield b'{"exp": 1e999, ' + good[1:]
    yield good.replace(b'"exp": ', b'"exp": 1' + b"0" * 4400 + b', "x": ')
    yield json.dumps({**claims, "exp": now + 300}, ensure_ascii=False).encode("utf-16")
    yield b"\xef\xbb\xbf" + good  # a BOM
    yield b" " + good + b"\n"


def _header_variants() -> Iterator[bytes]:
    headers: list[object] = [
        {"alg": "ES256", "kid": "k1"},
        {"alg": "ES256", "kid": "k1", "typ": "JWT"},
        {"alg": "ES256", "kid": "k1", "typ": "at+jwt"},
        {"alg": "ES256", "kid": "k1", "typ": 5},
        {"alg": "none", "kid": "k1"},
        {"alg": "None", "kid": "k1"},
        {"alg": "HS256", "kid": "k1"},
        {"alg": "ES384", "kid": "k1"},
        {"alg": "es256", "kid": "k1"},
        {"alg": "ES256 ", "kid": "k1"},
        {"alg": ["ES256"], "kid": "k1"},
        {"alg": None, "kid": "k1"},
        {"kid": "k1"},
        {"alg": "ES256"},
        {"alg": "ES256", "kid": None},
        {"alg": "ES256", "kid": 7},
        {"alg": "ES256", "kid": ["k1"]},
        {"alg": "ES256", "kid": ""},
        {"alg": "ES256", "kid": "k2"},
        {"alg": "ES256", "kid": "k" * 5000},
        {"alg": "ES256", "kid": "ḱ1"},
        {"alg": "ES256", "kid": "k1", "crit": ["exp"]},
        {"alg": "ES256", "kid": "k1", "crit": []},
        {"alg": "ES256", "kid": "k1", "b64": True},
        {"alg": "ES256", "kid": "k1", "b64": False},
        {"alg": "ES256", "kid": "k1", "jku": "https://evil.example/jwks"},
        {"alg": "ES256", "kid": "k1", "jwk": KEY.verification_key().to_jwk()},
        {"alg": "ES256", "kid": "k1", "x5u": "https://evil.example/cert"},
        [1],
        "ES256",
        None,
    ]
    for header in headers:
        yield json.dumps(header).encode()
    yield b'{"alg": "none", "alg": "ES256", "kid": "k1"}'
    yield b'{"alg": "ES256", "alg": "none", "kid": "k1"}'
    yield b'{"alg": "ES256", "kid": "k2", "kid": "k1"}'
    yield b"{"
    yield b""
    yield b'{"alg": "ES256", "kid": "k1"} '


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(_dumps(claims))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _crafted(now: int) -> list[str]:
    tokens: list[str] = []
    for claims in _claim_variants(now):
        tokens.append(_raw_sign(_HEADER, _dumps(claims)))
    for payload in _payload_variants(now):
        tokens.append(_raw_sign(_HEADER, payload))
    good_payload = _dumps(_good_claims(now))
    for header_bytes in _header_variants():
        tokens.append(_raw_sign(header_bytes, good_payload))
        tokens.append(_raw_sign(header_bytes, good_payload, STRANGER))
    claims = _good_claims(now)
    for secret in (PUBLIC_PEM, PUBLIC_PEM.strip(), b"", b"k1"):
        tokens.append(_hs256({"alg": "HS256", "kid": "k1"}, claims, secret))
        tokens.append(_hs256({"alg": "ES256", "kid": "k1"}, claims, secret))
    unsigned = f"{_NONE_HEADER}.{_b64(good_payload)}"
    tokens += [unsigned + ".", unsigned, unsigned + ".AAAA"]
    tokens.append(_raw_sign(_HEADER, good_payload, OTHER_KID))
    good = _raw_sign(_HEADER, good_payload)
    header, body, signature = good.split(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    n = _P256_ORDER
    der = KEY.private_key.sign(f"{header}.{body}".encode(), _ECDSA)
    tokens += [
        good,
        f"{header}.{body}.{_b64(r.to_bytes(32, 'big') + (n - s).to_bytes(32, 'big'))}",  # high s
        f"{header}.{body}.{_b64(s.to_bytes(32, 'big') + r.to_bytes(32, 'big'))}",
        f"{header}.{body}.{_b64(bytes(64))}",
        f"{header}.{body}.{_b64(der)}",  # DER, not the raw r || s of RFC 7518
        f"{header}.{body}.{_b64(raw + b'x')}",
        f"{header}.{body}.{_b64(raw[:-1])}",
        f"{header}.{body}.{_b64(((r + n) % 2**256).to_bytes(32, 'big') + raw[32:])}",
        f"{header}.{body}.{signature}=",
        f"{header}.{body}.{signature}==",
        f"{header}.{body}.{signature}===",
        f"{header}=.{body}.{signature}",
        f"{header}.{body}=.{signature}",
        f"{header}.{body}.{signature.replace('-', '+').replace('_', '/')}",
        f"{header}.{body}.{signature}\n",
        f" {good}",
        f"{good} ",
        f"{header}.{body}. {signature}",
        f"{header}.{body}.{signature}.",
        f"{header}.{body}.{signature}.{signature}",
        f"{header}..{body}.{signature}",
        f"{header}.{body}",
        f"{header}",
        ".",
        "..",
        "...",
        "",
        "Bearer " + good,
        good.replace(".", ". "),
        f"{header}.{body}.{signature[:-1]}",
        f"{header}.{body[:-1]}.{signature}",
        f"{header[:-1]}.{body}.{signature}",
        f"{header}.{body}.{signature}" + "A" * 8192,
        good + "x" * (8192 - len(good)),
        good + "x" * (8193 - len(good)),
        f"{header}.{body}.{signature[:-1]}ü",
        f"{header}.{body}ü.{signature}",
        f"{header}.{body}.{signature}\x00",
    ]
    # Non-canonical trailing bits: the same bytes under another spelling.
    for segment_index in range(3):
        parts = good.split(".")
        last = parts[segment_index][-1]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        for other in alphabet:
            if other != last:
                parts_copy = list(parts)
                parts_copy[segment_index] = parts[segment_index][:-1] + other
                tokens.append(".".join(parts_copy))
    return tokens


def _forge(header: dict[str, object], payload: dict[str, object], signature: bytes = b"") -> str:
    return ".".join(
        [_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), _b64(signature)]
    )


def _issue22_cases(key: SigningKey, signer: TokenSigner) -> list[str]:
    """The 42 tokens issue 22 held the lean path to pyjwt with (moved from test_common_tokens):
    signed with odd claims, tampered, forged headers, broken encodings."""
    now = int(time.time())
    odd_claims: list[dict[str, object]] = [
        {},
        {"exp": now - 60},
        {"exp": now - 3},
        {"exp": "soon"},
        {"exp": str(now + 60)},
        {"iat": now + 60},
        {"iat": "x"},
        {"iat": True},
        {"nbf": now + 60},
        {"nbf": [1]},
        {"iss": "urr-other"},
        {"iss": 5},
        {"iss": None},
        {"aud": "other"},
        {"aud": [AUDIENCE]},
        {"aud": ""},
        {"aud": None},
        {"sub": ""},
        {"sub": 7},
        {"sub": None},
        {"jti": 3},
        {"exp": now - 60, "iss": "urr-other"},
        {"iat": now + 60, "aud": "other"},
        {"sub": 7, "aud": "other"},
    ]
    tokens = []
    for overrides in odd_claims:
        claims: dict[str, object] = {
            "sub": "u1", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now,
            "exp": now + 300, "jti": "j1",
        }  # fmt: skip
        claims.update(overrides)
        claims = {name: value for name, value in claims.items() if value is not None}
        payload = json.dumps(claims).encode()  # as given: jwt.encode would refuse some
        tokens.append(jwt.api_jws.encode(payload, key.private_key, "ES256", {"kid": "k1"}))
    good = signer.sign("u1")
    header, body, signature = good.split(".")
    other = signer.sign("u2").split(".")[1]
    tokens += [
        good,
        f"{header}.{other}.{signature}",
        f"{header}.{body}.{signature[:-3]}",
        f"{header}.{body}.{signature[:-4]}",
        f"{header}.{body}.",
        f"{header}.{body}.{signature}.x",
        f"{header}.{body}",
        f"{header}.{body}.{signature}===",
        f"{header}.{body}!.{signature}",
        "",
        "x" * 9000,
        _forge({"alg": "none", "kid": "k1"}, {"sub": "u1"}),
        _forge({"alg": "HS256", "kid": "k1"}, {"sub": "u1"}, b"x" * 32),
        _forge({"alg": "ES256"}, {"sub": "u1"}, b"x" * 64),
        _forge({"alg": "ES256", "kid": "k9"}, {"sub": "u1"}, b"x" * 64),
        _forge({"alg": "ES256", "kid": 7}, {"sub": "u1"}, b"x" * 64),
        jwt.api_jws.encode(b"[1]", key.private_key, algorithm="ES256", headers={"kid": "k1"}),
        jwt.api_jws.encode(b"{", key.private_key, algorithm="ES256", headers={"kid": "k1"}),
    ]
    return tokens


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \n\x00ü"


def _mutants(seeds: list[str], count: int, seed: int) -> Iterator[str]:
    """Byte-level mutations of valid tokens: flips, inserts, deletes, splices, duplicates."""
    rng = random.Random(seed)
    for _ in range(count):
        token = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(5)
            at = rng.randrange(len(token) + 1)
            if op == 0 and token:
                token[min(at, len(token) - 1)] = rng.choice(_ALPHABET)
            elif op == 1:
                token.insert(at, rng.choice(_ALPHABET))
            elif op == 2 and token:
                del token[min(at, len(token) - 1)]
            elif op == 3:
                other = rng.choice(seeds)
                cut = rng.randrange(len(other) + 1)
                token = token[:at] + list(other[cut:])
            else:
                token[at:at] = token[max(0, at - 8) : at]
        yield "".join(token)


def _segment_swaps(seeds: list[str]) -> Iterator[str]:
    """Every header, payload and signature recombined across tokens (cut-and-paste forgery)."""
    split = [seed.split(".") for seed in seeds if seed.count(".") == 2]
    for a in split[:12]:
        for b in split[:12]:
            yield f"{a[0]}.{b[1]}.{a[2]}"
            yield f"{b[0]}.{a[1]}.{a[2]}"


def _names_b64(token: object) -> bool:
    """The one deliberate difference: a header with RFC 7797's ``b64`` (which pyjwt accepts
    as ``true`` without ``crit``) is refused as MALFORMED; no issuer of ours writes it."""
    try:
        header = json.loads(base64.urlsafe_b64decode(str(token).split(".")[0] + "=="))
    except ValueError:
        return False
    return isinstance(header, dict) and "b64" in header


def _check_same(verifier: TokenVerifier, token: Any, found: list[str]) -> None:
    ours = _outcome(verifier.verify, token)
    reference = _outcome(lambda t: pyjwt_verify(verifier, t), token)
    if ours[0] == "crashed":  # even where pyjwt crashed too: bad input is a refusal, never a 500
        found.append(f"{token!r:.160}: ours crashed with {ours[1]}")
        return
    if ours == ("refused", TokenRejection.MALFORMED) and _names_b64(token):
        return
    if ours != reference:
        found.append(f"{token!r:.160}: ours {ours!r:.80} pyjwt {reference!r:.80}")


def test_verify_answers_as_pyjwt_over_thousands_of_tokens() -> None:
    """Issue 17: hand-crafted and mutated tokens, accepted and refused alike."""
    verifier = _verifier()
    now = int(time.time())
    signer = TokenSigner(key=KEY, issuer=ISSUER, audience=AUDIENCE, ttl_s=300)
    crafted = [*_crafted(now), *_issue22_cases(KEY, signer)]
    seeds = [t for t in crafted if _outcome(verifier.verify, t)[0] == "accepted"]
    seeds += [_raw_sign(_HEADER, _dumps(claims)) for claims in list(_claim_variants(now))[:40]]
    corpus = [*crafted, *_segment_swaps(seeds), *_mutants(seeds, 4000, seed=17)]
    assert len(corpus) >= 5000
    found: list[str] = []
    for token in corpus:
        _check_same(verifier, token, found)
    assert not found, f"{len(found)} of {len(corpus)} diverge:\n" + "\n".join(found[:40])


def test_non_string_tokens_are_refused_alike() -> None:
    verifier = _verifier()
    found: list[str] = []
    for token in (None, b"a.b.c", 5, ["a", "b", "c"], _raw_sign(_HEADER, b"{}").encode()):
        _check_same(verifier, token, found)
        assert _outcome(verifier.verify, token) == ("refused", TokenRejection.MALFORMED)
    assert not found


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    overrides=st.dictionaries(
        st.sampled_from([*BASE_REQUIRED_CLAIMS, "nbf", "jti", "x"]), _json_values, max_size=4
    ),
    removed=st.sets(st.sampled_from([*BASE_REQUIRED_CLAIMS, "nbf", "jti"]), max_size=2),
)
def test_signed_odd_claims_are_judged_alike(overrides: dict[str, Any], removed: set[str]) -> None:
    now = int(time.time())
    claims = {**_good_claims(now), **overrides}
    for name in removed:
        claims.pop(name, None)
    token = _raw_sign(_HEADER, _dumps(claims))
    found: list[str] = []
    _check_same(_verifier(), token, found)
    assert not found, found


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=300) | st.text(max_size=60))
def test_arbitrary_text_is_judged_alike(token: str) -> None:
    found: list[str] = []
    _check_same(_verifier(), token, found)
    assert not found, found


@pytest.mark.parametrize("attack", ["none", "hs256-public-key", "stranger", "tampered"])
def test_attacks_are_refused_with_their_reason(attack: str) -> None:
    now = int(time.time())
    claims = _good_claims(now)
    good = _raw_sign(_HEADER, _dumps(claims))
    tokens = {
        "none": (
            f"{_NONE_HEADER}.{_b64(_dumps(claims))}.",
            TokenRejection.UNSUPPORTED_ALGORITHM,
        ),
        "hs256-public-key": (
            _hs256({"alg": "HS256", "kid": "k1"}, claims, PUBLIC_PEM),
            TokenRejection.UNSUPPORTED_ALGORITHM,
        ),
        "stranger": (_raw_sign(_HEADER, _dumps(claims), STRANGER), TokenRejection.BAD_SIGNATURE),
        "tampered": (
            ".".join(
                [good.split(".")[0], _b64(_dumps({**claims, "role": "admin"})), good.split(".")[2]]
            ),
            TokenRejection.BAD_SIGNATURE,
        ),
    }
    token, reason = tokens[attack]
    assert _outcome(_verifier().verify, token) == ("refused", reason)
