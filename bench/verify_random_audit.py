"""``urr-verify audit --seed``'s order check (the random method) on large synthetic logs.

A line is filled with 0-40 arrivals a step (keys HMAC-SHA1 of a fixed seed and the arrival's
id) and drained 20 admissions a step, smallest key first, as Tier 2 admits; the log of those
admissions is audited with ``urr_verify.random_order.audit_random`` (it must find nothing).

    uv run --frozen python bench/verify_random_audit.py [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import heapq
import random
import time
from typing import Any

from urr_verify.random_order import audit_random, order_key

SEED = bytes(range(32))


def line(n: int, rng: random.Random) -> list[dict[str, Any]]:
    waiting: list[tuple[int, int]] = []
    leaves: list[dict[str, Any]] = []
    arrived = 0
    while arrived < n or waiting:
        for _ in range(rng.randint(0, 40)):
            if arrived < n:
                arrived += 1
                heapq.heappush(waiting, (order_key(SEED, f"u{arrived}"), arrived))
        for _ in range(min(20, len(waiting))):
            key, ticket = heapq.heappop(waiting)
            leaves.append({"kind": "admit", "ticket": ticket, "key": key})
    return leaves


def main(args: argparse.Namespace) -> None:
    for n in (int(size) for size in args.sizes.split(",")):
        leaves = line(n, random.Random(1))
        started = time.perf_counter()
        report = audit_random(leaves)
        took = time.perf_counter() - started
        assert not report.exceptions
        print(f"{n:>9,} admissions audited in {took:.2f} s ({n / took:,.0f}/s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    main(parser.parse_args())
