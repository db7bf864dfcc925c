"""The pure rules for e-mail addresses, passwords and display names."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from urr_auth.credentials import (
    LoginRequest,
    RegisterRequest,
    check_display_name,
    check_password,
    normalise_email,
)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Ada@Example.COM", "ada@example.com"),
        ("  ada.lovelace+urr@mail.example.org\t", "ada.lovelace+urr@mail.example.org"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("x@a-b.co", "x@a-b.co"),
    ],
)
def test_valid_addresses_are_trimmed_and_lower_cased(raw: str, normal: str) -> None:
    assert normalise_email(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "plain",
        "@example.com",
        "ada@",
        "ada@example",
        "ada@@example.com",
        ".ada@example.com",
        "ada.@example.com",
        "a..da@example.com",
        "ada@-example.com",
        "ada@example-.com",
        "ada@example..com",
        "ada@192.168.0.1",
        "ada lovelace@example.com",
        "ada@exam_ple.com",
        '"ada"@example.com',
        "ädä@example.com",
        "ada@exämple.com",
        "ada\n@example.com",
        "a" * 65 + "@example.com",
        "a@" + "b" * 250 + ".com",
    ],
)
def test_malformed_addresses_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="must"):
        normalise_email(raw)


@given(st.emails())
def test_normalising_is_idempotent_and_bounded(address: str) -> None:
    try:
        normal = normalise_email(address)
    except ValueError:
        return
    assert normalise_email(normal) == normal
    assert normal == normal.lower()
    assert normal.isascii()
    assert len(normal) <= 254


@given(st.text(max_size=300))
def test_arbitrary_text_is_an_address_or_a_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        normalise_email(text)


def test_passwords_are_nfkc_normalised_and_counted_after() -> None:
    fullwidth = "\uff50\uff41\uff53\uff53\uff57\uff4f\uff52\uff44"  # "password" in full width
    assert check_password(fullwidth) == "password"
    assert check_password("p" * 8) == "p" * 8
    assert check_password("p" * 128) == "p" * 128
    with pytest.raises(ValueError, match="8 to 128"):
        check_password("p" * 7)
    with pytest.raises(ValueError, match="8 to 128"):
        check_password("p" * 129)
    with pytest.raises(ValueError, match="Unicode"):
        check_password("password\udc80")


def test_display_names() -> None:
    assert check_display_name(None) is None
    assert check_display_name("   ") is None
    assert check_display_name("  Ada  ") == "Ada"
    assert check_display_name("n" * 100) == "n" * 100
    assert check_display_name("Ada\u0085") == "Ada"  # trailing C1 "next line" is whitespace
    for bad in ("n" * 101, "Ada\x00", "Ada\x1b[31m", "A\u0085da", "Ada\u202egnp.exe"):
        with pytest.raises(ValueError, match="must"):
            check_display_name(bad)


def test_request_models_are_strict_and_hide_passwords() -> None:
    body = RegisterRequest.model_validate({"email": "Ada@Example.com", "password": "a secret pass"})
    assert body.email == "ada@example.com"
    assert "a secret pass" not in repr(body)
    assert "a secret pass" not in repr(
        LoginRequest.model_validate({"email": "ada@example.com", "password": "a secret pass"})
    )
    for bad in (
        {"email": "ada@example.com", "password": 123456789},
        {"email": ["ada@example.com"], "password": "long enough"},
        {"email": "ada@example.com", "password": "long enough", "role": "admin"},
        {"email": "ada@example.com"},
    ):
        with pytest.raises(ValidationError):
            RegisterRequest.model_validate(bad)


def test_login_accepts_any_non_empty_password_up_to_the_limit() -> None:
    assert LoginRequest.model_validate({"email": "a@example.com", "password": "x"}).password == "x"
    for password in ("", "x" * 129):
        with pytest.raises(ValidationError):
            LoginRequest.model_validate({"email": "a@example.com", "password": password})
