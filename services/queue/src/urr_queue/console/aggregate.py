"""Assembling the console's view: every source read at once, shared for ``cache_s``.

A source that fails (DynamoDB down, the booking database away) leaves its part empty and is
named in ``unavailable``; the rest of the view still arrives, because during an incident the
operator needs whatever can be shown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from urr_common.logs import get_logger
from urr_common.service import sleep_unless_stopped
from urr_queue.console.history import ConsoleHistory
from urr_queue.console.model import (
    EventView,
    SeatCounts,
    Tier1Row,
    Tier2Row,
    join_events,
    per_interval,
    refusals_total,
    series,
)
from urr_queue.console.settings import ConsoleSettings

_LOG = get_logger(__name__)
T = TypeVar("T")

SPARK_FIELDS = ("t1_waiting", "t1_serving", "t2_waiting", "t2_admitted", "t2_rate", "sold", "held")


class Source(Protocol[T]):
    async def read(self) -> dict[str, T]: ...


@dataclass
class Snapshot:
    events: list[EventView]
    refusals: dict[str, int]
    unavailable: list[str] = field(default_factory=list)


async def _guarded(name: str, read: Callable[[], Awaitable[T]], missing: list[str]) -> T | None:
    try:
        return await read()
    except Exception as exc:  # any failure of one source must not hide the others
        _LOG.warning("console_source_failed", source=name, error=f"{type(exc).__name__}: {exc}")
        missing.append(name)
        return None


class ConsoleAggregator:
    def __init__(
        self,
        settings: ConsoleSettings,
        history: ConsoleHistory,
        *,
        tier2: Source[Tier2Row],
        refusals: Any,
        tier1: Source[Tier1Row] | None = None,
        seats: Source[SeatCounts] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.history = history
        self._tier2 = tier2
        self._tier1 = tier1
        self._seats = seats
        self._refusals = refusals
        self._clock = clock
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def snapshot(self) -> Snapshot:
        missing: list[str] = []
        reads = [
            _guarded("tier2", self._tier2.read, missing),
            _guarded("tier1", self._tier1.read, missing) if self._tier1 else _none(),
            _guarded("seats", self._seats.read, missing) if self._seats else _none(),
            _guarded("rate_limit", self._refusals.read, missing),
        ]
        tier2, tier1, seats, refusals = await asyncio.gather(*reads)
        events = join_events(tier1 or {}, tier2 or {}, seats or {})
        return Snapshot(events=events, refusals=refusals or {}, unavailable=sorted(missing))

    def invalidate(self) -> None:
        self._cached = None

    async def view(self) -> dict[str, Any]:
        """The page's JSON; concurrent callers within ``cache_s`` share one read."""
        async with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self.settings.cache_s:
                return self._cached[1]
            body = await self._assemble()
            self._cached = (self._clock(), body)
            return body

    async def _assemble(self) -> dict[str, Any]:
        snap = await self.snapshot()
        ids = [event.event_id for event in snap.events]
        rings, refusal_ring = await self.history.read(ids)
        now_ms = await self.history.now_ms()
        events = []
        for event in snap.events:
            body = event.to_json()
            body["history"] = series(rings.get(event.event_id, []), SPARK_FIELDS)
            events.append(body)
        refused_series = series(refusal_ring, ("refused",))["refused"]
        return {
            "generated_at_ms": now_ms,
            "refresh_seconds": self.settings.refresh_s,
            "sample_interval_seconds": self.settings.sample_interval_s,
            "events": events,
            "rate_limit": {
                "refused_this_hour": refusals_total(snap.refusals),
                "by_policy": snap.refusals,
                "history": per_interval(refused_series),
            },
            "unavailable": snap.unavailable,
            "controls": {"waiting_room": bool(self.settings.tier1_admin_url)},
        }

    async def sample_once(self) -> bool:
        """Push one point of history, unless another replica has this period."""
        now_ms = await self.history.now_ms()
        period = int(now_ms // (self.settings.sample_interval_s * 1000))
        if not await self.history.claim_period(period):
            return False
        snap = await self.snapshot()
        samples = {event.event_id: event.sample() for event in snap.events}
        await self.history.push(samples, refusals_total(snap.refusals), now_ms)
        return True

    async def run_sampler(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sample_once()
            except Exception as exc:  # the sampler must outlive a Redis hiccup
                _LOG.warning("console_sample_failed", error=f"{type(exc).__name__}: {exc}")
            await sleep_unless_stopped(stop, self.settings.sample_interval_s)


async def _none() -> None:
    return None
