"""Issue 15: place flooding (per-address cap) and presale access codes, against moto.

Each attack is replayed through the real handler with API Gateway events: on the code before
these gates, the 150 assigns took places 1-150 and an event requiring a code let anyone in.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from urr_vwr_lambda.gates.clients import client_address, client_key, parse_address
from urr_vwr_lambda.gates.codes import code_hash, new_code, normalise
from urr_vwr_lambda.gates.store import refusal_reason

FLOODER = "198.51.100.7"


def assign(vwr: Any, event_id: str, *, ip: str, code: object = None, **headers: str) -> Any:
    body: dict[str, Any] = {"requestId": str(uuid.uuid4())}
    if code is not None:
        body["accessCode"] = code
    return vwr.request("POST", f"/vwr/assign/{event_id}", body, headers, source_ip=ip)


def test_150_anonymous_assigns_from_one_address_take_two_places(vwr: Any) -> None:
    vwr.open_event("flood")
    answers = [assign(vwr, "flood", ip=FLOODER) for _ in range(150)]
    assert [a.status for a in answers[:2]] == [201, 201]
    refused = answers[2:]
    assert {a.status for a in refused} == {429}
    assert {a.body["code"] for a in refused} == {"too_many_places"}
    assert all(a.headers["content-type"] == "application/problem+json" for a in refused)
    assert {a.headers["retry-after"] for a in refused} == {
        str(vwr.settings.advancer.abandon_after_s)
    }
    assert refused[0].body["limit"] == 2
    # Nothing written for the refused: the next fan is third in line.
    assert vwr.status("flood").body["nextPosition"] == 2
    fan = assign(vwr, "flood", ip="203.0.113.50")
    assert (fan.status, fan.body["position"]) == (201, 3)


def test_a_retry_of_a_held_place_is_not_counted_again(vwr: Any) -> None:
    vwr.open_event("retry")
    first = assign(vwr, "retry", ip=FLOODER)
    again = vwr.request(
        "POST", "/vwr/assign/retry", {"requestId": first.body["requestId"]}, source_ip=FLOODER
    )
    assert (again.status, again.body["position"]) == (200, 1)
    assert assign(vwr, "retry", ip=FLOODER).status == 201
    assert assign(vwr, "retry", ip=FLOODER).status == 429


def test_a_slot_frees_when_its_place_is_admitted_or_given_up(vwr: Any, dynamodb: Any) -> None:
    vwr.open_event("frees", batch_size=1)
    vwr.admin("PUT", "frees", {"isActive": True, "placesPerClient": 1})
    held = assign(vwr, "frees", ip=FLOODER)
    assert assign(vwr, "frees", ip=FLOODER).status == 429
    vwr.admin("POST", "frees/advance", {"by": 1})
    assert vwr.check("frees", held.body["requestId"]).body["admitted"] is True
    second = assign(vwr, "frees", ip=FLOODER)
    assert second.status == 201
    assert assign(vwr, "frees", ip=FLOODER).status == 429
    # The advancer gives the place up when its checks stop: the address may take another.
    dynamodb.update_item(
        TableName=vwr.settings.tables.positions,
        Key={"eventId": {"S": "frees"}, "requestId": {"S": second.body["requestId"]}},
        UpdateExpression="SET abandoned = :t",
        ExpressionAttributeValues={":t": {"BOOL": True}},
    )
    assert assign(vwr, "frees", ip=FLOODER).status == 201


def test_a_slot_whose_place_never_appeared_is_held_a_minute(vwr: Any, dynamodb: Any) -> None:
    """A slot is taken before its place is written; an assign that died between the two
    leaves a slot without a place, which counts as held only while that assign could run."""
    vwr.open_event("crash")
    first = assign(vwr, "crash", ip=FLOODER)
    assert assign(vwr, "crash", ip=FLOODER).status == 201
    dynamodb.delete_item(
        TableName=vwr.settings.tables.positions,
        Key={"eventId": {"S": "crash"}, "requestId": {"S": first.body["requestId"]}},
    )
    assert assign(vwr, "crash", ip=FLOODER).status == 429
    vwr.clock.advance(61)
    assert assign(vwr, "crash", ip=FLOODER).status == 201


def test_a_reset_room_forgets_the_addresses_places(vwr: Any) -> None:
    vwr.open_event("reset")
    assert [assign(vwr, "reset", ip=FLOODER).status for _ in range(3)] == [201, 201, 429]
    vwr.admin("POST", "reset/reset")
    assert assign(vwr, "reset", ip=FLOODER).status == 201


def test_the_cap_is_per_event_and_zero_turns_it_off(vwr: Any) -> None:
    vwr.open_event("open")
    answer = vwr.admin("PUT", "open", {"isActive": True, "placesPerClient": 0})
    assert answer.body["placesPerClient"] == 0
    assert {assign(vwr, "open", ip=FLOODER).status for _ in range(5)} == {201}
    vwr.open_event("other")
    assert [assign(vwr, "other", ip=FLOODER).status for _ in range(3)] == [201, 201, 429]


@pytest.mark.parametrize(
    "body",
    [
        {"placesPerClient": -1},
        {"placesPerClient": 1001},
        {"placesPerClient": "2"},
        {"placesPerClient": True},
        {"accessCodeRequired": "yes"},
    ],
)
def test_bad_gate_settings_are_422_and_change_nothing(vwr: Any, body: dict[str, Any]) -> None:
    vwr.open_event("cfg")
    answer = vwr.admin("PUT", "cfg", {"isActive": False, **body})
    assert (answer.status, answer.body["code"]) == (422, "validation_failed")
    assert vwr.status("cfg").body["isActive"] is True


def test_logged_in_callers_hold_one_place_each_whatever_their_address(vwr: Any) -> None:
    vwr.open_event("users")
    answers = [
        assign(vwr, "users", ip=FLOODER, Authorization=f"Bearer {vwr.user_token(f'u{i}')}")
        for i in range(4)
    ]
    assert [a.status for a in answers] == [201] * 4
    again = assign(vwr, "users", ip=FLOODER, Authorization=f"Bearer {vwr.user_token('u0')}")
    assert (again.status, again.body["position"]) == (200, 1)


def test_client_addresses() -> None:
    assert parse_address("198.51.100.7:4431", with_port=True) == "198.51.100.7"
    assert parse_address("2001:db8::1:443", with_port=True) == "2001:db8::1"
    assert parse_address("[2001:db8::1]:443", with_port=True) == "2001:db8::1"
    assert parse_address("not an address:1", with_port=True) is None
    assert parse_address("198.51.100.7", with_port=True) is None
    assert client_key("2001:db8:0:0:aaaa::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert client_key(None) == "unknown"
    event = {
        "headers": {"cloudfront-viewer-address": "203.0.113.9:5000"},
        "requestContext": {"identity": {"sourceIp": "130.176.0.1"}},
    }
    # The viewer header counts only when the request came through the distribution.
    assert client_address(event, via_distribution=True) == "203.0.113.9"
    assert client_address(event, via_distribution=False) == "130.176.0.1"
    v2 = {"requestContext": {"http": {"sourceIp": "192.0.2.1"}}}
    assert client_address(v2, via_distribution=False) == "192.0.2.1"
    assert client_address({}, via_distribution=False) == "unknown"


def test_codes_normalise_and_hash() -> None:
    code = new_code()
    assert len(code) == 14
    assert code.count("-") == 2
    assert normalise(code.lower().replace("-", " ")) == code.replace("-", "")
    assert normalise("abcd-efgh-jkmo") == "ABCDEFGHJKM0"
    assert normalise("short") is None
    assert normalise("x" * 65) is None
    assert normalise("ABCD-EFGH-<script>") is None
    assert normalise(12345678) is None
    assert code_hash(b"a" * 32, "ABCDEFGH") != code_hash(b"b" * 32, "ABCDEFGH")


def test_refusal_reasons() -> None:
    assert refusal_reason(None, None) == "access_code_invalid"
    assert refusal_reason({"revoked": {"N": "1"}}, "u") == "access_code_revoked"
    bound = {"boundUserId": {"S": "u1"}, "used": {"N": "0"}}
    assert refusal_reason(bound, None) == "access_code_login_required"
    assert refusal_reason(bound, "u2") == "access_code_other_account"
    assert refusal_reason({"used": {"N": "1"}, "maxUses": {"N": "1"}}, None) == (
        "access_code_exhausted"
    )


# -- presale codes ---------------------------------------------------------------------------


def presale(vwr: Any, event_id: str, **batch: Any) -> dict[str, Any]:
    vwr.open_event(event_id)
    answer = vwr.admin("PUT", event_id, {"isActive": True, "accessCodeRequired": True})
    assert answer.body["accessCodeRequired"] is True
    created = vwr.admin("POST", f"{event_id}/access-codes", batch)
    assert created.status == 201, created.body
    result: dict[str, Any] = created.body
    return result


def test_a_presale_needs_a_valid_code_and_nothing_is_written_for_a_refusal(
    vwr: Any, dynamodb: Any
) -> None:
    batch = presale(vwr, "pre", count=3, uses=1, label="fan club")
    plain = [c["code"] for c in batch["codes"]]
    assert len(set(plain)) == 3
    for code, why in [
        (None, "access_code_required"),
        ("", "access_code_required"),
        ("ZZZZ-ZZZZ-ZZZZ", "access_code_invalid"),
        ("<>", "access_code_invalid"),
        (42, "access_code_invalid"),
    ]:
        answer = assign(vwr, "pre", ip=f"192.0.2.{len(str(code))}", code=code)
        assert (answer.status, answer.body["code"]) == (403, why), (code, answer.body)
    assert vwr.status("pre").body["nextPosition"] == 0

    first = assign(vwr, "pre", ip="192.0.2.10", code=plain[0].lower())
    assert (first.status, first.body["position"]) == (201, 1)
    # The same request again keeps its place without another use of the code.
    again = vwr.request(
        "POST",
        "/vwr/assign/pre",
        {"requestId": first.body["requestId"], "accessCode": plain[0]},
        source_ip="192.0.2.10",
    )
    assert again.status == 200
    # A repeat needs no code at all: its place stands.
    bare = vwr.request(
        "POST", "/vwr/assign/pre", {"requestId": first.body["requestId"]}, source_ip="192.0.2.10"
    )
    assert bare.status == 200
    # (The retry took a number beside its read and left it unused, as any retry does.)
    taken = vwr.status("pre").body["nextPosition"]
    reused = assign(vwr, "pre", ip="192.0.2.11", code=plain[0])
    assert (reused.status, reused.body["code"]) == (403, "access_code_exhausted")
    usage = vwr.admin("GET", f"pre/access-codes/{batch['batchId']}").body
    assert (usage["count"], usage["used"], usage["codesUsed"], usage["codesExhausted"]) == (
        3,
        1,
        1,
        1,
    )
    assert usage["label"] == "fan club"
    more = vwr.admin("POST", "pre/access-codes", {"count": 2, "uses": 3}).body
    listed = vwr.admin("GET", "pre/access-codes").body
    assert sorted(b["batchId"] for b in listed["batches"]) == sorted(
        [batch["batchId"], more["batchId"]]
    )
    assert listed["used"] == 1

    revoked = vwr.admin("POST", f"pre/access-codes/{batch['batchId']}/revoke")
    assert revoked.body["revoked"] is True
    late = assign(vwr, "pre", ip="192.0.2.12", code=plain[1])
    assert (late.status, late.body["code"]) == (403, "access_code_revoked")
    assert vwr.status("pre").body["nextPosition"] == taken

    # Only hashes are stored: no item holds a plain code.
    items = dynamodb.scan(TableName=vwr.settings.tables.positions)["Items"]
    text = repr(items)
    assert not any(c in text or c.replace("-", "") in text for c in plain)


def test_a_code_refused_by_the_address_cap_gives_its_use_back(vwr: Any) -> None:
    batch = presale(vwr, "both", count=1, uses=5)
    code = batch["codes"][0]["code"]
    assert [assign(vwr, "both", ip=FLOODER, code=code).status for _ in range(3)] == [201, 201, 429]
    assert vwr.admin("GET", f"both/access-codes/{batch['batchId']}").body["used"] == 2


def test_codes_bound_to_accounts(vwr: Any) -> None:
    batch = presale(vwr, "bound", accounts=["alice", "bob"])
    codes = {c["account"]: c["code"] for c in batch["codes"]}
    alice = {"Authorization": f"Bearer {vwr.user_token('alice')}"}
    bob = {"Authorization": f"Bearer {vwr.user_token('bob')}"}
    anonymous = assign(vwr, "bound", ip="192.0.2.20", code=codes["alice"])
    assert anonymous.body["code"] == "access_code_login_required"
    stolen = assign(vwr, "bound", ip="192.0.2.21", code=codes["alice"], **bob)
    assert stolen.body["code"] == "access_code_other_account"
    assert assign(vwr, "bound", ip="192.0.2.22", code=codes["alice"], **alice).status == 201
    # A second tab of the same account keeps its one place and gives the use back.
    tab = assign(vwr, "bound", ip="192.0.2.22", code=codes["alice"], **alice)
    assert (tab.status, tab.body["position"]) == (200, 1)
    usage = vwr.admin("GET", f"bound/access-codes/{batch['batchId']}").body
    assert usage["used"] == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"count": 0}, 422),
        ({"count": 1001}, 422),
        ({"count": 2, "uses": 0}, 422),
        ({"count": "3"}, 422),
        ({"accounts": []}, 422),
        ({"accounts": ["a", 1]}, 422),
        ({"accounts": ["a"], "count": 2}, 422),
        ({"count": 1, "label": 7}, 422),
    ],
)
def test_bad_batches_are_refused(vwr: Any, body: dict[str, Any], status: int) -> None:
    vwr.open_event("bad")
    answer = vwr.admin("POST", "bad/access-codes", body)
    assert (answer.status, answer.body["code"]) == (status, "validation_failed")


def test_batch_routes_need_an_admin_and_a_known_batch(vwr: Any) -> None:
    vwr.open_event("adm")
    assert vwr.admin("POST", "nope/access-codes", {"count": 1}).status == 404
    assert vwr.admin("GET", "adm/access-codes/0123456789abcdef").body["code"] == "batch_not_found"
    assert vwr.admin("GET", "adm/access-codes/..%2Fx").status == 404
    assert vwr.admin("POST", "adm/access-codes/0123456789abcdef/revoke").status == 404
    user = {"Authorization": f"Bearer {vwr.admin_token(role='user')}"}
    answer = vwr.request("POST", "/vwr/admin/events/adm/access-codes", {"count": 1}, user)
    assert answer.status == 403


def test_secretsmanager_over_http_keeps_two_stages(secretsmanager: Any) -> None:
    """The moto server serves the calls the origin check makes (a guard for its tests)."""
    client = secretsmanager
    name = f"probe-{uuid.uuid4().hex[:8]}"
    client.create_secret(Name=name, SecretString="a" * 40)
    client.put_secret_value(SecretId=name, SecretString="b" * 40, VersionStages=["AWSPENDING"])
    current = client.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["SecretString"]
    pending = client.get_secret_value(SecretId=name, VersionStage="AWSPENDING")["SecretString"]
    assert (current, pending) == ("a" * 40, "b" * 40)


def test_a_room_opened_with_a_code_requirement_never_admits_without_one(vwr: Any) -> None:
    opened = vwr.admin("PUT", "fresh", {"isActive": True, "accessCodeRequired": True})
    assert opened.status == 201
    assert (opened.body["accessCodeRequired"], opened.body["placesPerClient"]) == (True, 2)
    assert opened.body["nextPosition"] == 0
    refused = assign(vwr, "fresh", ip="192.0.2.30")
    assert (refused.status, refused.body["code"]) == (403, "access_code_required")
    plain = vwr.admin("PUT", "plain", {"isActive": True})
    assert (plain.body["accessCodeRequired"], plain.body["placesPerClient"]) == (False, 2)


def test_an_assign_that_takes_no_place_gives_back_its_use_and_its_slot(vwr: Any) -> None:
    batch = presale(vwr, "closed", count=1, uses=2)
    code = batch["codes"][0]["code"]
    vwr.admin("PUT", "closed", {"isActive": False})
    for _ in range(3):
        answer = assign(vwr, "closed", ip=FLOODER, code=code)
        assert (answer.status, answer.body["code"]) == (409, "room_inactive")
    assert vwr.admin("GET", f"closed/access-codes/{batch['batchId']}").body["used"] == 0
    vwr.admin("PUT", "closed", {"isActive": True})
    assert [assign(vwr, "closed", ip=FLOODER, code=code).status for _ in range(2)] == [201, 201]
