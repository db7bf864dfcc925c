"""Redis keys of the ticket service. Each carries its event as a Cluster hash tag, so all keys
of one event (and a multi-seat MGET or release) live in one slot."""

from __future__ import annotations


def seat_lock(event_id: str, seat_id: str) -> str:
    """The hold on one seat: ``seat-lock:{eventId}:{seatId}``, value ``"<owner> <holdId>"``."""
    return f"seat-lock:{{{event_id}}}:{seat_id}"


def user_holds(event_id: str, user_id: str) -> str:
    """The user's live holds in the event: a sorted set, seat id -> hold end (ms). Counts
    the holds against ``maxSeatsPerUser`` and finds them all when the session ends."""
    return f"seat-holds:{{{event_id}}}:{user_id}"


def hold_starts(event_id: str, user_id: str) -> str:
    """When the user first held each seat in this Tier-2 session: a hash, seat id ->
    ``"<startMs> <sessionEndMs>"``; holding a seat again never moves its start."""
    return f"hold-starts:{{{event_id}}}:{user_id}"
