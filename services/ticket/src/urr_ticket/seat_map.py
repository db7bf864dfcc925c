"""The seat map, ``GET /api/v1/seats/{eventId}``: the ticket service's busiest route in a crowd
(every admitted arrival reads it once; 4,996 of ~5,500 requests in the flash crowd).

A map shows every seat of the event with its fixed attributes (id, row, number, price) and
its state: ``sold`` (a confirmed reservation claims it), ``held`` (a reservation awaiting
payment claims it, or someone holds it in Redis) or ``free``, and ``heldByYou`` for a held
seat the caller holds. The fixed attributes change only with the catalogue, which PostgreSQL
versions (``booking_events.seats_version``, a new random version on every change to the
event's seats, by a trigger; migration ``003_seats_version``). So each process keeps an
event's catalogue in memory with the version it was read at, each seat's JSON object encoded
once per state, and per request reads only:

- one row from PostgreSQL: the version and the claimed seats, as of one statement; a version
  other than the kept one makes it read the whole map again in one statement (the catalogue,
  its version and the claims together, as the map was read before the cache), so a map is
  never built from a catalogue other than the one the claims were read with;
- one MGET of the holds of the seats not sold (a sold seat's hold changes nothing: it shows
  ``sold``, never held by you), none when every seat is sold.

The answer is byte for byte what ``orjson.dumps`` of the per-seat dictionaries gave: each
seat's four objects are that encoding, joined in the catalogue's order.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass

import orjson

from urr_ticket import keys
from urr_ticket.seat_locks import SeatLocks
from urr_ticket.store import BookingStore, SeatClaims, SeatRow

#: Events whose catalogue a process keeps (least recently shown dropped first).
MAX_EVENTS = 64

_FREE, _HELD, _HELD_BY_YOU, _SOLD = range(4)


@dataclass(frozen=True)
class SeatCatalog:
    """An event's seats as of one catalogue version, ready to be shown."""

    version: uuid.UUID
    seat_ids: tuple[str, ...]
    #: Each seat's hold key in Redis (``keys.seat_lock``), in the same order, encoded once
    #: (redis-py sends bytes as they are).
    lock_keys: tuple[bytes, ...]
    #: Each seat's JSON object when free, held by another, held by you, sold.
    objects: tuple[tuple[bytes, bytes, bytes, bytes], ...]

    @classmethod
    def of(cls, event_id: str, version: uuid.UUID, seats: list[SeatRow]) -> SeatCatalog:
        objects = []
        for seat in seats:
            fixed = {
                "seatId": seat.seat_id,
                "row": seat.row_label,
                "number": seat.seat_number,
                "priceCents": seat.price_cents,
            }
            objects.append(
                (
                    orjson.dumps({**fixed, "state": "free", "heldByYou": False}),
                    orjson.dumps({**fixed, "state": "held", "heldByYou": False}),
                    orjson.dumps({**fixed, "state": "held", "heldByYou": True}),
                    orjson.dumps({**fixed, "state": "sold", "heldByYou": False}),
                )
            )
        return cls(
            version=version,
            seat_ids=tuple(seat.seat_id for seat in seats),
            lock_keys=tuple(keys.seat_lock(event_id, seat.seat_id).encode() for seat in seats),
            objects=tuple(objects),
        )


def _claims_of(version: uuid.UUID, seats: list[SeatRow]) -> SeatClaims:
    sold = frozenset(s.seat_id for s in seats if s.claim_status == "confirmed")
    claimed = frozenset(
        s.seat_id for s in seats if s.claim_status is not None and s.seat_id not in sold
    )
    return SeatClaims(version, sold, claimed)


class SeatMaps:
    """Builds seat maps; keeps the catalogues of the events it showed last."""

    def __init__(
        self, store: BookingStore, locks: SeatLocks, *, max_events: int = MAX_EVENTS
    ) -> None:
        self._store = store
        self._locks = locks
        self._max_events = max_events
        self._catalogs: OrderedDict[str, SeatCatalog] = OrderedDict()

    async def render(self, event_id: str, caller: str | None) -> bytes | None:
        """The map's JSON for ``caller`` (None: anonymous); None when there is no such event."""
        catalog = self._catalogs.get(event_id)
        claims = None
        if catalog is not None:
            claims = await self._store.seat_claims(event_id)
            if claims is None:
                self._catalogs.pop(event_id, None)
                return None
        if catalog is None or claims is None or claims.seats_version != catalog.version:
            read = await self._store.seat_catalog(event_id)
            if read is None:
                self._catalogs.pop(event_id, None)
                return None
            version, seats = read
            catalog = SeatCatalog.of(event_id, version, seats)
            claims = _claims_of(version, seats)
            self._keep(event_id, catalog)
        elif event_id in self._catalogs:  # (another call may have dropped it meanwhile)
            self._catalogs.move_to_end(event_id)
        return await self._answer(event_id, catalog, claims, caller)

    def _keep(self, event_id: str, catalog: SeatCatalog) -> None:
        self._catalogs[event_id] = catalog
        self._catalogs.move_to_end(event_id)
        while len(self._catalogs) > self._max_events:
            self._catalogs.popitem(last=False)

    async def _answer(
        self, event_id: str, catalog: SeatCatalog, claims: SeatClaims, caller: str | None
    ) -> bytes:
        sold = claims.sold
        if sold:
            asked = [
                (seat_id, key)
                for seat_id, key in zip(catalog.seat_ids, catalog.lock_keys, strict=True)
                if seat_id not in sold
            ]
            owners = await self._locks.hold_owners([key for _, key in asked])
            holds = {
                seat_id: owner
                for (seat_id, _), owner in zip(asked, owners, strict=True)
                if owner is not None
            }
        else:
            owners = await self._locks.hold_owners(catalog.lock_keys)
            holds = {
                seat_id: owner
                for seat_id, owner in zip(catalog.seat_ids, owners, strict=True)
                if owner is not None
            }
        you = caller.encode() if caller else None
        claimed = claims.claimed
        parts = []
        for seat_id, objects in zip(catalog.seat_ids, catalog.objects, strict=True):
            if seat_id in sold:
                parts.append(objects[_SOLD])
                continue
            owner = holds.get(seat_id)
            if owner is not None:
                parts.append(objects[_HELD_BY_YOU if owner == you else _HELD])
            else:
                parts.append(objects[_HELD if seat_id in claimed else _FREE])
        return b"".join(
            (b'{"eventId":', orjson.dumps(event_id), b',"seats":[', b",".join(parts), b"]}")
        )
