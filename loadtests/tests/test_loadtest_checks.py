"""The crowd's acceptance checks as plain functions: each must be able to fail."""

from __future__ import annotations

from typing import Any

import pytest

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


def test_a_crowd_that_started_slower_than_asked_is_a_missed_target() -> None:
    # 400 arrivals at 50/s, then 100 that could only start at 25/s (a generator out of users).
    kept = [{"started_at": 1000.0 + i / 50} for i in range(400)]
    late = [{"started_at": 1008.0 + i / 25} for i in range(1, 101)]
    figures, missed = checks.arrival_rate_figures(kept + late, 50.0)
    assert figures["achieved_per_s"] == pytest.approx(41.6, abs=0.2)
    assert figures["slowest_tenth_per_s"] == pytest.approx(25.0, abs=0.6)
    assert len(missed) == 1, missed
    assert "50/s" in missed[0]

    figures, missed = checks.arrival_rate_figures(kept, 50.0)
    assert missed == []
    assert figures["achieved_per_s"] == pytest.approx(50.0, abs=0.2)
    # Too few to time (a tiny run) says so instead of judging.
    figures, missed = checks.arrival_rate_figures(kept[:5], 50.0)
    assert missed == []
    assert figures["arrivals_timed"] == 5


def test_the_crowds_pool_grows_with_its_rate() -> None:
    from urr_loadtests.__main__ import crowd_pool

    assert crowd_pool(5000, 16.0) == 1500
    assert crowd_pool(5000, 50.0) == 3000
    assert crowd_pool(800, 50.0) == 800
