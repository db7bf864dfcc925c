"""The flash crowd's acceptance checks: seats, answers, order, capacity, forged tokens."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from urr_loadtests.report import kendall_tau, max_overlap
from urr_loadtests.setup import http
from urr_loadtests.stack import Stack


def read_arrivals(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _seat_figures(dsn: str, event_id: str) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    try:
        by_status = {
            str(row[0]): int(row[1])
            for row in await connection.fetch(
                "SELECT status, count(*) FROM reservations WHERE event_id = $1 GROUP BY status",
                event_id,
            )
        }
        sold_twice = await connection.fetch(
            "SELECT seat, count(*) AS n FROM reservations, unnest(seat_ids) AS seat"
            " WHERE event_id = $1 AND status IN ('confirmed', 'pending', 'awaiting_payment')"
            " GROUP BY seat HAVING count(*) > 1",
            event_id,
        )
    finally:
        await connection.close()
    return {
        "reservations_by_status": by_status,
        "seats_sold_twice": [row["seat"] for row in sold_twice],
    }


def seat_figures(stack: Stack, event_id: str) -> dict[str, Any]:
    return asyncio.run(_seat_figures(stack.url("postgres"), event_id))


def forged_and_replayed(
    stack: Stack, event_id: str, arrivals: list[dict[str, Any]], spare: list[tuple[str, str]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Tokens signed by a stranger's key, and real tokens shown by someone else.

    ``spare`` are issued access tokens no arrival used. Every probe must be refused (4xx).
    """
    edge = stack.url("vwr-edge")
    stranger = ec.generate_private_key(ec.SECP256R1())
    pem = stranger.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    now = int(time.time())

    def forge(claims: dict[str, Any]) -> str:
        base = {"iat": now, "nbf": now, "exp": now + 600, "jti": uuid.uuid4().hex}
        return jwt.encode({**base, **claims}, pem, algorithm="ES256", headers={"kid": "local-1"})

    stranger_id = str(uuid.uuid4())
    forged_access = forge({"sub": stranger_id, "role": "admin", "iss": "urr-auth", "aud": "urr"})
    probes: list[tuple[str, str, str, dict[str, str]]] = [
        # A forged cookie is ignored (the caller is anonymous, the cookie cleared), so it is
        # probed where a login is needed: it must not log anyone in.
        (
            "forged access token cookie -> queue admin",
            "GET",
            f"/api/v1/admin/queue/{event_id}",
            {"cookie": f"access_token={forged_access}"},
        ),
        (
            "forged admin token -> queue admin",
            "GET",
            f"/api/v1/admin/queue/{event_id}",
            {"authorization": f"Bearer {forged_access}"},
        ),
    ]
    if len(spare) >= 4:
        (user_a, access_a), (_, access_b), (_, access_c), (_, access_d) = spare[:4]
        forged_entry = forge(
            {"sub": user_a, "evt": event_id, "iss": "urr-queue", "aud": "urr-entry"}
        )
        forged_vwr = forge(
            {
                "sub": str(uuid.uuid4()),
                "evt": event_id,
                "rid": str(uuid.uuid4()),
                "pos": 1,
                "iss": "urr-vwr",
                "aud": "urr-vwr",
            }
        )
        probes += [
            (
                "forged entry token -> seat map",
                "GET",
                f"/api/v1/seats/{event_id}",
                {"cookie": f"access_token={access_a}; urr-entry-token={forged_entry}"},
            ),
            (
                "forged Tier-1 token -> Tier-2 enter",
                "POST",
                f"/api/v1/queue/{event_id}/enter",
                # Sent as a same-site page would, so the gateway's CSRF check lets it reach
                # the defence it probes.
                {
                    "cookie": f"access_token={access_b}; urr-vwr-token={forged_vwr}",
                    "sec-fetch-site": "same-origin",
                },
            ),
        ]
        used = [a for a in arrivals if a.get("entry_token")]
        if used:
            probes.append(
                (
                    "replayed Tier-1 + entry tokens (another user's) -> seat map",
                    "GET",
                    f"/api/v1/seats/{event_id}",
                    {"cookie": _cookies(access_c, used[0])},
                )
            )
        tier1 = [a for a in arrivals if a.get("vwr_token")]
        if tier1:
            probes.append(
                (
                    "replayed Tier-1 token (another user's) -> Tier-2 enter",
                    "POST",
                    f"/api/v1/queue/{event_id}/enter",
                    {
                        "cookie": f"access_token={access_d}; urr-vwr-token={tier1[0]['vwr_token']}",
                        "sec-fetch-site": "same-origin",
                    },
                )
            )
    results, missed = [], []
    for label, method, path, headers in probes:
        try:
            status, body = http(method, f"{edge}{path}", headers=headers, timeout=30)
        except OSError as exc:
            status, body = 0, {"code": repr(exc)}
        results.append({"probe": label, "status": status, "code": _code(body)})
        if not 400 <= status < 500:
            missed.append(f"{label}: answered {status or 'nothing'}, not refused")
    return results, missed


def _cookies(access: str, victim: dict[str, Any]) -> str:
    """Someone's own access token with another arrival's Tier-1 and entry tokens."""
    return (
        f"access_token={access}; urr-vwr-token={victim.get('vwr_token', '')}; "
        f"urr-entry-token={victim['entry_token']}"
    )


def _code(body: Any) -> str:
    return str(body.get("code", "")) if isinstance(body, dict) else ""


def summarise_crowd(
    arrivals: list[dict[str, Any]],
    seats: dict[str, Any],
    samples: list[dict[str, float]],
    capacity: int,
    admission_rank: dict[str, float],
) -> tuple[dict[str, Any], list[str]]:
    """The crowd's figures and every acceptance check it failed."""
    missed: list[str] = []
    outcomes: dict[str, int] = {}
    for arrival in arrivals:
        outcome = arrival["outcome"]
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    unanswered = [a for a in arrivals if a["outcome"] == "unanswered"]
    server_errors = sum(
        count
        for a in arrivals
        for key, count in a["statuses"].items()
        if key.rsplit(" ", 1)[-1].startswith("5")
    )
    # Arrival order is the Tier-1 number; admission order is the queue's own (Kafka).
    pairs = [
        (float(a["tier1_position"]), admission_rank[a["user_id"]])
        for a in arrivals
        if a.get("tier1_position") is not None and a["user_id"] in admission_rank
    ]
    # Those who found a line at Tier 2: there the queue, not the clients' polling, sets order.
    waited = [
        pair
        for pair, a in zip(
            pairs,
            (
                a
                for a in arrivals
                if a.get("tier1_position") is not None and a["user_id"] in admission_rank
            ),
            strict=True,
        )
        if (a.get("tier2_position") or 0) > 1
    ]
    intervals = [
        (float(a["first_ticket_call"]), float(a["last_ticket_ok"]))
        for a in arrivals
        if a.get("first_ticket_call") and a.get("last_ticket_ok")
    ]
    admitted_max = max((s.get("tier2_admitted", 0) for s in samples), default=0)
    figures = {
        "arrivals": len(arrivals),
        "outcomes": outcomes,
        "unanswered_examples": [a["detail"] for a in unanswered[:5]],
        "server_errors_5xx": server_errors,
        "reservations_by_status": seats["reservations_by_status"],
        "seats_sold_twice": seats["seats_sold_twice"],
        "max_admitted_sampled": admitted_max,
        "max_concurrent_entry_token_holders_seen_by_ticket": max_overlap(intervals),
        "kendall_tau_arrival_vs_admission": round(kendall_tau(pairs), 4),
        "admissions_compared": len(pairs),
        "kendall_tau_among_tier2_waiters": round(kendall_tau(waited), 4),
        "tier2_waiters_compared": len(waited),
    }
    if seats["seats_sold_twice"]:
        missed.append(f"seats sold twice: {seats['seats_sold_twice']}")
    if any(a.get("tier2_admitted_at") for a in arrivals) and not any(
        "tier2_admitted" in sample for sample in samples
    ):
        # Without a reading the capacity check below would pass on nothing.
        missed.append("the queue's count of admitted sessions was never read (sampler errors)")
    if admitted_max > capacity:
        missed.append(f"queue reported {admitted_max} admitted at once > capacity {capacity}")
    if figures["max_concurrent_entry_token_holders_seen_by_ticket"] > capacity:
        missed.append("more entry-token holders at the ticket service at once than the capacity")
    if server_errors:
        missed.append(f"{server_errors} 5xx answers")
    if unanswered:
        missed.append(f"{len(unanswered)} arrivals got no clear answer")
    if pairs and figures["kendall_tau_arrival_vs_admission"] < 0.99:
        missed.append(
            f"admission order: Kendall's tau {figures['kendall_tau_arrival_vs_admission']} < 0.99"
        )
    if not pairs and any(a.get("tier2_admitted_at") for a in arrivals):
        missed.append("admission order: no admitted record read back from queue-events")
    return figures, missed


#: Share of the asked arrival rate a crowd must reach, start to end, to count as run at it.
RATE_KEPT = 0.95


def arrival_rate_figures(
    arrivals: list[dict[str, Any]], asked_per_s: float
) -> tuple[dict[str, Any], list[str]]:
    """The rate the arrivals really started at (first to last, and the slowest tenth), and a
    miss when it fell short of the asked one: a generator that could not keep up ran a
    smaller crowd than the report would otherwise claim."""
    started = sorted(float(a["started_at"]) for a in arrivals if a.get("started_at"))
    if len(started) < 20:
        return {"asked_per_s": asked_per_s, "arrivals_timed": len(started)}, []
    tenth = len(started) // 10
    slowest = min(
        tenth / (started[(k + 1) * tenth - 1] - started[k * tenth] or 1e-9) for k in range(10)
    )
    overall = (len(started) - 1) / (started[-1] - started[0] or 1e-9)
    figures = {
        "asked_per_s": asked_per_s,
        "arrivals_timed": len(started),
        "achieved_per_s": round(overall, 1),
        "slowest_tenth_per_s": round(slowest, 1),
    }
    missed = []
    if overall < RATE_KEPT * asked_per_s:
        missed.append(
            f"arrival rate: {overall:.1f}/s from first to last < {RATE_KEPT:.0%} of the "
            f"asked {asked_per_s:g}/s (slowest tenth {slowest:.1f}/s)"
        )
    return figures, missed


def pow_figures(arrivals: list[dict[str, Any]], bits: int) -> dict[str, Any]:
    """How the crowd fared with ``botChallenge: pow``: solves and their time per arrival."""
    placed = [a for a in arrivals if a.get("tier1_position") is not None]
    times = sorted(a["pow_solve_s"] for a in placed if a.get("pow_solves"))
    return {
        "bits": bits,
        "arrivals_placed": len(placed),
        "placed_with_a_solution": sum(1 for a in placed if a.get("pow_solves")),
        "solves": sum(int(a.get("pow_solves", 0)) for a in arrivals),
        "solve_s_median": round(statistics.median(times), 3) if times else None,
        "solve_s_p95": round(times[int(0.95 * (len(times) - 1))], 3) if times else None,
    }


def pow_missed(figures: dict[str, Any]) -> list[str]:
    """Every place of a pow event was taken with a solution (the gate held for the crowd)."""
    if figures["placed_with_a_solution"] != figures["arrivals_placed"]:
        return ["an arrival got a Tier-1 place without solving the proof of work"]
    return []
