"""Queueing methods and the random order key both tiers share (issue 19).

An event's ``queueMethod`` says how its line is ordered:

- ``fifo``: by arrival (the default);
- ``random``: by an order key drawn at entry from the event's seed and the arrival's id, so a
  whole crowd arriving at once gets a lottery rather than a race of milliseconds;
- ``passthrough``: everyone goes straight in (no waiting);
- ``reject``: nobody waits ("sold out / closed"), joining is a 409.

The random key is ``HMAC-SHA1(seed, arrival id)``, its first 13 hex digits read as an integer
(52 bits): exact in a Redis sorted-set score (a double) and computable inside a Redis script
(``redis.sha1hex``), so Tier 2 draws it atomically at entry and Tier 1 (Python) draws the same
key for the same seed and id. Equal keys (about one pair in 2^26 at 1,000 waiters... in
practice never) are ordered by the arrival id. The seed stays secret while people queue (a
waiter who knew it could choose a lucky id) and is published afterwards, so anyone can
recompute the order: the commitment ``SHA-256(seed)`` is public from the start.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from enum import StrEnum

SEED_BYTES = 32
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Hex digits of the HMAC read as the key: 52 bits, exact in an IEEE double.
ORDER_KEY_HEX_DIGITS = 13


class QueueMethod(StrEnum):
    FIFO = "fifo"
    RANDOM = "random"
    PASSTHROUGH = "passthrough"
    REJECT = "reject"


QUEUE_METHODS = tuple(method.value for method in QueueMethod)


def is_hex64(value: object) -> bool:
    """A 32-byte value written as 64 lowercase hex digits (seeds, commitments, roots)."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def order_key(seed: bytes, arrival_id: str) -> int:
    """The random method's order key of one arrival (smaller goes first)."""
    digest = hmac.new(seed, arrival_id.encode("utf-8"), hashlib.sha1).hexdigest()
    return int(digest[:ORDER_KEY_HEX_DIGITS], 16)


def random_order(seed: bytes, arrival_ids: list[str]) -> list[str]:
    """Arrival ids in the order the random method admits them."""
    return sorted(arrival_ids, key=lambda arrival: (order_key(seed, arrival), arrival))


def seed_commitment(seed: bytes) -> str:
    """What is published while the seed is secret: ``SHA-256(seed)`` in hex."""
    return hashlib.sha256(seed).hexdigest()
