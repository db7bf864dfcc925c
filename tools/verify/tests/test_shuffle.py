"""The pre-queue shuffle: a fixed, documented, unbiased permutation of the frozen roster."""

from __future__ import annotations

import collections
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from urr_verify.shuffle import (
    ShuffleError,
    commitment,
    roster_root,
    shuffle_seed,
    shuffled,
    verify_prequeue,
)

SECRET = bytes(range(32))


def _members(n: int) -> list[bytes]:
    return [hashlib.sha256(f"member-{i}".encode()).digest() for i in range(n)]


@given(
    st.lists(st.binary(min_size=1, max_size=8), max_size=60), st.binary(min_size=32, max_size=32)
)
def test_the_shuffle_is_a_deterministic_permutation(items: list[bytes], seed: bytes) -> None:
    once = shuffled(items, seed)
    assert sorted(once) == sorted(items)
    assert shuffled(items, seed) == once


def test_the_order_is_pinned_so_any_implementation_can_be_checked_against_it() -> None:
    # Written down once from this implementation of the documented algorithm; a change to
    # the algorithm (draw width, counter encoding, direction) changes this list.
    assert shuffled(list(range(10)), hashlib.sha256(b"urr").digest()) == PINNED


PINNED = [0, 2, 5, 4, 7, 8, 1, 3, 9, 6]


def test_each_position_is_about_equally_likely() -> None:
    # 6,000 seeds over three items: each of the 6 orders expected 1,000 times.
    counts = collections.Counter(
        tuple(shuffled("abc", hashlib.sha256(n.to_bytes(4, "big")).digest())) for n in range(6000)
    )
    assert len(counts) == 6
    assert all(850 < count < 1150 for count in counts.values()), counts


def test_published_parts_recompute_the_order() -> None:
    members = _members(50)
    root = roster_root(members)
    order = verify_prequeue(members, root, commitment(SECRET), SECRET)
    assert order == shuffled(members, shuffle_seed(SECRET, root))
    assert sorted(order) == sorted(members)


def test_a_secret_other_than_the_committed_one_is_refused() -> None:
    members = _members(5)
    with pytest.raises(ShuffleError, match="commitment"):
        verify_prequeue(members, roster_root(members), commitment(SECRET), b"another secret")


def test_a_roster_changed_after_the_root_was_published_is_refused() -> None:
    members = _members(5)
    root = roster_root(members)
    for changed in (
        members[:-1],
        [*members, _members(6)[5]],
        [members[1], members[0], *members[2:]],
    ):
        with pytest.raises(ShuffleError, match="root"):
            verify_prequeue(changed, root, commitment(SECRET), SECRET)
