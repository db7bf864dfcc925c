"""Which stored subtree hashes a log needs: appends, roots and proofs as ranges of leaves.

The store keeps the hash of every *complete, aligned* subtree: node ``(level, index)`` covers
leaves ``[index * 2**level, (index + 1) * 2**level)``. Any range RFC 6962's definitions ask
for (``MTH(D[a:b])``) is either such a node or splits, at the largest power of two below its
length, into a node on the left and a smaller range on the right; so every root and proof is
a fold over O(log n) stored nodes. This module only names ranges and nodes; hashing and
storage are elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

Node = tuple[int, int]  # (level, index)


@dataclass(frozen=True, slots=True)
class Range:
    """Leaves ``[start, end)`` of the log."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"not a range of leaves: [{self.start}, {self.end})")


def _split(length: int) -> int:
    """The largest power of two strictly below ``length`` (RFC 6962's k)."""
    return 1 << ((length - 1).bit_length() - 1)


def as_node(leaves: Range) -> Node | None:
    """The stored node covering exactly these leaves, if there is one."""
    length = leaves.end - leaves.start
    if length & (length - 1) or leaves.start % length:
        return None
    level = length.bit_length() - 1
    return (level, leaves.start >> level)


def nodes_of(leaves: Range) -> list[Node]:
    """The stored nodes whose fold (right to left) is MTH of the range, left to right."""
    found: list[Node] = []
    start, end = leaves.start, leaves.end
    while True:
        node = as_node(Range(start, end))
        if node is not None:
            found.append(node)
            return found
        k = _split(end - start)
        left = as_node(Range(start, start + k))
        if left is None:
            raise ValueError(f"range [{start}, {end}) does not start on a subtree boundary")
        found.append(left)
        start += k


def completed_by_append(size: int) -> list[Node]:
    """Nodes that become complete when leaf ``size - 1`` is appended, lowest level first."""
    if size < 1:
        raise ValueError("a log of size 0 completes no node")
    nodes = []
    index, level = size - 1, 0
    nodes.append((0, index))
    while index & 1:
        index >>= 1
        level += 1
        nodes.append((level, index))
    return nodes


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """RFC 6962's PATH(index, D[0:size]) as the ranges whose hashes it lists, in order."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is outside a log of size {size}")
    found: list[Range] = []
    start, end, m = 0, size, index
    while end - start > 1:
        k = _split(end - start)
        if m < k:
            found.append(Range(start + k, end))
            end = start + k
        else:
            found.append(Range(start, start + k))
            start, m = start + k, m - k
    found.reverse()
    return found


def consistency_ranges(old: int, new: int) -> list[Range]:
    """RFC 6962's PROOF(old, D[0:new]) as the ranges whose hashes it lists, in order."""
    if not 0 < old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")
    found: list[Range] = []
    start, end, m, whole = 0, new, old, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            found.append(Range(start + k, end))
            end = start + k
        else:
            found.append(Range(start, start + k))
            start, m, whole = start + k, m - k, False
    if not whole:
        found.append(Range(start, end))
    found.reverse()
    return found
