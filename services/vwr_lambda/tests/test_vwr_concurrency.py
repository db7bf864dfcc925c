"""Concurrent assigns at DynamoDB (dynalite): the atomic counter and the conditional writes.

The threads call ``assign_place`` (what the assign route runs) directly: a Lambda process runs
one invocation at a time (powertools' resolver keeps the request in class attributes), so real
concurrency only ever meets at DynamoDB, which is what this exercises.

The tests run on dynalite, which serialises writes to an item as DynamoDB does (moto's own
server updates items from several threads without a lock, so its ``ADD`` would hand out a
duplicate number now and then; these tests used a moto behind one lock until dynalite became
the stand-in, docs/performance.md).

Each new assign costs three DynamoDB calls (BatchGetItem, UpdateItem, PutItem), so 1,000 assigns
are ~3,000 calls: a few seconds quiet, longer when the machine is shared (hence the timeout).
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from urr_vwr_lambda.api import assign_place

pytestmark = pytest.mark.integration

ASSIGNS = 1_000


@pytest.mark.timeout(240)
def test_1000_concurrent_assigns_get_1000_distinct_contiguous_places(vwr: Any) -> None:
    vwr.open_event("rush")
    request_ids = [str(uuid.uuid4()) for _ in range(ASSIGNS)]

    def assign(request_id: str) -> tuple[int, int]:
        status, place, _ = assign_place(vwr.runtime, "rush", request_id, None)
        return status, place.position

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(assign, request_ids))
    assert {status for status, _ in answers} == {201}, [a for a in answers if a[0] != 201][:5]
    assert sorted(position for _, position in answers) == list(range(1, ASSIGNS + 1))
    assert vwr.status("rush").body["nextPosition"] == ASSIGNS


def test_a_request_id_retried_concurrently_gets_one_place(vwr: Any) -> None:
    """Racing duplicates all see the same place; a number a loser took stays unused."""
    vwr.open_event("dup")
    request_id = str(uuid.uuid4())
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(
            pool.map(lambda _: assign_place(vwr.runtime, "dup", request_id, None), range(12))
        )
    assert {status for status, _, _ in answers} <= {200, 201}
    assert len({place.position for _, place, _ in answers}) == 1
    assert {place.request_id for _, place, _ in answers} == {request_id}
    # The advancer passes the unused numbers at no cost and admits the one real place.
    assert vwr.admin("POST", "dup/advance", {"by": 1}).body["admitted"] == 1
    assert vwr.check("dup", request_id).body["admitted"] is True


def test_one_user_racing_from_many_tabs_holds_one_place(vwr: Any) -> None:
    vwr.open_event("tabs")
    tabs = [str(uuid.uuid4()) for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda rid: assign_place(vwr.runtime, "tabs", rid, "u-42"), tabs))
    assert len({(place.request_id, place.position) for _, place, _ in answers}) == 1
    [(_, winner, _)] = [answer for answer in answers if answer[0] == 201]
    assert vwr.check("tabs", winner.request_id).status == 200


def test_handler_calls_from_threads_stay_correct(vwr: Any) -> None:
    """The handler serialises its own invocations; threads still get their own answers."""
    vwr.open_event("threads")
    events = [
        vwr.event("POST", "/vwr/assign/threads", {"requestId": str(uuid.uuid4())})
        for _ in range(40)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(vwr.call, events))
    assert [a.body["requestId"] for a in answers] == [e["body"].split('"')[3] for e in events]
    assert sorted(a.body["position"] for a in answers) == list(range(1, 41))


def test_a_tab_meeting_a_claim_whose_place_is_still_being_written_waits_for_it(vwr: Any) -> None:
    """The claim goes first, the place a moment later: a second tab reading in between used to
    take the claim over as if its owner had crashed, and the account held two places."""
    vwr.open_event("inflight")
    store = vwr.runtime.store
    first = str(uuid.uuid4())
    now_s = vwr.runtime.now_s()
    assert store._put_claim(
        "inflight", first, "u-9", position=1, epoch=1, now_s=now_s, stale_owner=None
    )

    def finish_first_tab() -> None:
        time.sleep(0.3)
        assert store.put_place(
            "inflight", first, position=1, epoch=1, user_id="u-9", now_s=now_s, stale_owner=first
        )

    writer = threading.Thread(target=finish_first_tab)
    writer.start()
    try:
        status, place, _ = assign_place(vwr.runtime, "inflight", str(uuid.uuid4()), "u-9")
    finally:
        writer.join()
    assert (status, place.request_id, place.position) == (200, first, 1)
