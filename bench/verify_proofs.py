"""Proof verification cost in urr-verify, at log sizes up to 1,000,000 leaves.

    uv run python bench/verify_proofs.py [--sizes 1000,1000000] [--rounds 2000]

Verifying an inclusion proof costs log2(n) hashes; the baseline is one SHA-256 of a leaf, so
the ratio says how many hash-equivalents a verification costs. Building the tree's root of
1,000,000 leaves is printed too (what an auditor pays to recompute a whole event).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time

from urr_verify.merkle import leaf_hash, node_hash, root_of, verify_inclusion


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of a tree whose size is a power of two (proofs read straight off it)."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below), 2)])
    return levels


def _path(levels: list[list[bytes]], index: int) -> list[bytes]:
    """The inclusion proof of ``index``: its sibling on every level below the root."""
    return [levels[height][(index >> height) ^ 1] for height in range(len(levels) - 1)]


def _quantiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return (
        statistics.median(ordered),
        ordered[int(len(ordered) * 0.95)],
        ordered[int(len(ordered) * 0.99)],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1024,65536,1048576")
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'leaves':>10} {'what':<28} {'P50 µs':>8} {'P95 µs':>8} {'P99 µs':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        leaves = [leaf_hash(i.to_bytes(8, "big")) for i in range(size)]
        started = time.perf_counter()
        root = root_of(leaves)
        build_s = time.perf_counter() - started
        levels = _levels(leaves) if size & (size - 1) == 0 else None
        base, verify = [], []
        for round_ in range(args.rounds):
            index = (round_ * 7919) % size
            data = index.to_bytes(8, "big")
            t0 = time.perf_counter_ns()
            hashlib.sha256(b"\x00" + data).digest()
            t1 = time.perf_counter_ns()
            base.append((t1 - t0) / 1000)
            if levels is None:
                continue
            proof = _path(levels, index)
            t0 = time.perf_counter_ns()
            verify_inclusion(leaves[index], index, size, proof, root)
            verify.append((time.perf_counter_ns() - t0) / 1000)
        for what, samples in (("baseline: one SHA-256", base), ("verify inclusion", verify)):
            if samples:
                p50, p95, p99 = _quantiles(samples)
                print(f"{size:>10} {what:<28} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f}")
        print(f"{size:>10} {'root of all leaves':<28} {build_s * 1e3:>8.0f} ms")


if __name__ == "__main__":
    main()
