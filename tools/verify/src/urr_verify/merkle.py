"""RFC 9162 Merkle tree hashing and proof verification (SHA-256, 0x00/0x01 prefixes).

Only what a verifier needs: leaf and node hashes, the root of a list of leaves, and the
verification algorithms of RFC 9162 sections 2.1.3.2 (inclusion) and 2.1.4.2 (consistency).
Proof *generation* lives with the log, written separately, so the two check each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof does not prove what it claims; the message says why."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of the leaves, iteratively (a whole event's log may hold millions)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    # A stack of (height, hash) of complete subtrees, merged like a binary counter; what is
    # left at the end folds right-to-left, which is exactly MTH's split at the largest power
    # of two below n.
    stack: list[tuple[int, bytes]] = []
    for leaf in leaf_hashes:
        height, node = 0, leaf
        while stack and stack[-1][0] == height:
            _, left = stack.pop()
            node = node_hash(left, node)
            height += 1
        stack.append((height, node))
    _, root = stack.pop()
    while stack:
        _, left = stack.pop()
        root = node_hash(left, root)
    return root


def _check_hashes(proof: Sequence[bytes], *named: tuple[str, bytes]) -> None:
    for position, item in enumerate(proof):
        if len(item) != HASH_SIZE:
            raise ProofError(f"proof element {position} is {len(item)} bytes, not {HASH_SIZE}")
    for name, value in named:
        if len(value) != HASH_SIZE:
            raise ProofError(f"{name} is {len(value)} bytes, not {HASH_SIZE}")


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root a valid inclusion proof leads to (RFC 9162 2.1.3.2), or ProofError."""
    if size < 1 or not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hashes(proof, ("leaf hash", leaf))
    fn, sn = index, size - 1
    result = leaf
    for sibling in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    return result


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless ``proof`` shows leaf hash ``leaf`` at ``index`` under ``root``."""
    if root_from_inclusion_proof(leaf, index, size, proof) != root:
        raise ProofError("the inclusion proof leads to another root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Raise ProofError unless the tree of ``size1`` is a prefix of the one of ``size2``."""
    if size1 < 0 or size2 < size1:
        raise ProofError(f"no consistency from size {size1} to size {size2}")
    _check_hashes(proof, ("first root", root1), ("second root", root2))
    if size1 in (0, size2):
        # Equal trees, or the empty tree (which every tree extends): RFC 9162 gives no proof.
        if proof:
            raise ProofError("this pair of sizes takes an empty proof")
        if size1 == size2 and root1 != root2:
            raise ProofError("equal sizes with different roots")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    # A first size that is a power of two is a complete subtree: its root starts the path.
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    first, second = _consistency_roots(size1 - 1, size2 - 1, path)
    if first != root1:
        raise ProofError("the consistency proof does not lead to the first root")
    if second != root2:
        raise ProofError("the consistency proof does not lead to the second root")


def _consistency_roots(fn: int, sn: int, path: Sequence[bytes]) -> tuple[bytes, bytes]:
    """RFC 9162 2.1.4.2's walk: the old and the new root the path leads to."""
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for item in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(item, fr)
            sr = node_hash(item, sr)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, item)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the tree is deep")
    return fr, sr
