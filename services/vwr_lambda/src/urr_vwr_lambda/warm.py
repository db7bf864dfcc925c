"""What a warm container remembers between invocations, to spare DynamoDB the waiting crowd.

A waiter checks every few seconds; most checks change nothing. Two facts make most of them
answerable without a read:

- a place's number, epoch, owner and expiry never change once written (only ``lastSeen``,
  ``abandoned`` and the admission token do, and each of those is written with a condition
  that still catches a stale copy here);
- the counters item is already read eventually consistently, so a copy a second old is no
  weaker a promise.

A container runs one invocation at a time (powertools' resolver requires it), so nothing here
is locked. Both caches are bounded: the place cache forgets its oldest entries first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from urr_vwr_lambda.store import EventState, Place


@dataclass
class EventCache:
    """Counters items for ``ttl_s`` seconds (``clock`` is monotonic seconds)."""

    ttl_s: float
    clock: Callable[[], float]
    _items: dict[str, tuple[float, EventState]] = field(default_factory=dict)

    def get(self, event_id: str) -> EventState | None:
        cached = self._items.get(event_id)
        if cached is None or self.clock() - cached[0] >= self.ttl_s:
            return None
        return cached[1]

    def put(self, state: EventState) -> None:
        if self.ttl_s > 0:
            self._items[state.event_id] = (self.clock(), state)

    def forget(self, event_id: str) -> None:
        self._items.pop(event_id, None)


@dataclass
class PlaceCache:
    """Places by ``(event, request id)``, at most ``size`` of them (least recently used go)."""

    size: int
    _items: OrderedDict[tuple[str, str], Place] = field(default_factory=OrderedDict)

    def get(self, event_id: str, request_id: str) -> Place | None:
        key = (event_id, request_id)
        place = self._items.get(key)
        if place is not None:
            self._items.move_to_end(key)
        return place

    def put(self, place: Place) -> None:
        if self.size <= 0 or place.abandoned:
            return
        key = (place.event_id, place.request_id)
        self._items[key] = place
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def forget(self, event_id: str, request_id: str) -> None:
        self._items.pop((event_id, request_id), None)

    def __len__(self) -> int:
        return len(self._items)
