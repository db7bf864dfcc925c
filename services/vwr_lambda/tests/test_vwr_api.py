"""The API handlers against moto: assign, check, status, with REST v1 and HTTP API v2 events."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from urr_common.tokens import KeySet, load_verification_keys
from urr_vwr_lambda import tier1

pytestmark = pytest.mark.integration


def test_assign_gives_increasing_places_and_a_retry_keeps_its_place(vwr: Any) -> None:
    vwr.open_event("evt-1")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    a = vwr.assign("evt-1", first)
    b = vwr.assign("evt-1", second)
    assert (a.status, a.body["position"]) == (201, 1)
    assert (b.status, b.body["position"]) == (201, 2)
    again = vwr.assign("evt-1", first.upper())  # same UUID, other spelling
    assert again.status == 200
    assert again.body["position"] == 1
    assert again.body["requestId"] == first
    # The retry's number was taken beside its read and stays unused: a gap the advancer
    # passes at no cost. It is in the table when the answer comes (a Lambda is frozen once it
    # has answered, so nothing may still be running on the side).
    assert vwr.status("evt-1").body["nextPosition"] == 3
    third = vwr.assign("evt-1")
    assert (third.status, third.body["position"], third.body["ahead"]) == (201, 4, 3)


def test_assign_from_the_json_event_file(vwr: Any, event_file: Any) -> None:
    vwr.open_event("evt-1")
    answer = vwr.call(event_file("rest_assign.json"))
    assert answer.status == 201
    assert answer.headers["content-type"] == "application/json"
    assert answer.body == {
        "eventId": "evt-1",
        "requestId": "7f1c2b6e-1d2a-4c0e-9a55-3b1f0c9d2e11",
        "position": 1,
        "ahead": 0,
        "servingCounter": 0,
        "etaSeconds": 0,
        "pollAfterSeconds": 2,
        "queueMethod": "fifo",
    }


def test_http_api_v2_events_are_served_too(vwr: Any, event_file: Any) -> None:
    vwr.open_event("evt-1")
    answer = vwr.call(event_file("http_v2_assign.json"))
    assert answer.status == 201
    assert answer.body["requestId"] == "0a8e5d2c-4b3f-4e1a-8c7d-6f5e4d3c2b1a"
    event = event_file("http_v2_assign.json")
    event["rawPath"] = "/vwr/status/evt-1"
    event["requestContext"]["http"]["method"] = "GET"
    event["body"] = None
    status = vwr.call(event)
    assert status.status == 200
    assert status.body["nextPosition"] == 1


def test_a_logged_in_user_holds_one_place_per_event(vwr: Any) -> None:
    vwr.open_event("evt-1")
    vwr.open_event("evt-2")
    auth = {"Authorization": f"Bearer {vwr.user_token('u-7')}"}
    tab1, tab2 = str(uuid.uuid4()), str(uuid.uuid4())
    vwr.assign("evt-1")  # someone else first
    first = vwr.assign("evt-1", tab1, **auth)
    second = vwr.assign("evt-1", tab2, **auth)
    assert first.status == 201
    assert first.body["position"] == 2
    assert second.status == 200
    assert second.body["requestId"] == tab1
    assert second.body["position"] == 2
    # The cookie carries the login just as well; another event is another place.
    cookie = {"Cookie": f"theme=x; access_token={vwr.user_token('u-7')}"}
    assert vwr.assign("evt-1", str(uuid.uuid4()), **cookie).body["requestId"] == tab1
    assert vwr.assign("evt-2", tab2, **auth).status == 201
    # The second tab and the cookie call each left a number unused.
    assert vwr.status("evt-1").body["nextPosition"] == 4


def test_a_bad_bearer_is_401_and_a_stale_cookie_waits_anonymously(vwr: Any) -> None:
    vwr.open_event("evt-1")
    bad = vwr.assign("evt-1", Authorization="Bearer not-a-token")
    assert bad.status == 401
    assert bad.body["code"] == "access_token_invalid"
    anonymous = vwr.assign("evt-1", Cookie="access_token=expired.garbage.token")
    assert anonymous.status == 201
    assert vwr.status("evt-1").body["nextPosition"] == 1


@pytest.mark.parametrize(
    ("body", "code", "status"),
    [
        ({"requestId": "not-a-uuid"}, "bad_request_id", 422),
        ({}, "bad_request_id", 422),
        ({"requestId": 12}, "bad_request_id", 422),
        ([1, 2], "validation_failed", 422),
    ],
)
def test_assign_refuses_bad_bodies(vwr: Any, body: Any, code: str, status: int) -> None:
    vwr.open_event("evt-1")
    answer = vwr.request("POST", "/vwr/assign/evt-1", body)
    assert answer.status == status
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.body["code"] == code
    assert vwr.status("evt-1").body["nextPosition"] == 0


def test_assign_refuses_malformed_json_and_wrong_media_types(vwr: Any) -> None:
    vwr.open_event("evt-1")
    event = vwr.event("POST", "/vwr/assign/evt-1", {"requestId": str(uuid.uuid4())})
    event["body"] = "{not json"
    assert vwr.call(event).body["code"] == "malformed_json"
    event = vwr.event("POST", "/vwr/assign/evt-1", {"requestId": str(uuid.uuid4())})
    event["headers"]["Content-Type"] = "text/plain"
    assert vwr.call(event).status == 415


def test_unknown_and_inactive_events(vwr: Any) -> None:
    missing = vwr.assign("no-such-event")
    assert (missing.status, missing.body["code"]) == (404, "event_not_found")
    vwr.open_event("evt-1", active=False)
    inactive = vwr.assign("evt-1")
    assert (inactive.status, inactive.body["code"]) == (409, "room_inactive")
    bad = vwr.assign("bad event id!")
    assert (bad.status, bad.body["code"]) == (400, "bad_event_id")
    assert vwr.status("no-such-event").status == 404


def test_check_before_and_after_advancing(vwr: Any) -> None:
    vwr.open_event("evt-1", batch_size=2)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for request_id in ids:
        vwr.assign("evt-1", request_id)
    waiting = vwr.check("evt-1", ids[2])
    assert waiting.status == 200
    assert waiting.body["admitted"] is False
    assert waiting.body["position"] == 3
    assert waiting.body["ahead"] == 2
    assert waiting.body["pollAfterSeconds"] >= 2
    assert "token" not in waiting.body
    assert not waiting.cookies

    moved = vwr.admin("POST", "evt-1/advance", {"by": 2})
    assert moved.status == 200, moved.body
    assert moved.body["servingCounter"] == 2

    admitted = vwr.check("evt-1", ids[1])
    assert admitted.body["admitted"] is True
    token = admitted.body["token"]
    cookie = admitted.cookies[0]
    assert cookie.startswith(f"urr-vwr-token={token}")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # secure=False in tests; configurable
    keys = KeySet(load_verification_keys(vwr.settings.vwr_trust.public_key_files))
    verifier = tier1.verifier(keys, issuer="urr-vwr", audience="urr-vwr", leeway_s=0)
    admission = tier1.admission_of(verifier, token, "evt-1")
    assert (admission.request_id, admission.position, admission.user_id) == (ids[1], 2, None)
    # Repeated checks hand out the same token.
    assert vwr.check("evt-1", ids[1]).body["token"] == token
    still_waiting = vwr.check("evt-1", ids[2])
    assert still_waiting.body["admitted"] is False
    assert still_waiting.body["ahead"] == 0


def test_the_token_names_the_user_when_the_assign_was_logged_in(vwr: Any) -> None:
    vwr.open_event("evt-1")
    request_id = str(uuid.uuid4())
    vwr.assign("evt-1", request_id, Authorization=f"Bearer {vwr.user_token('u-9')}")
    vwr.admin("POST", "evt-1/advance", {"by": 1})
    token = vwr.check("evt-1", request_id).body["token"]
    keys = KeySet(load_verification_keys(vwr.settings.vwr_trust.public_key_files))
    verifier = tier1.verifier(keys, issuer="urr-vwr", audience="urr-vwr", leeway_s=0)
    assert tier1.admission_of(verifier, token, "evt-1").user_id == "u-9"


def test_an_expired_token_is_replaced_on_the_next_check(vwr: Any) -> None:
    vwr.open_event("evt-1")
    request_id = str(uuid.uuid4())
    vwr.assign("evt-1", request_id)
    vwr.admin("POST", "evt-1/advance", {"by": 1})
    first = vwr.check("evt-1", request_id).body
    vwr.clock.advance(vwr.settings.vwr_tokens.ttl_s + 1)
    second = vwr.check("evt-1", request_id).body
    assert second["token"] != first["token"]
    assert second["tokenExpiresAt"] > first["tokenExpiresAt"]


def test_check_refuses_unknown_malformed_and_foreign_request_ids(vwr: Any) -> None:
    vwr.open_event("evt-1")
    vwr.open_event("evt-2")
    other = str(uuid.uuid4())
    vwr.assign("evt-2", other)
    assert vwr.check("evt-1", "not-a-uuid").body["code"] == "bad_request_id"
    foreign = vwr.check("evt-1", other)
    assert (foreign.status, foreign.body["code"]) == (404, "position_not_found")
    assert vwr.check("evt-1", str(uuid.uuid4())).status == 404
    assert vwr.check("no-such", other).body["code"] == "event_not_found"


def test_checks_record_last_seen(vwr: Any, dynamodb: Any) -> None:
    vwr.open_event("evt-1")
    request_id = str(uuid.uuid4())
    vwr.assign("evt-1", request_id)
    vwr.clock.advance(vwr.settings.poll.last_seen_write_interval_s)
    vwr.check("evt-1", request_id)
    item = dynamodb.get_item(
        TableName=vwr.settings.tables.positions,
        Key={"eventId": {"S": "evt-1"}, "requestId": {"S": request_id}},
    )["Item"]
    assert int(item["lastSeen"]["N"]) == int(vwr.clock.now)


def test_expired_places_are_gone(vwr: Any) -> None:
    """moto never applies TTL: the handlers treat ``ttl < now`` as deleted themselves."""
    vwr.open_event("evt-1")
    request_id = str(uuid.uuid4())
    assert vwr.assign("evt-1", request_id).body["position"] == 1
    vwr.clock.advance(24 * 3600 + 1)
    assert vwr.check("evt-1", request_id).body["code"] == "position_not_found"
    again = vwr.assign("evt-1", request_id)
    assert (again.status, again.body["position"]) == (201, 2)


def test_a_place_in_an_inactive_room_is_told_to_go_in(vwr: Any) -> None:
    vwr.open_event("evt-1")
    request_id = str(uuid.uuid4())
    vwr.assign("evt-1", request_id)
    vwr.open_event("evt-1", active=False)
    answer = vwr.check("evt-1", request_id)
    assert (answer.status, answer.body["code"]) == (409, "room_inactive")


def test_status_has_cache_headers_a_strong_etag_and_304(vwr: Any) -> None:
    vwr.open_event("evt-1")
    vwr.assign("evt-1")
    first = vwr.status("evt-1")
    assert first.status == 200
    assert first.body["eventId"] == "evt-1"
    assert first.body["nextPosition"] == 1
    assert first.headers["cache-control"] == "public, max-age=2, stale-while-revalidate=10"
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert not etag.startswith("W/")
    same = vwr.status("evt-1", **{"If-None-Match": etag})
    assert same.status == 304
    assert same.body is None
    assert same.headers["etag"] == etag
    assert vwr.status("evt-1", **{"If-None-Match": f'"x", W/{etag}'}).status == 304
    assert vwr.status("evt-1", **{"If-None-Match": "*"}).status == 304
    vwr.assign("evt-1")
    changed = vwr.status("evt-1", **{"If-None-Match": etag})
    assert changed.status == 200
    assert changed.headers["etag"] != etag


def test_unknown_routes_and_methods_are_404_problems(vwr: Any) -> None:
    for method, path in [
        ("GET", "/nope"),
        ("DELETE", "/vwr/status/evt-1"),
        ("GET", "/vwr/assign/e"),
    ]:
        answer = vwr.request(method, path)
        assert answer.status == 404
        assert answer.headers["content-type"] == "application/problem+json"


def test_malformed_events_are_400_problems(vwr: Any) -> None:
    events: list[Any] = [None, [], {"httpMethod": 3}, {"httpMethod": "GET", "path": "x"}]
    for event in events:
        raw = vwr.handler(event, None)
        assert raw["statusCode"] == 400
