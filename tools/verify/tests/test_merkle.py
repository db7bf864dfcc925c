"""The verifier's Merkle code against published root vectors and an independent tree."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from urr_verify.merkle import (
    EMPTY_ROOT,
    ProofError,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from urr_verify.reference import mth, path, proof

# The leaf inputs and root hashes of the transparency-dev/merkle test data (RFC 6962 hashing):
# facts to check against, for trees of 0 to 8 leaves.
LEAVE_HEX = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657"]
LEAVES = [bytes.fromhex(h) for h in [*LEAVE_HEX, "606162636465666768696a6b6c6d6e6f"]]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def _data(n: int) -> list[bytes]:
    return [f"leaf-{i}".encode() for i in range(n)]


@pytest.mark.parametrize("size", range(len(ROOTS)))
def test_roots_match_the_published_vectors(size: int) -> None:
    leaves = [leaf_hash(data) for data in LEAVES[:size]]
    assert root_of(leaves).hex() == ROOTS[size]
    assert mth(LEAVES[:size]).hex() == ROOTS[size]
    assert EMPTY_ROOT.hex() == ROOTS[0]


@pytest.mark.parametrize("size", range(1, 34))
def test_every_inclusion_proof_of_the_reference_tree_verifies(size: int) -> None:
    data = _data(size)
    root = mth(data)
    assert root_of([leaf_hash(d) for d in data]) == root
    for index in range(size):
        verify_inclusion(leaf_hash(data[index]), index, size, path(index, data), root)


@pytest.mark.parametrize("size2", range(1, 34))
def test_every_consistency_proof_of_the_reference_tree_verifies(size2: int) -> None:
    data = _data(size2)
    for size1 in range(size2 + 1):
        made = proof(size1, data) if 0 < size1 < size2 else []
        verify_consistency(size1, size2, made, mth(data[:size1]), mth(data))


def _flip(item: bytes) -> bytes:
    return bytes([item[0] ^ 1]) + item[1:]


@given(st.integers(2, 70), st.data())
def test_tampered_inclusion_proofs_fail(size: int, draw: st.DataObject) -> None:
    data = _data(size)
    root = mth(data)
    index = draw.draw(st.integers(0, size - 1))
    good = path(index, data)
    leaf = leaf_hash(data[index])
    changed = draw.draw(st.integers(0, len(good) - 1))
    bad_proofs = [
        [*good[:changed], _flip(good[changed]), *good[changed + 1 :]],
        good[:-1],
        [*good, good[-1]],
    ]
    for bad in bad_proofs:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, bad, root)
    with pytest.raises(ProofError):
        verify_inclusion(_flip(leaf), index, size, good, root)
    other = draw.draw(st.integers(0, size - 1).filter(lambda i: i != index))
    with pytest.raises(ProofError):
        verify_inclusion(leaf, other, size, good, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size, good, _flip(root))


@given(st.integers(3, 70), st.data())
def test_tampered_consistency_proofs_fail(size2: int, draw: st.DataObject) -> None:
    data = _data(size2)
    size1 = draw.draw(st.integers(1, size2 - 1))
    root1, root2 = mth(data[:size1]), mth(data)
    good = proof(size1, data)
    verify_consistency(size1, size2, good, root1, root2)
    changed = draw.draw(st.integers(0, len(good) - 1))
    for bad in (
        [*good[:changed], _flip(good[changed]), *good[changed + 1 :]],
        good[:-1],
        [*good, good[0]],
    ):
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, bad, root1, root2)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, good, _flip(root1), root2)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, good, root1, _flip(root2))
    # A rewritten entry inside the old tree: the new root no longer extends the old one.
    rewritten = [*data[: size1 - 1], b"rewritten", *data[size1:]]
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, proof(size1, rewritten), root1, mth(rewritten))


@pytest.mark.parametrize(("index", "size"), [(-1, 4), (4, 4), (0, 0), (10**18, 5)])
def test_indexes_outside_the_tree_are_refused(index: int, size: int) -> None:
    with pytest.raises(ProofError, match="outside"):
        verify_inclusion(leaf_hash(b"x"), index, size, [], EMPTY_ROOT)


def test_malformed_hashes_and_sizes_are_refused_with_a_reason() -> None:
    with pytest.raises(ProofError, match="proof element 0 is 3 bytes"):
        verify_inclusion(leaf_hash(b"x"), 0, 2, [b"abc"], EMPTY_ROOT)
    with pytest.raises(ProofError, match="no consistency"):
        verify_consistency(5, 4, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ProofError, match="is empty"):
        verify_consistency(2, 4, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ProofError, match="takes an empty proof"):
        verify_consistency(0, 4, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ProofError, match="different roots"):
        verify_consistency(3, 3, [], EMPTY_ROOT, leaf_hash(b"x"))
