"""The crowd's acceptance checks as plain functions: each must be able to fail."""

from __future__ import annotations

from typing import Any

from urr_loadtests import checks

SEATS: dict[str, Any] = {"reservations_by_status": {}, "seats_sold_twice": []}


def _arrival(n: int) -> dict[str, Any]:
    return {
        "user_id": f"u{n}",
        "outcome": "sold_out",
        "statuses": {"POST /api/v1/queue/{id}/enter 201": 1},
        "tier1_position": n,
        "tier2_position": n,
        "tier2_admitted_at": 100.0 + n,
        "first_ticket_call": 100.0 + n,
        "last_ticket_ok": 100.5 + n,
        "detail": "",
    }


def test_the_capacity_check_needs_a_reading_of_the_queue() -> None:
    """No sample with the queue's admitted count (the sampler refused, say) is a miss, not a
    pass: the capacity check would otherwise hold on nothing."""
    arrivals = [_arrival(n) for n in range(1, 4)]
    rank = {a["user_id"]: float(a["tier1_position"]) for a in arrivals}
    unread = [{"t": 1.0}, {"t": 1.5, "tier1_waiting": 3, "served": 0}]
    _, missed = checks.summarise_crowd(arrivals, SEATS, unread, 10, rank)
    assert any("never read" in m for m in missed), missed

    read = [*unread, {"t": 2.0, "tier2_waiting": 1, "tier2_admitted": 2}]
    figures, missed = checks.summarise_crowd(arrivals, SEATS, read, 10, rank)
    assert missed == [], missed
    assert figures["max_admitted_sampled"] == 2

    over = [*read, {"t": 2.5, "tier2_waiting": 0, "tier2_admitted": 11}]
    _, missed = checks.summarise_crowd(arrivals, SEATS, over, 10, rank)
    assert any("> capacity 10" in m for m in missed), missed
