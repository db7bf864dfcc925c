"""Local stand-ins for API Gateway, CloudFront and EventBridge (started by ``make up``)."""

from __future__ import annotations

import gc

#: Allocations between young collections once a stand-in has started (CPython's default: 700).
GC_GEN0_THRESHOLD = 20_000


def settle_heap(gen0_threshold: int = GC_GEN0_THRESHOLD) -> None:
    """Keep the start-up heap out of every collection and collect the young less often.

    For the edge and API Gateway emulators, which exist only locally and proxy every request
    of a crowd: each request allocates a few hundred short-lived objects, so at the default
    threshold a young collection ran every few requests and every older one walked the
    imported modules too. ``gc.freeze()`` moves what exists now (modules, the app) to a
    generation no collection visits; a higher threshold makes young collections rarer, each
    finding mostly garbage. The gateway measured the same tuning (``tune_gc``) at 12-19 µs a
    request. Call once, after the app is built.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
