"""Redis keys of the ticket service. Each carries its event as a Cluster hash tag, so all keys
of one event (and a multi-seat MGET or release) live in one slot."""

from __future__ import annotations


def seat_lock(event_id: str, seat_id: str) -> str:
    """The hold on one seat: ``seat-lock:{eventId}:{seatId}``, value ``"<owner> <holdId>"``."""
    return f"seat-lock:{{{event_id}}}:{seat_id}"
