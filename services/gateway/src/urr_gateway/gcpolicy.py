"""The garbage collector's settings for a serving gateway process.

A request allocates a few hundred container objects (futures, dicts, header maps), nearly all
freed by reference counting as soon as the answer is out. CPython's default first-generation
threshold (700 allocations) still runs a young collection every few requests, and each one
walks every object of the requests in flight (futures are traversed too): 5-7 % of the
gateway's CPU at 64 connections in a native py-spy profile (docs/performance.md, issue 17).

``settle`` runs once the application has started: one full collection, then ``gc.freeze()``
moves everything built at start-up (modules, settings, compiled routes, registries) out of
the collector's sight, so the rarer full collections no longer walk it; and a higher
first-generation threshold makes young collections rarer. Reference cycles are still
collected, only later: what waits is bounded by the threshold (a few MB at most).
"""

from __future__ import annotations

import gc

from pydantic import BaseModel, Field


class GcSettings(BaseModel):
    """``URR_GC__GEN0_THRESHOLD``: allocations between young collections (0 leaves the
    interpreter's own settings and does not freeze the start-up heap)."""

    gen0_threshold: int = Field(default=20_000, ge=0, le=1_000_000)


_settled = False


def settle(settings: GcSettings) -> None:
    """Freeze the start-up heap and raise the young-collection threshold: process-wide, so
    once per process (a test process starting many applications pays one collection)."""
    global _settled  # one switch per process, like the collector it tunes
    if settings.gen0_threshold == 0 or _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(settings.gen0_threshold, gen1, gen2)
