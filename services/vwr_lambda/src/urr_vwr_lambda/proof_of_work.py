"""The proof-of-work puzzle of the assign gate (issue 15): stateless signed challenges, pure.

A challenge is one ASCII string, ``v1.<eventId>.<expiresAt>.<bits>.<nonce>.<mac>``: the event
it is for, its expiry (epoch seconds), the difficulty, 16 random bytes and an HMAC-SHA256 over
everything before the last dot (both base64url without padding). Nothing is stored when it is
handed out; the server alone can make one, since only it holds the HMAC key.

The puzzle: find a ``counter`` (an integer from 0 to 2**53 - 1, so JavaScript counts it
exactly) such that ``SHA-256(SHA-256(challenge) || counter as 8 bytes big-endian)`` starts
with ``bits`` zero bits. Hashing the challenge first keeps every try a single 64-byte SHA-256
block (32 + 8 bytes), whatever the length of the event id. ``2**bits`` tries are expected.

``verify`` checks a solution without I/O; recording its use once (the replay guard) is the
store adapter's job (``pow_store``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

VERSION = "v1"
ALGORITHM = "sha256(sha256(challenge)||u64be(counter)), leading zero bits"
MIN_BITS = 8
MAX_BITS = 26
DEFAULT_BITS = 16
MAX_COUNTER = 2**53 - 1
#: Longer than any challenge we make (an event id is at most 64 characters).
MAX_CHALLENGE_LENGTH = 256
NONCE_BYTES = 16

_CHALLENGE_RE = re.compile(
    r"^v1\.([A-Za-z0-9][A-Za-z0-9_-]{0,63})\.([0-9]{1,12})\.([0-9]{1,2})\."
    r"([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})$"
)


class PowRefused(Exception):
    """A solution was refused; ``code`` is the problem's stable code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Challenge:
    event_id: str
    expires_at: int
    bits: int
    nonce: str
    text: str


@dataclass(frozen=True)
class Solved:
    """An accepted solution: what the replay guard records (the nonce, until expiry)."""

    event_id: str
    nonce: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(key: bytes, signed: str) -> str:
    return _b64(hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest())


def issue(key: bytes, *, event_id: str, bits: int, now_s: int, ttl_s: int) -> Challenge:
    """A fresh challenge for ``event_id`` (random nonce), valid ``ttl_s`` seconds."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be {MIN_BITS}..{MAX_BITS}")
    nonce = _b64(secrets.token_bytes(NONCE_BYTES))
    expires_at = now_s + ttl_s
    signed = f"{VERSION}.{event_id}.{expires_at}.{bits}.{nonce}"
    text = f"{signed}.{_mac(key, signed)}"
    return Challenge(event_id=event_id, expires_at=expires_at, bits=bits, nonce=nonce, text=text)


def leading_zero_bits(digest: bytes) -> int:
    """How many zero bits ``digest`` starts with."""
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def seed(challenge: str) -> bytes:
    """The first hash of the puzzle: SHA-256 of the challenge's ASCII bytes."""
    return hashlib.sha256(challenge.encode("ascii")).digest()


def attempt(challenge_seed: bytes, counter: int) -> bytes:
    """The digest a ``counter`` gives: SHA-256(seed || counter, 8 bytes big-endian)."""
    return hashlib.sha256(challenge_seed + counter.to_bytes(8, "big")).digest()


def solve(challenge: str, bits: int, *, limit: int = MAX_COUNTER) -> int:
    """The first counter that solves ``challenge`` (tests, benches and the load test's
    visitors; the waiting page does the same in a Web Worker)."""
    base = hashlib.sha256(seed(challenge))
    for counter in range(limit + 1):
        trial = base.copy()
        trial.update(counter.to_bytes(8, "big"))
        if leading_zero_bits(trial.digest()) >= bits:
            return counter
    raise ValueError("no solution below the limit")


def parse(text: object) -> Challenge:
    """The fields of a challenge string (its MAC is not checked here)."""
    if not isinstance(text, str) or len(text) > MAX_CHALLENGE_LENGTH:
        raise PowRefused("pow_invalid", "the challenge must be the string the server handed out")
    match = _CHALLENGE_RE.match(text)
    if match is None:
        raise PowRefused("pow_invalid", "the challenge is not one the server hands out")
    event_id, expires_at, bits, nonce, _ = match.groups()
    return Challenge(
        event_id=event_id, expires_at=int(expires_at), bits=int(bits), nonce=nonce, text=text
    )


def verify(
    solution: object,
    *,
    keys: tuple[bytes, ...],
    event_id: str,
    required_bits: int,
    now_s: int,
) -> Solved:
    """Check a client's ``{"challenge": str, "counter": int}`` for ``event_id``.

    In this order: shape, signature (any of ``keys``), event, expiry, difficulty (at least
    what the event asks now), and the work itself. Raises ``PowRefused`` with ``pow_invalid``,
    ``pow_wrong_event`` or ``pow_expired``.
    """
    if not isinstance(solution, dict):
        raise PowRefused("pow_invalid", 'pow must be {"challenge": string, "counter": integer}')
    counter = solution.get("counter")
    if isinstance(counter, bool) or not isinstance(counter, int) or not 0 <= counter <= MAX_COUNTER:
        raise PowRefused("pow_invalid", f"counter must be an integer from 0 to {MAX_COUNTER}")
    challenge = parse(solution.get("challenge"))
    signed, _, mac = challenge.text.rpartition(".")
    if not any(hmac.compare_digest(_mac(key, signed), mac) for key in keys):
        raise PowRefused("pow_invalid", "the challenge's signature does not verify")
    if challenge.event_id != event_id:
        raise PowRefused("pow_wrong_event", f"the challenge is for event {challenge.event_id}")
    if challenge.expires_at <= now_s:
        raise PowRefused("pow_expired", "the challenge has expired; fetch a new one")
    if challenge.bits < required_bits:
        raise PowRefused(
            "pow_invalid",
            f"the challenge asks {challenge.bits} bits but the event now asks {required_bits}",
        )
    if leading_zero_bits(attempt(seed(challenge.text), counter)) < challenge.bits:
        raise PowRefused(
            "pow_invalid", f"the counter does not solve the {challenge.bits}-bit puzzle"
        )
    return Solved(event_id=event_id, nonce=challenge.nonce, expires_at=challenge.expires_at)
