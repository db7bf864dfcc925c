"""The counter advancer and the admin routes against moto and a real capacity feed server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from urr_vwr_lambda import advancer
from urr_vwr_lambda.ids import line_key
from urr_vwr_lambda.store import StaleCounter

pytestmark = pytest.mark.integration


def fill(vwr: Any, event_id: str, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for request_id in ids:
        assert vwr.assign(event_id, request_id).status == 201
    return ids


def run_advancer(vwr: Any, event: Any = None) -> dict[str, Any]:
    return advancer.run(vwr.runtime, event if event is not None else {}, None)


def serving(vwr: Any, event_id: str) -> int:
    return int(vwr.status(event_id).body["servingCounter"])


def test_the_advancer_never_passes_next_position(vwr: Any, event_file: Any) -> None:
    vwr.open_event("evt-1", batch_size=100)
    fill(vwr, "evt-1", 3)
    result = run_advancer(vwr, event_file("eventbridge_scheduled.json"))
    [[outcome]] = result["cycles"]
    assert outcome["servingCounter"] == 3
    assert outcome["limitedBy"] == "queue_end"
    again = run_advancer(vwr)
    assert again["cycles"][0][0]["advanced"] == 0
    assert serving(vwr, "evt-1") == 3
    fill(vwr, "evt-1", 2)
    run_advancer(vwr)
    assert serving(vwr, "evt-1") == 5


def test_the_batch_limits_each_cycle(vwr: Any) -> None:
    vwr.open_event("evt-1", batch_size=4)
    fill(vwr, "evt-1", 10)
    result = run_advancer(vwr, {"steps": 2, "intervalSeconds": 0})
    assert [cycle[0]["servingCounter"] for cycle in result["cycles"]] == [4, 8]
    assert result["cycles"][0][0]["limitedBy"] == "requested"


def test_the_advancer_respects_tier2_capacity(vwr: Any) -> None:
    vwr.open_event("evt-1", batch_size=100)
    fill(vwr, "evt-1", 20)
    feed = vwr.capacity.for_event("evt-1")
    feed.capacity, feed.admitted, feed.waiting, feed.admit_per_second = 10, 7, 0, 0.2
    outcome = run_advancer(vwr)["cycles"][0][0]
    # 3 free slots now + 0.2/s x 10 s cleared before the next cycle - 0 already waiting.
    assert outcome["advanced"] == 5
    assert outcome["limitedBy"] == "capacity"
    assert outcome["capacity"]["capacity"] == 10
    assert feed.calls == 1
    feed.waiting = 5
    assert run_advancer(vwr)["cycles"][0][0]["advanced"] == 0
    assert serving(vwr, "evt-1") == 5


@pytest.mark.parametrize("failure", ["http_500", "unreachable"])
def test_no_capacity_feed_means_no_advance(vwr: Any, failure: str) -> None:
    vwr.open_event("evt-1", batch_size=100)
    fill(vwr, "evt-1", 5)
    if failure == "http_500":
        vwr.capacity.for_event("evt-1").status = 500
    else:
        object.__setattr__(vwr.runtime.settings.queue, "url", "http://127.0.0.1:9")
    outcome = run_advancer(vwr)["cycles"][0][0]
    assert outcome["advanced"] == 0
    assert outcome["limitedBy"] == "capacity_unavailable"
    admin = vwr.admin("POST", "evt-1/advance", {"by": 5})
    assert (admin.status, admin.body["code"]) == (503, "capacity_unavailable")
    assert serving(vwr, "evt-1") == 0


def test_abandoned_places_are_skipped_and_lose_their_place(vwr: Any) -> None:
    vwr.open_event("evt-1", batch_size=3)
    ids = fill(vwr, "evt-1", 6)
    vwr.clock.advance(vwr.settings.advancer.abandon_after_s + 10)
    for index in (0, 2, 4, 5):  # places 1, 3, 5, 6 keep checking; 2 and 4 went away
        assert vwr.check("evt-1", ids[index]).status == 200
    outcome = run_advancer(vwr)["cycles"][0][0]
    assert outcome["admitted"] == 3
    assert outcome["skippedAbandoned"] == 2
    assert outcome["servingCounter"] == 5
    assert vwr.check("evt-1", ids[4]).body["admitted"] is True
    gone = vwr.check("evt-1", ids[1])
    assert (gone.status, gone.body["code"]) == (410, "position_abandoned")
    back = vwr.assign("evt-1", ids[1])
    assert (back.status, back.body["position"]) == (201, 7)


def test_a_walk_past_more_abandoned_places_than_one_page_reads_on(vwr: Any) -> None:
    """Pages are sized to the cycle's budget, so skips spill into further pages."""
    vwr.open_event("evt-1", batch_size=2)
    ids = fill(vwr, "evt-1", advancer._PAGE_MARGIN + 10)
    vwr.clock.advance(vwr.settings.advancer.abandon_after_s + 10)
    live = ids[-3:]  # everyone before the last three went away
    for request_id in live:
        assert vwr.check("evt-1", request_id).status == 200
    reads: list[dict[str, Any]] = []
    vwr.runtime.dynamodb.meta.events.register(
        "provide-client-params.dynamodb.BatchGetItem", lambda params, **_: reads.append(params)
    )
    outcome = run_advancer(vwr)["cycles"][0][0]
    assert outcome["skippedAbandoned"] == len(ids) - 3
    assert outcome["admitted"] == 2
    assert outcome["servingCounter"] == len(ids) - 1
    # Two pages, each its line items and then their places; no Query, no Scan.
    keys = [len(read["RequestItems"][vwr.settings.tables.positions]["Keys"]) for read in reads]
    page = 2 + advancer._PAGE_MARGIN
    assert keys == [page, page, len(ids) - page, len(ids) - page]
    assert vwr.check("evt-1", live[0]).body["admitted"] is True
    assert vwr.check("evt-1", live[2]).body["admitted"] is False


def test_the_line_is_read_by_number_and_a_missing_line_item_is_passed(vwr: Any) -> None:
    """Each assign puts one line item; a number without a valid one is passed like a burnt
    number, and its waiter is admitted with the places around it."""
    vwr.open_event("evt-1", batch_size=2)
    ids = fill(vwr, "evt-1", 4)
    store, tables = vwr.runtime.store, vwr.settings.tables
    state = store.get_event("evt-1", consistent=True)
    rows = list(store.places_above(state, upto=4, now_s=vwr.runtime.now_s()))
    assert [row.request_id for row in rows] == ids
    assert [row.position for row in rows] == [1, 2, 3, 4]
    vwr.runtime.dynamodb.delete_item(
        TableName=tables.positions,
        Key={"eventId": {"S": "evt-1"}, "requestId": {"S": line_key(state.epoch, 2)}},
    )
    # A line item naming a request id whose place holds another number (a racing duplicate
    # lost its place write after its line write) is ignored too.
    store.put_line("evt-1", ids[0], position=3, epoch=state.epoch, now_s=vwr.runtime.now_s())
    outcome = run_advancer(vwr)["cycles"][0][0]
    assert (outcome["admitted"], outcome["servingCounter"]) == (2, 4)
    assert vwr.check("evt-1", ids[1]).body["admitted"] is True
    assert vwr.check("evt-1", ids[2]).body["admitted"] is True


def test_a_waiter_who_checks_in_before_the_mark_keeps_the_place(vwr: Any) -> None:
    vwr.open_event("evt-1", batch_size=1)
    ids = fill(vwr, "evt-1", 2)
    vwr.clock.advance(vwr.settings.advancer.abandon_after_s + 10)
    store = vwr.runtime.store
    state = store.get_event("evt-1", consistent=True)
    rows = list(store.places_above(state, upto=2, now_s=vwr.runtime.now_s()))
    vwr.check("evt-1", ids[0])  # comes back between the read and the mark
    cutoff = vwr.runtime.now_s() - vwr.settings.advancer.abandon_after_s
    assert store.mark_abandoned(state, rows[0], cutoff_s=cutoff) is False
    assert store.mark_abandoned(state, rows[1], cutoff_s=cutoff) is True


def test_only_registered_active_events_are_advanced_without_a_scan(vwr: Any) -> None:
    vwr.open_event("evt-a", batch_size=10)
    vwr.open_event("evt-b", batch_size=10)
    vwr.open_event("evt-c", batch_size=10)
    for event_id in ("evt-a", "evt-b", "evt-c"):
        fill(vwr, event_id, 2)
    vwr.open_event("evt-c", active=False)
    operations: list[str] = []
    client = vwr.runtime.dynamodb
    client.meta.events.register(
        "before-call.dynamodb.*", lambda model, **_: operations.append(model.name)
    )
    outcomes = run_advancer(vwr)["cycles"][0]
    assert sorted(o["eventId"] for o in outcomes) == ["evt-a", "evt-b"]
    assert "Scan" not in operations
    assert serving(vwr, "evt-c") == 0
    document = json.loads(Path(vwr.settings.edge_config.target).read_text())
    assert document["activeEvents"] == ["evt-a", "evt-b"]
    assert document["keys"]["keys"][0]["kid"] == "local-1"


def test_the_counter_is_compare_and_set(vwr: Any) -> None:
    vwr.open_event("evt-1")
    fill(vwr, "evt-1", 4)
    store = vwr.runtime.store
    state = store.get_event("evt-1", consistent=True)
    store.advance_to(state, serving_counter=2, admit_rate=None, now_ms=1)
    with pytest.raises(StaleCounter):
        store.advance_to(state, serving_counter=3, admit_rate=None, now_ms=2)
    fresh = store.get_event("evt-1", consistent=True)
    with pytest.raises(StaleCounter):  # never past nextPosition, even when asked directly
        store.advance_to(fresh, serving_counter=5, admit_rate=None, now_ms=3)
    assert serving(vwr, "evt-1") == 2


def test_admin_advance_uses_the_same_limits(vwr: Any) -> None:
    vwr.open_event("evt-1", batch_size=1)
    fill(vwr, "evt-1", 4)
    vwr.capacity.for_event("evt-1").capacity = 3
    answer = vwr.admin("POST", "evt-1/advance", {"by": 10})
    assert answer.status == 200
    assert answer.body["advanced"] == 3
    assert answer.body["limitedBy"] == "capacity"
    vwr.capacity.for_event("evt-1").capacity = 100
    assert vwr.admin("POST", "evt-1/advance", {"by": 10}).body["servingCounter"] == 4


def test_admin_reset_starts_over_without_dropping_tables(vwr: Any) -> None:
    vwr.open_event("evt-1")
    ids = fill(vwr, "evt-1", 3)
    vwr.admin("POST", "evt-1/advance", {"by": 2})
    reset = vwr.admin("POST", "evt-1/reset")
    assert reset.status == 200
    assert (reset.body["nextPosition"], reset.body["servingCounter"]) == (0, 0)
    assert reset.body["epoch"] == 2
    assert reset.body["isActive"] is True
    assert vwr.check("evt-1", ids[0]).body["code"] == "position_not_found"
    again = vwr.assign("evt-1", ids[2])
    assert (again.status, again.body["position"]) == (201, 1)
    assert vwr.admin("POST", "nope/reset").status == 404


def test_admin_put_creates_and_changes_an_event(vwr: Any) -> None:
    created = vwr.admin("PUT", "evt-9", {"isActive": True, "batchSize": 25})
    assert created.status == 201
    assert created.body["batchSize"] == 25
    changed = vwr.admin("PUT", "evt-9", {"isActive": False})
    assert changed.status == 200
    assert changed.body["batchSize"] == 25
    assert changed.body["isActive"] is False
    document = json.loads(Path(vwr.settings.edge_config.target).read_text())
    assert document["activeEvents"] == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"isActive": "yes"}, 422),
        ({"isActive": True, "batchSize": 0}, 422),
        ({"isActive": True, "batchSize": True}, 422),
        ({"isActive": True, "batchSize": 10**9}, 422),
    ],
)
def test_admin_put_validates(vwr: Any, body: Any, status: int) -> None:
    assert vwr.admin("PUT", "evt-1", body).status == status


def test_admin_routes_need_an_admin(vwr: Any) -> None:
    path = "/vwr/admin/events/evt-1"
    body = {"isActive": True}
    assert vwr.request("PUT", path, body).status == 401
    bad = vwr.request("PUT", path, body, {"Authorization": "Bearer nope"})
    assert (bad.status, bad.body["code"]) == (401, "access_token_invalid")
    user = {"Authorization": f"Bearer {vwr.user_token('u-1')}"}
    assert vwr.request("PUT", path, body, user).status == 403
    cookie = {"Cookie": f"access_token={vwr.admin_token()}"}
    assert vwr.request("PUT", path, body, cookie).status == 201
    assert vwr.request("POST", f"{path}/advance", {"by": 1}, user).status == 403
    assert vwr.request("POST", f"{path}/reset", None, user).status == 403


def test_iam_mode_trusts_the_signed_caller_identity(vwr: Any, event_file: Any) -> None:
    object.__setattr__(vwr.runtime.settings, "admin_auth", "iam")
    event = event_file("rest_admin_put.json")
    assert vwr.call(event).status == 403
    event["requestContext"]["identity"]["userArn"] = "arn:aws:iam::123456789012:user/ops"
    answer = vwr.call(event)
    assert answer.status == 201
    assert answer.body["batchSize"] == 100


def test_each_cycle_emits_the_line_s_two_ends_per_event_as_emf(
    vwr: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In AWS nothing scrapes the advancer: the dashboard's serving counter and next
    position are EMF gauges with an eventId dimension."""
    vwr.open_event("evt-emf", batch_size=2)
    fill(vwr, "evt-emf", 3)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    capsys.readouterr()
    run_advancer(vwr)
    figures: dict[str, float] = {}
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith("{"):
            continue
        document = json.loads(line)
        if document.get("eventId") != "evt-emf":
            continue
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert sorted(directive["Dimensions"][0]) == ["eventId", "service"]
        for metric in directive["Metrics"]:
            (figures[metric["Name"]],) = document[metric["Name"]]
    # Three places handed out, two let through (batch 2).
    assert figures == {"ServingCounter": 2, "NextPosition": 3}
