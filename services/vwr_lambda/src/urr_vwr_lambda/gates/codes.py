"""Presale access codes: making them, normalising what a visitor typed, hashing (issue 15, 5).

A code is 12 characters of Crockford's base32 (60 random bits) shown as ``XXXX-XXXX-XXXX``.
Only ``HMAC-SHA256(event salt, normalised code)`` is stored; the salt is random per event, so a
leaked table does not let anyone test guesses against every event at once, and the plain codes
exist only in the admin's answer that created them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_CHARS = 12
GROUP = 4
SALT_BYTES = 32
#: What a typed code may look like once separators are dropped (longer ones are refused
#: before any hashing or I/O).
_NORMALISED_RE = re.compile(r"^[0-9A-Z]{8,32}$")
_SEPARATORS = re.compile(r"[\s-]+")


def new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS))
    return "-".join(raw[i : i + GROUP] for i in range(0, CODE_CHARS, GROUP))


def normalise(typed: object) -> str | None:
    """The code without separators, upper case; None when it cannot be a code at all."""
    if not isinstance(typed, str) or len(typed) > 64:
        return None
    text = _SEPARATORS.sub("", typed).upper()
    # Crockford's base32 reads the letters people confuse with digits as those digits.
    text = text.replace("O", "0").replace("I", "1").replace("L", "1")
    return text if _NORMALISED_RE.fullmatch(text) else None


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def code_hash(salt: bytes, normalised: str) -> str:
    return hmac.new(salt, normalised.encode("ascii"), hashlib.sha256).hexdigest()


def new_batch_id() -> str:
    return secrets.token_hex(8)


def is_batch_id(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{16}", value) is not None
