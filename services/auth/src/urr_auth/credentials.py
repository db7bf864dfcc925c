"""What a valid e-mail address, password and display name are, and the request bodies.

Pure functions and pydantic models, no I/O: the handlers parse with these, and the settings
and the command-line tool validate the bootstrap admin with the same rules.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

#: RFC 5321's limit on a forward path, which is what an address has to fit in.
EMAIL_MAX_LENGTH = 254
EMAIL_LOCAL_MAX_LENGTH = 64
PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 128
DISPLAY_NAME_MAX_LENGTH = 100

# A dot-atom local part and a host name with at least two labels. ASCII only: this stand-in
# identity provider does not take internationalised addresses, which keeps lower-casing in
# Python and lower() in PostgreSQL in exact agreement.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL_RE = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+$")


#: Bidirectional overrides and isolates: they can make a name render as a different one.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def normalise_email(value: str) -> str:
    """The address trimmed and lower-cased; ``ValueError`` when it is not one.

    Addresses are compared case-insensitively (the database also enforces that with a unique
    index on ``lower(email)``), so they are stored in the one form.
    """
    address = value.strip()
    if len(address) > EMAIL_MAX_LENGTH:
        raise ValueError(f"must be at most {EMAIL_MAX_LENGTH} characters")
    if not address.isascii() or not _EMAIL_RE.match(address):
        raise ValueError("must be an e-mail address like name@example.com")
    local, _, domain = address.rpartition("@")
    if len(local) > EMAIL_LOCAL_MAX_LENGTH:
        raise ValueError(f"the part before @ must be at most {EMAIL_LOCAL_MAX_LENGTH} characters")
    if domain.rsplit(".", 1)[-1].isdigit():
        raise ValueError("the domain must be a host name")
    return address.lower()


def check_password(value: str) -> str:
    """The password in NFKC form (NIST SP 800-63B), or ``ValueError`` when unusable.

    Normalising means the same password typed on two keyboards that compose characters
    differently still matches. The length is counted after normalising.
    """
    password = unicodedata.normalize("NFKC", value)
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        raise ValueError(f"must be {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters")
    _require_utf8(password)
    return password


def normalise_login_password(value: str) -> str:
    """A login attempt's password in the same form; only its size is bounded."""
    password = unicodedata.normalize("NFKC", value)
    if not 1 <= len(password) <= PASSWORD_MAX_LENGTH:
        raise ValueError(f"must be 1 to {PASSWORD_MAX_LENGTH} characters")
    _require_utf8(password)
    return password


def check_display_name(value: str | None) -> str | None:
    """Trimmed; blank means none; no control characters (they would corrupt logs and UIs)."""
    if value is None:
        return None
    name = unicodedata.normalize("NFC", value).strip()
    if not name:
        return None
    if len(name) > DISPLAY_NAME_MAX_LENGTH:
        raise ValueError(f"must be at most {DISPLAY_NAME_MAX_LENGTH} characters")
    if any(unicodedata.category(char) in ("Cc", "Cs") or char in _BIDI_CONTROLS for char in name):
        raise ValueError("must not contain control characters")
    return name


def _require_utf8(text: str) -> None:
    # A lone surrogate (possible from a terminal, not from JSON) cannot be hashed as UTF-8.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text") from exc


#: Before the validators run, bound the work they do on hostile input (NFKC of a huge string).
_RAW_LIMIT = 1024

Email = Annotated[str, Field(max_length=_RAW_LIMIT), AfterValidator(normalise_email)]
NewPassword = Annotated[
    str, Field(max_length=_RAW_LIMIT, repr=False), AfterValidator(check_password)
]
LoginPassword = Annotated[
    str, Field(max_length=_RAW_LIMIT, repr=False), AfterValidator(normalise_login_password)
]
DisplayName = Annotated[
    str | None, Field(max_length=_RAW_LIMIT), AfterValidator(check_display_name)
]


class RegisterRequest(BaseModel):
    """``POST /api/v1/auth/register``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    email: Email
    password: NewPassword
    display_name: DisplayName = None


class LoginRequest(BaseModel):
    """``POST /api/v1/auth/login``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    email: Email
    password: LoginPassword
