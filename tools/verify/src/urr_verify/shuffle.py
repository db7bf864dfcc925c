"""The pre-queue's verifiable shuffle: commit, freeze, reveal, then a deterministic order.

Published before the pre-queue opens: ``commitment = SHA-256(secret)``. At sale start the
roster (salted, hashed ids in join order) is frozen and its Merkle root published (RFC 9162
leaf hashing of each id's bytes), then the secret is revealed. The order is then fixed by data
anyone holds:

- ``seed = SHA-256(secret || rosterRoot)`` (both as raw bytes);
- a counter-mode stream: block ``k`` is ``SHA-256(seed || k)`` with ``k`` an 8-byte big-endian
  counter from 0, read as consecutive 8-byte big-endian unsigned integers;
- Fisher-Yates from the last position down: for ``i`` from ``n-1`` to ``1`` draw ``j`` uniform
  in ``[0, i]`` by rejection (discard draws at or above the largest multiple of ``i+1`` below
  2^64, so no position is favoured) and swap positions ``i`` and ``j``.

The operator cannot choose the secret after seeing the roster (the commitment binds it) and
cannot reorder the roster after seeing the secret (the root binds the roster), so neither
side alone decides the order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import TypeVar

from urr_verify.merkle import leaf_hash, root_of

T = TypeVar("T")

_TWO_64 = 1 << 64


def commitment(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def roster_root(member_ids: Sequence[bytes]) -> bytes:
    """Merkle root of the roster, each member's hashed id one leaf, in join order."""
    return root_of([leaf_hash(member) for member in member_ids])


def shuffle_seed(secret: bytes, root: bytes) -> bytes:
    return hashlib.sha256(secret + root).digest()


def _draws(seed: bytes) -> Iterator[int]:
    counter = 0
    while True:
        block = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        for offset in range(0, 32, 8):
            yield int.from_bytes(block[offset : offset + 8], "big")
        counter += 1


def shuffled(items: Sequence[T], seed: bytes) -> list[T]:
    """``items`` in the order the seed fixes (Fisher-Yates, unbiased draws)."""
    order = list(items)
    draws = _draws(seed)
    for i in range(len(order) - 1, 0, -1):
        bound = i + 1
        limit = _TWO_64 - _TWO_64 % bound
        draw = next(draws)
        while draw >= limit:
            draw = next(draws)
        j = draw % bound
        order[i], order[j] = order[j], order[i]
    return order


class ShuffleError(ValueError):
    """Published pre-queue data does not fit together; the message says which part."""


def verify_prequeue(
    member_ids: Sequence[bytes],
    published_root: bytes,
    published_commitment: bytes,
    revealed_secret: bytes,
) -> list[bytes]:
    """Check the published parts against each other and return the order they fix."""
    if commitment(revealed_secret) != published_commitment:
        raise ShuffleError("the revealed secret does not match the commitment published before")
    if roster_root(member_ids) != published_root:
        raise ShuffleError("the roster does not hash to the published root")
    return shuffled(member_ids, shuffle_seed(revealed_secret, published_root))
