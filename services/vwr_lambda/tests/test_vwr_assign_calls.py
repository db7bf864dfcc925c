"""The anonymous assign without a read (issue 22): what it sends to DynamoDB (dynalite), and
that every answer the read used to decide is still the same.

A first anonymous assign takes its number (``UpdateItem`` returning the event) and writes its
place and line item (two ``PutItem``); it reads nothing. Whatever the event would refuse goes
to the full path, which reads and answers as before, with the number already taken.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from urr_vwr_lambda.settings import VwrSettings

pytestmark = pytest.mark.integration


def record_calls(vwr: Any) -> list[str]:
    """The DynamoDB operations the handler's client sends from now on, in order."""
    sent: list[str] = []

    def heard(model: Any, **_: Any) -> None:
        sent.append(model.name)

    vwr.runtime.dynamodb.meta.events.register("before-call.dynamodb", heard)
    return sent


@pytest.fixture
def warm_vwr(vwr_settings: VwrSettings, make_vwr: Callable[[VwrSettings], Any]) -> Any:
    """A container whose copies of the event and its gate settings outlive the test, so the
    only calls left are the assign's own."""
    settings = vwr_settings.model_copy(
        update={
            "poll": vwr_settings.poll.model_copy(update={"counters_cache_s": 10.0}),
            "gates": vwr_settings.gates.model_copy(update={"config_cache_s": 60.0}),
        }
    )
    return make_vwr(settings)


def open_uncapped(vwr: Any) -> None:
    """An open event without the per-address cap (as the load test's): no gate I/O."""
    opened = vwr.admin("PUT", "evt-1", {"isActive": True, "batchSize": 100, "placesPerClient": 0})
    assert opened.status in (200, 201), opened.body


def test_a_first_anonymous_assign_reads_nothing(warm_vwr: Any) -> None:
    open_uncapped(warm_vwr)
    assert warm_vwr.assign("evt-1").status == 201  # builds the clients, fills the copies
    sent = record_calls(warm_vwr)
    placed = warm_vwr.assign("evt-1")
    assert (placed.status, placed.body["position"], placed.body["ahead"]) == (201, 2, 1)
    assert sorted(sent) == ["PutItem", "PutItem", "UpdateItem"]
    assert sent[0] == "UpdateItem"  # the number first: the place needs it


def test_a_repeat_is_found_by_its_refused_put_and_keeps_its_place(
    warm_vwr: Any,
) -> None:
    open_uncapped(warm_vwr)
    first = str(uuid.uuid4())
    assert warm_vwr.assign("evt-1", first).body["position"] == 1
    sent = record_calls(warm_vwr)
    again = warm_vwr.assign("evt-1", first)
    assert (again.status, again.body["position"], again.body["requestId"]) == (200, 1, first)
    # The refused put, then the place that refused it is read.
    assert sorted(sent) == ["GetItem", "PutItem", "PutItem", "UpdateItem"]
    # The repeat's number stays unused: the line item written beside the refused put names a
    # request whose place holds another number, which the advancer's walk skips.
    runtime = warm_vwr.runtime
    state = runtime.store.get_event("evt-1", consistent=True)
    assert state is not None
    assert state.next_position == 2
    rows = list(runtime.store.places_above(state, upto=2, now_s=runtime.now_s()))
    assert [(row.request_id, row.position) for row in rows] == [(first, 1)]


def test_a_repeat_in_a_room_turned_off_keeps_its_place_and_a_newcomer_goes_in(
    vwr: Any,
) -> None:
    vwr.open_event("evt-1")
    first = str(uuid.uuid4())
    assert vwr.assign("evt-1", first).status == 201
    vwr.open_event("evt-1", active=False)
    again = vwr.assign("evt-1", first)
    assert (again.status, again.body["position"]) == (200, 1)
    newcomer = vwr.assign("evt-1")
    assert (newcomer.status, newcomer.body["code"]) == (409, "room_inactive")
    # The number's condition refused both: no number was taken.
    assert vwr.status("evt-1").body["nextPosition"] == 1


def test_a_closed_event_answers_a_repeat_and_refuses_a_newcomer_with_one_number_each(
    vwr: Any,
) -> None:
    vwr.open_event("evt-1")
    first = str(uuid.uuid4())
    assert vwr.assign("evt-1", first).status == 201
    closed = vwr.admin(
        "PUT", "evt-1", {"isActive": True, "batchSize": 100, "queueMethod": "reject"}
    )
    assert closed.status == 200, closed.body
    again = vwr.assign("evt-1", first)
    assert (again.status, again.body["position"]) == (200, 1)
    newcomer = vwr.assign("evt-1")
    assert (newcomer.status, newcomer.body["code"]) == (409, "event_closed")
    # Each went on to the full path with the number it had taken, never a second one.
    assert vwr.status("evt-1").body["nextPosition"] == 3


def give_up(vwr: Any, event_id: str, request_id: str) -> None:
    """Mark a place abandoned, as the advancer does when its checks stop."""
    vwr.runtime.dynamodb.update_item(
        TableName=vwr.settings.tables.positions,
        Key={"eventId": {"S": event_id}, "requestId": {"S": request_id}},
        UpdateExpression="SET abandoned = :true",
        ExpressionAttributeValues={":true": {"BOOL": True}},
    )


def test_an_abandoned_place_is_replaced_by_a_new_number(vwr: Any) -> None:
    vwr.open_event("evt-1")
    first = str(uuid.uuid4())
    assert vwr.assign("evt-1", first).status == 201
    give_up(vwr, "evt-1", first)
    again = vwr.assign("evt-1", first)
    assert (again.status, again.body["position"]) == (201, 2)
    assert vwr.check("evt-1", first).body["position"] == 2


def test_a_number_taken_refreshes_the_containers_copy_of_the_event(warm_vwr: Any) -> None:
    """The number's write answers the whole event as it now is: the container keeps that as
    its copy, so a check after an assign sees the counter the write saw, not an older copy."""
    warm_vwr.open_event("evt-1")
    waiter = str(uuid.uuid4())
    assert warm_vwr.assign("evt-1", waiter).status == 201
    assert warm_vwr.check("evt-1", waiter).body["admitted"] is False
    store = warm_vwr.runtime.store
    state = store.get_event("evt-1", consistent=True)
    store.advance_to(state, serving_counter=1, admit_rate=None, now_ms=warm_vwr.runtime.now_ms())
    # The copy is up to counters_cache_s (10 s here) old: the advance is not seen yet.
    assert warm_vwr.check("evt-1", waiter).body["admitted"] is False
    assert warm_vwr.assign("evt-1").status == 201
    assert warm_vwr.check("evt-1", waiter).body["admitted"] is True


# -- logged in: the claim's conditional put stands in for the read -------------------------


def bearer(vwr: Any, user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {vwr.user_token(user_id)}"}


def line_rows(vwr: Any, event_id: str) -> list[tuple[str, int]]:
    runtime = vwr.runtime
    state = runtime.store.get_event(event_id, consistent=True)
    assert state is not None
    rows = runtime.store.places_above(state, upto=state.next_position, now_s=runtime.now_s())
    return [(row.request_id, row.position) for row in rows]


def test_a_first_logged_in_assign_reads_nothing(warm_vwr: Any) -> None:
    """As the flash crowd's arrivals assign: the number, then the claim (conditional on no
    current claim) beside the line item, then the place. Four calls; the BatchGetItem of the
    event, the place and the claim is gone."""
    open_uncapped(warm_vwr)
    assert warm_vwr.assign("evt-1", **bearer(warm_vwr, "u-0")).status == 201  # warm
    sent = record_calls(warm_vwr)
    tab = str(uuid.uuid4())
    placed = warm_vwr.assign("evt-1", tab, **bearer(warm_vwr, "u-1"))
    assert (placed.status, placed.body["position"], placed.body["ahead"]) == (201, 2, 1)
    assert sorted(sent) == ["PutItem", "PutItem", "PutItem", "UpdateItem"]
    assert sent[0] == "UpdateItem"
    claim = warm_vwr.runtime.store.get_claim("evt-1", "u-1")
    assert (claim.owner_request_id, claim.position) == (tab, 2)
    place = warm_vwr.runtime.store.get_place("evt-1", tab)
    assert (place.user_id, place.position) == ("u-1", 2)  # the admission's token names the user
    assert line_rows(warm_vwr, "evt-1")[-1] == (tab, 2)


def test_a_second_tab_meets_the_claim_and_gets_the_first_tabs_place(warm_vwr: Any) -> None:
    """Attack on one place per user: the second tab's claim put is refused, the full path
    reads the claim and answers the first tab's place; its number stays unused and its line
    item names a request without a place, which the advancer skips."""
    open_uncapped(warm_vwr)
    tab1, tab2 = str(uuid.uuid4()), str(uuid.uuid4())
    assert warm_vwr.assign("evt-1", tab1, **bearer(warm_vwr, "u-7")).status == 201
    sent = record_calls(warm_vwr)
    second = warm_vwr.assign("evt-1", tab2, **bearer(warm_vwr, "u-7"))
    assert (second.status, second.body["requestId"], second.body["position"]) == (200, tab1, 1)
    assert "BatchGetItem" in sent  # the refused claim sent it to the read
    assert warm_vwr.runtime.store.get_place("evt-1", tab2) is None
    assert warm_vwr.runtime.store.get_claim("evt-1", "u-7").owner_request_id == tab1
    assert line_rows(warm_vwr, "evt-1") == [(tab1, 1)]
    # The same tab again, and a third tab by cookie: still the one place.
    assert warm_vwr.assign("evt-1", tab1, **bearer(warm_vwr, "u-7")).body["position"] == 1
    cookie = {"Cookie": f"access_token={warm_vwr.user_token('u-7')}"}
    assert warm_vwr.assign("evt-1", str(uuid.uuid4()), **cookie).body["requestId"] == tab1
    assert line_rows(warm_vwr, "evt-1") == [(tab1, 1)]


def test_a_claim_of_an_earlier_run_or_a_given_up_place_is_taken_over(warm_vwr: Any) -> None:
    """A claim that is no longer current does not hold the user back: after a reset the
    claim put replaces it at once; after the place was given up the full path finds the
    stale owner and takes the claim over, as before."""
    open_uncapped(warm_vwr)
    old = str(uuid.uuid4())
    assert warm_vwr.assign("evt-1", old, **bearer(warm_vwr, "u-3")).status == 201
    warm_vwr.admin("POST", "evt-1/reset", {})
    sent = record_calls(warm_vwr)
    fresh = str(uuid.uuid4())
    again = warm_vwr.assign("evt-1", fresh, **bearer(warm_vwr, "u-3"))
    assert (again.status, again.body["requestId"], again.body["position"]) == (201, fresh, 1)
    assert "BatchGetItem" not in sent
    give_up(warm_vwr, "evt-1", fresh)
    third = str(uuid.uuid4())
    taken = warm_vwr.assign("evt-1", third, **bearer(warm_vwr, "u-3"))
    assert (taken.status, taken.body["requestId"], taken.body["position"]) == (201, third, 2)
    assert warm_vwr.runtime.store.get_claim("evt-1", "u-3").owner_request_id == third


def test_a_logged_in_repeat_keeps_its_place_in_a_room_turned_off_or_closed(vwr: Any) -> None:
    vwr.open_event("evt-1")
    first = str(uuid.uuid4())
    assert vwr.assign("evt-1", first, **bearer(vwr, "u-5")).status == 201
    again = vwr.assign("evt-1", first, **bearer(vwr, "u-5"))
    assert (again.status, again.body["position"]) == (200, 1)
    vwr.open_event("evt-1", active=False)
    assert vwr.assign("evt-1", first, **bearer(vwr, "u-5")).body["position"] == 1
    refused = vwr.assign("evt-1", **bearer(vwr, "u-6"))
    assert (refused.status, refused.body["code"]) == (409, "room_inactive")
    assert vwr.status("evt-1").body["nextPosition"] == 2


def test_a_logged_in_number_refreshes_the_containers_copy_of_the_event(warm_vwr: Any) -> None:
    """A logged-in assign keeps the event its number's write answered as the container's copy
    too (the read path kept none), so the checks after it need no counters read."""
    open_uncapped(warm_vwr)
    waiter = str(uuid.uuid4())
    assert warm_vwr.assign("evt-1", waiter, **bearer(warm_vwr, "u-1")).status == 201
    store = warm_vwr.runtime.store
    state = store.get_event("evt-1", consistent=True)
    store.advance_to(state, serving_counter=1, admit_rate=None, now_ms=warm_vwr.runtime.now_ms())
    assert warm_vwr.check("evt-1", waiter).body["admitted"] is False  # the copy, 10 s at most
    assert warm_vwr.assign("evt-1", **bearer(warm_vwr, "u-2")).status == 201
    sent = record_calls(warm_vwr)
    assert warm_vwr.check("evt-1", waiter).body["admitted"] is True
    assert sent == ["UpdateItem"]  # the admission's write alone: no counters read
