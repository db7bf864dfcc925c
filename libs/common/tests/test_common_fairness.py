"""The services' fairness code against urr-verify's: the same roots, proofs, shuffles.

The two are written apart on purpose (urr-verify must not trust service code), so these
tests are what holds them to one definition.
"""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from urr_common import fairness
from urr_verify import merkle
from urr_verify import shuffle as reference


def _members(count: int, rng: random.Random) -> list[bytes]:
    return [rng.randbytes(20) for _ in range(count)]


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 33, 100, 1000])
def test_roster_root_and_shuffle_match_urr_verify(count: int) -> None:
    rng = random.Random(count)
    members = _members(count, rng)
    secret = rng.randbytes(32)
    root, order = fairness.prequeue_order(members, secret)
    assert root == reference.roster_root(members)
    assert order == reference.verify_prequeue(members, root, reference.commitment(secret), secret)


@pytest.mark.parametrize("count", [1, 2, 3, 6, 13, 64, 65])
def test_every_members_inclusion_proof_verifies(count: int) -> None:
    members = _members(count, random.Random(count))
    root = fairness.roster_root(members)
    for index, member in enumerate(members):
        proof = fairness.roster_inclusion_proof(members, index)
        merkle.verify_inclusion(merkle.leaf_hash(member), index, count, proof, root)


def test_a_wrong_proof_fails_verification() -> None:
    members = _members(10, random.Random(1))
    proof = fairness.roster_inclusion_proof(members, 3)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(
            merkle.leaf_hash(members[4]), 3, 10, proof, fairness.roster_root(members)
        )


def test_the_shuffle_is_unbiased_enough_over_small_rosters() -> None:
    # Each of 3 members lands first about a third of the time over many seeds.
    firsts = [0, 0, 0]
    for seed in range(3000):
        order = fairness.shuffle([0, 1, 2], hashlib.sha256(seed.to_bytes(4, "big")).digest())
        firsts[order[0]] += 1
    assert all(800 < count < 1200 for count in firsts), firsts


def test_the_order_key_is_the_hmacs_first_52_bits() -> None:
    seed, arrival = bytes(range(32)), "7f1c2b6e-1d2a-4c0e-9a55-3b1f0c9d2e11"
    digest = hmac.new(seed, arrival.encode(), hashlib.sha1).digest()
    assert fairness.order_key(seed, arrival) == int.from_bytes(digest[:8], "big") >> 12
    assert fairness.order_key(seed, arrival) < 2**52
    assert fairness.random_order(seed, ["b", "a"]) == sorted(
        ["b", "a"], key=lambda arrival: fairness.order_key(seed, arrival)
    )


def test_hex64_and_commitment() -> None:
    assert fairness.is_hex64("ab" * 32)
    assert not fairness.is_hex64("AB" * 32)
    assert not fairness.is_hex64("ab" * 31)
    assert not fairness.is_hex64(None)
    assert fairness.seed_commitment(b"x") == hashlib.sha256(b"x").hexdigest()
