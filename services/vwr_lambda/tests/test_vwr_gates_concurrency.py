"""Concurrent uses of the gates at DynamoDB (dynalite, as in ``test_vwr_concurrency.py``):
a code usable N times, and one address racing for its slots.

The threads call ``guarded_assign`` around ``assign_place``, what the assign route runs: a
Lambda process runs one invocation at a time, so concurrency only ever meets at DynamoDB.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from urr_vwr_lambda.api import assign_place
from urr_vwr_lambda.gates.guard import guarded_assign
from urr_vwr_lambda.problem import VwrProblem

pytestmark = pytest.mark.integration

USES = 5
RACERS = 50


def racing_assign(vwr: Any, event_id: str, ip: str, body: dict[str, Any]) -> tuple[int, str]:
    request_id = str(uuid.uuid4())
    event = {"headers": {}, "requestContext": {"identity": {"sourceIp": ip}}}
    try:
        status, _, _ = guarded_assign(
            vwr.runtime.gates,
            event,
            event_id,
            request_id,
            None,
            body,
            lambda: assign_place(vwr.runtime, event_id, request_id, None),
            now_s=vwr.runtime.now_s(),
        )
    except VwrProblem as problem:
        return problem.status, problem.code
    return status, "placed"


@pytest.mark.timeout(180)
def test_50_concurrent_assigns_with_a_code_usable_5_times_place_exactly_5(vwr: Any) -> None:
    vwr.open_event("rush")
    vwr.admin("PUT", "rush", {"isActive": True, "accessCodeRequired": True})
    batch = vwr.admin("POST", "rush/access-codes", {"count": 1, "uses": USES}).body
    code = batch["codes"][0]["code"]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(
            pool.map(
                lambda n: racing_assign(vwr, "rush", f"10.1.0.{n}", {"accessCode": code}),
                range(RACERS),
            )
        )
    placed = [a for a in answers if a == (201, "placed")]
    refused = [a for a in answers if a != (201, "placed")]
    assert len(placed) == USES
    assert set(refused) == {(403, "access_code_exhausted")}
    assert vwr.status("rush").body["nextPosition"] == USES
    usage = vwr.admin("GET", f"rush/access-codes/{batch['batchId']}").body
    assert (usage["used"], usage["codesExhausted"]) == (USES, 1)


@pytest.mark.timeout(180)
def test_one_address_racing_for_places_gets_its_cap(vwr: Any) -> None:
    vwr.open_event("race")
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(
            pool.map(lambda _: racing_assign(vwr, "race", "198.51.100.7", {}), range(RACERS))
        )
    assert answers.count((201, "placed")) == 2
    assert {a for a in answers if a[0] != 201} <= {(429, "too_many_places"), (429, "client_busy")}
    assert vwr.status("race").body["nextPosition"] == 2
