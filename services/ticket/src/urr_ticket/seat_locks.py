"""Seat holds in Redis: one key per seat with the holder and a TTL, set atomically in Lua."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from urr_ticket import keys


@dataclass(frozen=True)
class Hold:
    owner: str
    hold_id: str


@dataclass(frozen=True)
class HoldAttempt:
    held: bool
    #: The caller's hold id when ``held``.
    hold_id: str
    #: When the hold (the caller's or the other holder's) ends, ms since the epoch.
    expires_at_ms: int


def parse_hold(value: bytes | str | None) -> Hold | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    owner, _, hold_id = text.partition(" ")
    return Hold(owner=owner, hold_id=hold_id)


class SeatLocks:
    def __init__(self, redis: Any, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_ms = ttl_s * 1000
        package = files("urr_ticket")
        self._hold = redis.register_script((package / "hold_seat.lua").read_text("utf-8"))
        self._release = redis.register_script((package / "release_seats.lua").read_text("utf-8"))

    async def hold(self, event_id: str, seat_id: str, owner: str) -> HoldAttempt:
        key = keys.seat_lock(event_id, seat_id)
        held, hold_id, expires = await self._hold(
            keys=[key], args=[owner, uuid.uuid4().hex, self._ttl_ms]
        )
        hold_text = hold_id.decode() if isinstance(hold_id, bytes) else str(hold_id)
        return HoldAttempt(held=bool(held), hold_id=hold_text, expires_at_ms=int(expires))

    async def holders(self, event_id: str, seat_ids: Sequence[str]) -> dict[str, Hold]:
        """The current holds among ``seat_ids`` (one MGET: the keys share a slot)."""
        if not seat_ids:
            return {}
        values = await self._redis.mget([keys.seat_lock(event_id, s) for s in seat_ids])
        found = {}
        for seat_id, value in zip(seat_ids, values, strict=True):
            hold = parse_hold(value)
            if hold is not None:
                found[seat_id] = hold
        return found

    async def release(self, event_id: str, seat_ids: Sequence[str], owner: str) -> int:
        if not seat_ids:
            return 0
        released = await self._release(
            keys=[keys.seat_lock(event_id, s) for s in seat_ids], args=[owner]
        )
        return int(released)
