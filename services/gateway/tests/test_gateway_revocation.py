"""Reading the jti of an entry token without verifying it: never raises, never guesses."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from urr_common.tokens import SigningKey, TokenSigner
from urr_gateway.revocation import unverified_jti


def _segment(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_signed_token():
    signer = TokenSigner(SigningKey.generate("k"), "urr-queue", "urr-entry", 60)
    token = signer.sign("u1", {"evt": "e1", "jti": "abc123"})
    assert unverified_jti(token) == "abc123"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "x." + _segment(b"not json") + ".y",
        "x." + _segment(b"[1, 2]") + ".y",
        "x." + _segment(b"{}") + ".y",
        "x." + _segment(b'{"jti": 5}') + ".y",
        "x." + _segment(b'{"jti": ""}') + ".y",
        "x.%%%.y",
        "x.\u00e9\u00e9.y",
    ],
)
def test_anything_else_has_no_jti(token):
    assert unverified_jti(token) is None


@given(st.text(max_size=200))
def test_fuzz_never_raises(token):
    result = unverified_jti(token)
    assert result is None or (isinstance(result, str) and result)
