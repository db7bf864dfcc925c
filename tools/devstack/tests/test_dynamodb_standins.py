"""Every DynamoDB call the Tier-1 store makes, against moto and against dynalite (issue 22).

The tests go through ``VwrStore``'s public methods, so an expression a handler adds is
exercised here as soon as a method uses it. dynalite (``make dynalite``) is the stand-in the
local stack and the tests use; moto is what it replaced (and still serves SQS and S3). Where
dynalite lacks what AWS has, the test says exactly what and asserts the gap, so it fails the
day dynalite gains it and the workaround can go.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from urr_devstack.procs import dynalite_server, free_port
from urr_vwr_lambda.ids import line_key
from urr_vwr_lambda.settings import TableSettings
from urr_vwr_lambda.store import EventNotFound, RoomInactive, StaleCounter, VwrStore
from urr_vwr_lambda.tables import TTL_ATTRIBUTE, counters_table, ensure_tables, positions_table

pytestmark = pytest.mark.integration

NOW_S = 1_900_000_000
NOW_MS = NOW_S * 1000


@pytest.fixture(params=["moto", "dynalite"])
def standin(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(request: pytest.FixtureRequest, standin: str) -> Iterator[Any]:
    endpoint = request.getfixturevalue(
        "moto_endpoint" if standin == "moto" else "dynalite_endpoint"
    )
    dynamodb = boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}),
    )
    try:
        yield dynamodb
    finally:
        dynamodb.close()


@pytest.fixture
def tables(client: Any) -> TableSettings:
    """Fresh tables; created without their TTL setting (``test_table_set_up`` covers it)."""
    suffix = uuid.uuid4().hex[:10]
    names = TableSettings(counters=f"counters-{suffix}", positions=f"positions-{suffix}")
    client.create_table(**counters_table(names))
    client.create_table(**positions_table(names))
    return names


@pytest.fixture
def store(client: Any, tables: TableSettings) -> VwrStore:
    return VwrStore(client, counters_table=tables.counters, positions_table=tables.positions)


def _event(store: VwrStore, *, active: bool = True) -> str:
    event_id = f"evt-{uuid.uuid4().hex[:8]}"
    store.put_event(event_id, is_active=active, batch_size=10, now_ms=NOW_MS)
    return event_id


def test_table_set_up_with_ttl(client: Any, standin: str) -> None:
    """moto records the TTL setting; dynalite 4.0.0 has no UpdateTimeToLive, which
    ``ensure_tables`` passes over (nothing local relies on expiry: neither deletes)."""
    suffix = uuid.uuid4().hex[:10]
    names = TableSettings(counters=f"counters-{suffix}", positions=f"positions-{suffix}")
    ensure_tables(client, names)
    ttl = client.describe_time_to_live(TableName=names.positions)["TimeToLiveDescription"]
    if standin == "dynalite":
        assert ttl["TimeToLiveStatus"] == "DISABLED"
        with pytest.raises(ClientError) as missing:
            client.update_time_to_live(
                TableName=names.positions,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            )
        assert missing.value.response["Error"]["Code"] == "UnknownOperationException"
        return
    assert ttl["AttributeName"] == TTL_ATTRIBUTE
    assert ttl["TimeToLiveStatus"] in ("ENABLED", "ENABLING")


def test_put_event_keeps_the_registry(store: VwrStore, standin: str) -> None:
    """One transaction on moto (and AWS); ordered writes on dynalite, which has none."""
    state = store.put_event("evt-a", is_active=True, batch_size=7, now_ms=NOW_MS)
    assert store.transactions is (standin == "moto")
    assert (state.is_active, state.batch_size, state.next_position, state.epoch) == (
        True,
        7,
        0,
        1,
    )
    store.put_event("evt-b", is_active=True, batch_size=7, now_ms=NOW_MS)
    assert store.active_event_ids() == ["evt-a", "evt-b"]
    # A change keeps the counters (if_not_exists) and leaves the registry (DELETE from a set).
    again = store.put_event("evt-a", is_active=False, batch_size=9, now_ms=NOW_MS + 1)
    assert (again.is_active, again.batch_size, again.updated_at_ms) == (False, 9, NOW_MS + 1)
    assert store.active_event_ids() == ["evt-b"]
    back = store.put_event("evt-a", is_active=True, batch_size=9, now_ms=NOW_MS + 2)
    assert back.is_active
    assert store.active_event_ids() == ["evt-a", "evt-b"]


# dynalite only: moto's threads lose concurrent ADDs (docs/performance.md, "DynamoDB
# stand-in"), which is why it is not the stand-in; a moto case here could only skip.
@pytest.mark.parametrize("standin", ["dynalite"])
def test_20_interleaved_put_events_and_assigns(store: VwrStore, standin: str) -> None:
    """Ten admins switching one room on and off while ten visitors take numbers, five
    rounds: no number is handed out twice, none while the room is off is kept, and once the
    writers are done an active room is always in the registry (the edge fails closed)."""
    event_id = _event(store)
    taken: list[int] = []

    def switch(index: int) -> None:
        store.put_event(event_id, is_active=index % 2 == 0, batch_size=10, now_ms=NOW_MS + index)

    def take(_: int) -> int | None:
        try:
            return store.reserve_position(event_id, now_ms=NOW_MS)[0]
        except RoomInactive:
            return None

    with ThreadPoolExecutor(max_workers=20) as pool:
        for _ in range(5):
            switches = [pool.submit(switch, index) for index in range(10)]
            takes = [pool.submit(take, index) for index in range(10)]
            for future in switches:
                future.result()
            taken += [number for future in takes if (number := future.result()) is not None]
            state = store.get_event(event_id, consistent=True)
            assert state is not None
            if state.is_active:
                assert event_id in store.active_event_ids()
    assert len(taken) == len(set(taken))
    final = store.get_event(event_id, consistent=True)
    assert final is not None
    assert sorted(taken) == list(range(1, final.next_position + 1))
    # Settled by one more change either way.
    store.put_event(event_id, is_active=False, batch_size=10, now_ms=NOW_MS + 99)
    assert event_id not in store.active_event_ids()
    store.put_event(event_id, is_active=True, batch_size=10, now_ms=NOW_MS + 100)
    assert event_id in store.active_event_ids()


def test_reserve_position_adds_only_while_active(
    store: VwrStore, client: Any, standin: str
) -> None:
    event_id = _event(store)
    assert [store.reserve_position(event_id, now_ms=NOW_MS)[0] for _ in range(3)] == [1, 2, 3]
    closed = _event(store, active=False)
    with pytest.raises(RoomInactive):
        store.reserve_position(closed, now_ms=NOW_MS)
    with pytest.raises(EventNotFound):
        store.reserve_position("evt-missing", now_ms=NOW_MS)
    # ReturnValuesOnConditionCheckFailure: the refused write names the item it saw.
    with pytest.raises(ClientError) as refused:
        client.update_item(
            TableName=store.counters_table,
            Key={"eventId": {"S": closed}},
            UpdateExpression="ADD nextPosition :one",
            ConditionExpression="isActive = :true",
            ExpressionAttributeValues={":one": {"N": "1"}, ":true": {"BOOL": True}},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert refused.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    seen: Any = refused.value.response.get("Item")
    if standin == "dynalite" and seen is None:
        pytest.xfail(
            "dynalite 4.0.0 ignores ReturnValuesOnConditionCheckFailure (the store "
            "falls back to a consistent read, one more call)"
        )
    assert seen is not None
    assert seen["isActive"] == {"BOOL": False}


def test_places_claims_and_the_line(store: VwrStore, client: Any) -> None:
    event_id = _event(store)
    position, epoch = store.reserve_position(event_id, now_ms=NOW_MS)
    assert store.put_place(
        event_id, "req-1", position=position, epoch=epoch, user_id="user-1", now_s=NOW_S
    )
    store.put_line(event_id, "req-1", position=position, epoch=epoch, now_s=NOW_S)
    # The same user's second request loses to the claim (a conditional put on #ttl).
    assert not store.put_place(
        event_id, "req-2", position=position + 1, epoch=epoch, user_id="user-1", now_s=NOW_S
    )
    place = store.get_place(event_id, "req-1")
    assert place is not None
    assert (place.position, place.epoch, place.user_id) == (position, epoch, "user-1")
    assert place.expires_at > NOW_S
    claim = store.get_claim(event_id, "user-1")
    assert claim is not None
    assert (claim.owner_request_id, claim.position) == ("req-1", position)
    line = client.get_item(
        TableName=store.positions_table,
        Key={"eventId": {"S": event_id}, "requestId": {"S": line_key(epoch, position)}},
    )["Item"]
    assert line["ownerRequestId"] == {"S": "req-1"}
    assert int(line[TTL_ATTRIBUTE]["N"]) > NOW_S
    # BatchGetItem: the event, the place and the claim in one call.
    state, read_place, read_claim = store.read_assignment(event_id, "req-1", "user-1")
    assert state is not None
    assert state.next_position == 1
    assert read_place == place
    assert read_claim == claim
    checked_state, checked_place = store.read_check(event_id, "req-1")
    assert checked_state == state
    assert checked_place == place


def test_checks_admission_and_abandonment(store: VwrStore, client: Any) -> None:
    event_id = _event(store)
    for index in range(3):
        position, epoch = store.reserve_position(event_id, now_ms=NOW_MS)
        request_id = f"req-{index}"
        assert store.put_place(
            event_id, request_id, position=position, epoch=epoch, user_id=None, now_s=NOW_S
        )
        store.put_line(event_id, request_id, position=position, epoch=epoch, now_s=NOW_S)
    state = store.get_event(event_id, consistent=True)
    assert state is not None
    rows = list(store.places_above(state, upto=3, now_s=NOW_S))
    assert [(row.request_id, row.position) for row in rows] == [
        ("req-0", 1),
        ("req-1", 2),
        ("req-2", 3),
    ]
    first = store.get_place(event_id, "req-0")
    assert first is not None
    assert store.touch(first, now_s=NOW_S + 5)
    # record_admission: stored once (ReturnValues ALL_NEW); a racing second answers the first.
    admitted = store.record_admission(first, token="tok-1", token_exp=NOW_S + 60, now_s=NOW_S)
    assert admitted is not None
    assert admitted.token == "tok-1"
    again = store.record_admission(first, token="tok-2", token_exp=NOW_S + 60, now_s=NOW_S)
    assert again is not None
    assert again.token == "tok-1"
    # mark_abandoned: a conditional SET; then touch is refused.
    assert store.mark_abandoned(state, rows[1], cutoff_s=NOW_S + 100)
    second = store.get_place(event_id, "req-1")
    assert second is not None
    assert second.abandoned
    assert not store.touch(second, now_s=NOW_S + 6)
    # advance_to: compare-and-set, never beyond nextPosition; a stale state is refused.
    advanced = store.advance_to(state, serving_counter=2, admit_rate=1.5, now_ms=NOW_MS + 1)
    assert (advanced.serving_counter, advanced.admit_rate) == (2, 1.5)
    with pytest.raises(StaleCounter):
        store.advance_to(state, serving_counter=3, admit_rate=None, now_ms=NOW_MS + 2)
    with pytest.raises(StaleCounter):
        store.advance_to(advanced, serving_counter=9, admit_rate=None, now_ms=NOW_MS + 2)
    # reset_event: a new epoch, counters back to zero (ReturnValues ALL_NEW).
    reset = store.reset_event(event_id, now_ms=NOW_MS + 3)
    assert (reset.epoch, reset.next_position, reset.serving_counter) == (2, 0, 0)
    with pytest.raises(EventNotFound):
        store.reset_event("evt-missing", now_ms=NOW_MS)


def test_unused_path_guard(tmp_path: Path) -> None:
    """The dynalite helper names the command that installs it when it is missing."""
    from urr_devstack import procs

    original = procs.DYNALITE_DIR
    try:
        procs.DYNALITE_DIR = tmp_path
        with pytest.raises(FileNotFoundError, match="make dynalite"):
            dynalite_server(free_port(), tmp_path / "log")
    finally:
        procs.DYNALITE_DIR = original
