"""Seat holds in Redis: one key per seat with the holder and a TTL, plus per-user indexes of
the user's live holds and their start times, all changed atomically in Lua on Redis's clock.

The rules (issue 15): a user holds at most the event's ``maxSeatsPerUser`` seats, counting
seats already in their reservations; a hold ends at the earlier of its first start in the
session + ``holdSeconds`` and the end of the user's Tier-2 session; holding again, also after
releasing, never extends it; every hold is released when the session ends.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from urr_common.resp import RespLane
from urr_ticket import keys


class SeatLocksUnavailable(Exception):
    """Redis could not be reached, or did not answer in time.

    The outcome of a change is then unknown (a hold sent before a reply timed out may have
    been taken); asking again finds it out, since holding a seat you hold answers your hold.
    """


@contextmanager
def _redis_answers() -> Iterator[None]:
    # ``OSError`` too: a socket error outside redis-py's own wrapping (a reset mid-read).
    try:
        yield
    except (RedisError, OSError) as exc:
        raise SeatLocksUnavailable(f"seat holds unavailable: {exc!r}") from exc


@dataclass(frozen=True)
class Hold:
    owner: str
    hold_id: str


class HoldOutcome(enum.IntEnum):
    """What ``hold_seat.lua`` answered (its first return value)."""

    HELD = 1
    TAKEN = 0
    LIMIT_REACHED = -1
    SESSION_OVER = -2
    HOLD_TIME_USED = -3


@dataclass(frozen=True)
class HoldLimits:
    """The event's rules for one hold and what the user has already."""

    hold_seconds: int
    max_seats_per_user: int
    #: End of the user's Tier-2 session (ms since the epoch); None when unknown.
    session_end_ms: int | None = None
    #: Seats the user has in live reservations (they count towards the cap).
    reserved_seat_ids: Sequence[str] = ()


@dataclass(frozen=True)
class HoldAttempt:
    outcome: HoldOutcome
    #: The caller's hold id when held.
    hold_id: str
    #: When the hold (the caller's or the other holder's) ends, ms since the epoch; the
    #: session end for ``SESSION_OVER``; 0 for ``LIMIT_REACHED``.
    expires_at_ms: int
    #: The user's seats counted against the cap (0 when the cap was not consulted).
    seats_counted: int = 0

    @property
    def held(self) -> bool:
        return self.outcome is HoldOutcome.HELD


def parse_hold(value: bytes | str | None) -> Hold | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    owner, _, hold_id = text.partition(" ")
    return Hold(owner=owner, hold_id=hold_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


class SeatLocks:
    """``lane_timeout_s``: the hold script and the hold reads (``hold``, ``holders``,
    ``hold_owners``: every hold, reservation and seat map) go over one pipelined connection
    of ``redis`` (``urr_common.resp.RespLane``, that timeout its ``socket_timeout``, as the
    queue's store does) instead of through redis-py's commands, whose checkout, encoding and
    hooks cost the booking burst more client CPU than the rest of the Redis work; a single
    Redis only (a cluster client keeps redis-py). Releases stay on redis-py."""

    def __init__(self, redis: Any, *, lane_timeout_s: float | None = None) -> None:
        self._redis = redis
        package = files("urr_ticket")
        self._hold = redis.register_script((package / "hold_seat.lua").read_text("utf-8"))
        self._release = redis.register_script((package / "release_seats.lua").read_text("utf-8"))
        self._lane = (
            RespLane(redis, timeout_s=lane_timeout_s)
            if lane_timeout_s is not None and not isinstance(redis, RedisCluster)
            else None
        )

    async def aclose(self) -> None:
        """Give back the lane's connection (closing the client closes it too)."""
        if self._lane is not None:
            await self._lane.aclose()

    async def hold(
        self, event_id: str, seat_id: str, owner: str, limits: HoldLimits
    ) -> HoldAttempt:
        reserved = sorted(set(limits.reserved_seat_ids))
        hold_keys = [
            keys.seat_lock(event_id, seat_id),
            keys.user_holds(event_id, owner),
            keys.hold_starts(event_id, owner),
        ]
        args: list[Any] = [
            owner,
            uuid.uuid4().hex,
            limits.hold_seconds * 1000,
            limits.session_end_ms or 0,
            limits.max_seats_per_user,
            seat_id,
            *reserved,
        ]
        lane = self._lane
        with _redis_answers():
            if lane is None:
                reply = await self._hold(keys=hold_keys, args=args)
            else:
                try:
                    reply = await lane.call(
                        lane.command("EVALSHA", self._hold.sha, len(hold_keys), *hold_keys, *args)
                    )
                except NoScriptError:
                    # Redis lost its scripts (a restart): redis-py's script object loads it.
                    reply = await self._hold(keys=hold_keys, args=args)
            code, hold_id, expires, counted = reply
        return HoldAttempt(
            outcome=HoldOutcome(int(code)),
            hold_id=_text(hold_id),
            expires_at_ms=int(expires),
            seats_counted=int(counted),
        )

    async def holders(self, event_id: str, seat_ids: Sequence[str]) -> dict[str, Hold]:
        """The current holds among ``seat_ids`` (one MGET: the keys share a slot)."""
        if not seat_ids:
            return {}
        values = await self._mget([keys.seat_lock(event_id, s) for s in seat_ids])
        found = {}
        for seat_id, value in zip(seat_ids, values, strict=True):
            hold = parse_hold(value)
            if hold is not None:
                found[seat_id] = hold
        return found

    async def hold_owners(self, lock_keys: Sequence[bytes | str]) -> list[bytes | None]:
        """The holder of each hold key in ``lock_keys`` (``keys.seat_lock``), None where the
        seat is not held (one MGET: the keys share a slot); as ``holders`` finds them, without
        the hold ids, for the seat map."""
        if not lock_keys:
            return []
        values = await self._mget(lock_keys)
        return [None if value is None else _bytes(value).partition(b" ")[0] for value in values]

    async def _mget(self, lock_keys: Sequence[bytes | str]) -> list[Any]:
        lane = self._lane
        with _redis_answers():
            if lane is None:
                values: list[Any] = await self._redis.mget(lock_keys)
            else:
                values = await lane.call(lane.command("MGET", *lock_keys))
        return values

    async def release(
        self,
        event_id: str,
        seat_ids: Sequence[str],
        owner: str,
        *,
        started_by_ms: int = 0,
    ) -> int:
        """Release ``owner``'s holds among ``seat_ids``; with ``started_by_ms``, only those
        first started at or before it. Returns how many were released."""
        if not seat_ids:
            return 0
        with _redis_answers():
            released = await self._release(
                keys=[
                    keys.user_holds(event_id, owner),
                    keys.hold_starts(event_id, owner),
                    *(keys.seat_lock(event_id, s) for s in seat_ids),
                ],
                args=[owner, started_by_ms, *seat_ids],
            )
        return int(released)

    async def release_all(self, event_id: str, owner: str, *, started_by_ms: int = 0) -> int:
        """Release every live hold of ``owner`` in the event (their session ended)."""
        with _redis_answers():
            members = await self._redis.zrange(keys.user_holds(event_id, owner), 0, -1)
        return await self.release(
            event_id, [_text(m) for m in members], owner, started_by_ms=started_by_ms
        )
