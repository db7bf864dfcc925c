"""A short warm-up crowd on an event of its own, between the stack's banner and the crowd.

Why: on a stack that has just started, every route of a 20/s crowd was slow for its first
~35 s (docs/performance.md, "Flash crowd hops"), and the first 100 admitted buyers book in
exactly that window, so a fresh stack failed the canary gate on the reservation route that a
stack up for a minute passed. A real sale opens on a site that has been serving for a while.
The warm-up plays the same journey (edge page, Tier 1, Tier 2, seat map, hold, reserve,
outcome, leave) through every route the crowd uses, at a lower rate, for a bounded time, on
its own event (own seats, own Tier-1 room, own Tier-2 queue, own admission log entries), with
its own users. Its requests are Locust's of a separate run whose files go to ``warmup/``
beside the crowd's: none of them is in the crowd's figures, targets or checks.

What it does not do: it does not make a cold stack fast; it gives the stack's processes their
first calls, connections and pool sizes before the measured crowd, as a running site has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from urr_loadtests.report import RouteStats

MODES = ("auto", "always", "never")
#: Seconds of warm-up arrivals by default; the slow window on a fresh stack was ~35 s long,
#: most of it before the stack had answered its first few hundred journeys.
DEFAULT_SECONDS = 30.0
#: The warm-up's rate is this share of the crowd's (pools grow to the concurrency they see),
#: never below ``MIN_RATE``: enough that every process gets calls at once, not one by one.
RATE_SHARE = 0.5
MIN_RATE = 2.0
#: Seconds after the last warm-up arrival for the ones in flight to finish (admission at the
#: event's rate, booking, outcome); Locust stops earlier once every arrival has its outcome.
TAIL_S = 60


@dataclass(frozen=True)
class Plan:
    """How many warm-up arrivals, how fast, and the bound on the whole warm-up's time."""

    arrivals: int
    rate: float
    run_time_s: int


def wanted(mode: str, *, started_stack: bool) -> bool:
    """``auto``: only when this runner started the stack (a running one has been serving)."""
    if mode not in MODES:
        raise ValueError(f"warm-up mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode == "always" or (mode == "auto" and started_stack)


def plan(crowd_rate: float, *, seconds: float, rate: float | None = None) -> Plan:
    """The warm-up's shape for a crowd of ``crowd_rate`` arrivals a second."""
    if seconds <= 0:
        raise ValueError("the warm-up needs a positive number of seconds")
    chosen = rate if rate is not None else max(MIN_RATE, crowd_rate * RATE_SHARE)
    if chosen <= 0:
        raise ValueError("the warm-up's rate must be positive")
    arrivals = max(1, math.ceil(chosen * seconds))
    return Plan(arrivals, chosen, math.ceil(arrivals / chosen) + TAIL_S)


def warm_event_id(crowd_event_id: str) -> str:
    """The warm-up's own event: never the crowd's, recognisable beside it."""
    return f"{crowd_event_id}-warm"


def summarise(
    event_id: str,
    chosen: Plan,
    arrivals: list[dict[str, Any]],
    stats: list[RouteStats],
    seconds: float,
    locust_exit_code: int,
) -> dict[str, Any]:
    """What the warm-up did, for ``summary.json`` (information only: never a target)."""
    outcomes: dict[str, int] = {}
    for arrival in arrivals:
        outcome = str(arrival.get("outcome", "unanswered"))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    routes = [s for s in stats if s.name != "Aggregated"]
    aggregated = next((s for s in stats if s.name == "Aggregated"), None)
    return {
        "event_id": event_id,
        "arrivals_planned": chosen.arrivals,
        "arrivals_finished": len(arrivals),
        "rate": chosen.rate,
        "seconds": round(seconds, 1),
        "locust_exit_code": locust_exit_code,
        "outcomes": outcomes,
        "requests": aggregated.requests if aggregated else 0,
        "failures": aggregated.failures if aggregated else 0,
        "p95_ms": aggregated.p95_ms if aggregated else None,
        # Where the warm-up itself was slow: what a crowd started at once would have met.
        "routes_over_300ms_p95": {s.name: s.p95_ms for s in routes if s.p95_ms > 300},
    }
