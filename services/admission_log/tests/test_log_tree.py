"""Range arithmetic of the stored tree against RFC 6962's recursive definitions."""

from __future__ import annotations

import pytest

from urr_admission_log.tree import (
    Range,
    as_node,
    completed_by_append,
    consistency_ranges,
    inclusion_ranges,
    nodes_of,
)
from urr_verify import reference
from urr_verify.merkle import leaf_hash, node_hash


def _data(n: int) -> list[bytes]:
    return [f"admission-{i}".encode() for i in range(n)]


def _stored(data: list[bytes]) -> dict[tuple[int, int], bytes]:
    """Every node ``completed_by_append`` names, hashed as the store would."""
    hashes: dict[tuple[int, int], bytes] = {}
    for size in range(1, len(data) + 1):
        completed = completed_by_append(size)
        hashes[completed[0]] = leaf_hash(data[size - 1])
        for level, index in completed[1:]:
            hashes[(level, index)] = node_hash(
                hashes[(level - 1, 2 * index)], hashes[(level - 1, 2 * index + 1)]
            )
    return hashes


def _hash(leaves: Range, hashes: dict[tuple[int, int], bytes]) -> bytes:
    nodes = nodes_of(leaves)
    result = hashes[nodes[-1]]
    for node in reversed(nodes[:-1]):
        result = node_hash(hashes[node], result)
    return result


@pytest.mark.parametrize("size", range(1, 40))
def test_roots_and_proofs_from_stored_nodes_equal_the_reference(size: int) -> None:
    data = _data(size)
    hashes = _stored(data)
    assert _hash(Range(0, size), hashes) == reference.mth(data)
    for index in range(size):
        got = [_hash(r, hashes) for r in inclusion_ranges(index, size)]
        assert got == reference.path(index, data)
    for old in range(1, size):
        got = [_hash(r, hashes) for r in consistency_ranges(old, size)]
        assert got == reference.proof(old, data)
    assert consistency_ranges(size, size) == []


def test_a_node_is_only_an_aligned_power_of_two() -> None:
    assert as_node(Range(4, 8)) == (2, 1)
    assert as_node(Range(2, 6)) is None
    assert as_node(Range(0, 3)) is None
    assert nodes_of(Range(0, 7)) == [(2, 0), (1, 2), (0, 6)]


def test_appends_complete_the_nodes_a_binary_counter_carries() -> None:
    assert completed_by_append(1) == [(0, 0)]
    assert completed_by_append(8) == [(0, 7), (1, 3), (2, 1), (3, 0)]
    assert completed_by_append(6) == [(0, 5), (1, 2)]


@pytest.mark.parametrize(
    "call",
    [
        lambda: inclusion_ranges(5, 5),
        lambda: inclusion_ranges(-1, 5),
        lambda: consistency_ranges(0, 5),
        lambda: consistency_ranges(6, 5),
        lambda: Range(3, 3),
        lambda: completed_by_append(0),
    ],
)
def test_impossible_requests_are_refused(call: object) -> None:
    with pytest.raises(ValueError, match=r"outside|no consistency|not a range|completes no"):
        call()  # type: ignore[operator]


def test_a_million_leaf_proof_needs_only_log_n_nodes() -> None:
    size = 1_000_000
    ranges = inclusion_ranges(123_456, size)
    assert len(ranges) == 20
    assert sum(len(nodes_of(r)) for r in ranges) < 40
