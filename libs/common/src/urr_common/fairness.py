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
key for the same seed and id. Equal keys (at a million waiters, about one chance in 9,000
of a single pair) are ordered by the arrival id. The seed stays secret while people queue (a
waiter who knew it could choose a lucky id) and is published afterwards, so anyone can
recompute the order: the commitment ``SHA-256(seed)`` is public from the start.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, TypeVar

T = TypeVar("T")

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


def seed_records(prefix: str, event_id: str, seed_hex: str) -> tuple[dict[str, Any], ...]:
    """``(committed, revealed)``: the ``{prefix}order_seed_committed`` record (the commitment)
    and the ``{prefix}order_seed_revealed`` one (the commitment and the seed) each tier
    publishes to the admission log; fixed ids, so a republished record is stored once."""
    committed = {
        "id": f"{prefix}order_seed_committed:{event_id}",
        "type": f"{prefix}order_seed_committed",
        "eventId": event_id,
        "method": "random",
        "commitment": seed_commitment(bytes.fromhex(seed_hex)),
    }
    revealed = {
        **committed,
        "id": f"{prefix}order_seed_revealed:{event_id}",
        "type": f"{prefix}order_seed_revealed",
        "seed": seed_hex,
    }
    return committed, revealed


# -- the pre-queue's verifiable shuffle ------------------------------------------------------
# Written to the letter of tools/verify/README.md ("The pre-queue shuffle"), independently of
# urr_verify, so the verifier checks this code rather than sharing it.

_TWO_64 = 1 << 64


def roster_leaf_hash(member: bytes) -> bytes:
    """RFC 9162 leaf hash: ``SHA-256(0x00 || member)``."""
    return hashlib.sha256(b"\x00" + member).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _subtree_root(hashes: list[bytes]) -> bytes:
    """MTH over leaf hashes (RFC 9162 2.1.1): split at the largest power of two below n."""
    level = hashes
    # Bottom-up pairing gives the same tree: an odd node at a level's end is carried up
    # unchanged, exactly where the recursive definition places the smaller right subtree.
    while len(level) > 1:
        paired = [_node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def roster_root(members: list[bytes]) -> bytes:
    """The Merkle root of the roster (each member one leaf, join order); empty: SHA-256("")."""
    if not members:
        return hashlib.sha256(b"").digest()
    return _subtree_root([roster_leaf_hash(member) for member in members])


def roster_inclusion_proof(members: list[bytes], index: int) -> list[bytes]:
    """The RFC 9162 inclusion proof (2.1.3.1) of ``members[index]`` in the roster's tree."""
    hashes = [roster_leaf_hash(member) for member in members]
    proof: list[bytes] = []
    low, high = 0, len(hashes)
    while high - low > 1:
        split = 1
        while split * 2 < high - low:
            split *= 2
        if index < low + split:
            proof.append(_subtree_root(hashes[low + split : high]))
            high = low + split
        else:
            proof.append(_subtree_root(hashes[low : low + split]))
            low += split
    proof.reverse()
    return proof


def shuffle_seed(secret: bytes, root: bytes) -> bytes:
    """``SHA-256(secret || rosterRoot)``."""
    return hashlib.sha256(secret + root).digest()


def _stream(seed: bytes) -> Iterator[int]:
    """Counter-mode SHA-256: block k = SHA-256(seed || k as 8 bytes big-endian), read as
    8-byte big-endian integers."""
    counter = 0
    while True:
        block = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        for offset in (0, 8, 16, 24):
            yield int.from_bytes(block[offset : offset + 8], "big")
        counter += 1


def shuffle(items: list[T], seed: bytes) -> list[T]:
    """Fisher-Yates from the last position down, ``j`` uniform in ``[0, i]`` by rejection."""
    order = list(items)
    draws = _stream(seed)
    for i in range(len(order) - 1, 0, -1):
        span = i + 1
        # Draws at or above the largest multiple of span below 2^64 would favour low j.
        ceiling = _TWO_64 - _TWO_64 % span
        draw = next(draws)
        while draw >= ceiling:
            draw = next(draws)
        j = draw % span
        order[i], order[j] = order[j], order[i]
    return order


def prequeue_order(members: list[bytes], secret: bytes) -> tuple[bytes, list[bytes]]:
    """``(rosterRoot, members in admission order)`` for a frozen roster and revealed secret."""
    root = roster_root(members)
    return root, shuffle(members, shuffle_seed(secret, root))
