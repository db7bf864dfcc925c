"""Message parsing: valid messages round-trip; anything else is MalformedMessage, never
another exception (the worker and consumers rely on that to skip or dead-letter it)."""

from __future__ import annotations

import contextlib
import uuid

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from urr_ticket_worker.messages import (
    MAX_GROUP_ID_LENGTH,
    CancelCommand,
    MalformedMessage,
    QueueEvent,
    ReservationOutcome,
    ReserveCommand,
    TransferCommand,
    command_deduplication_id,
    command_group_id,
    parse_command,
    parse_record,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=20,
)
command_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["reserve", "cancel", "transfer", "other"]) | st.text(max_size=8),
        "reservationId": st.uuids().map(str) | st.text(max_size=40),
        "eventId": st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True) | st.text(max_size=70),
        "userId": st.text(max_size=130),
        "toUserId": st.text(max_size=130),
        "seatIds": st.lists(st.text(max_size=18), max_size=12),
        "requestedAt": st.text(max_size=30) | st.integers(min_value=0, max_value=2**40),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200), json_values.map(orjson.dumps), command_like.map(orjson.dumps)
    )
)
def test_parse_command_accepts_or_says_malformed(body: bytes) -> None:
    try:
        command = parse_command(body)
    except MalformedMessage:
        return
    assert parse_command(command.to_json()) == command
    assert 1 <= len(command_deduplication_id(command)) <= 128


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(orjson.dumps)))
def test_parse_record_accepts_or_says_malformed(value: bytes) -> None:
    for model in (ReservationOutcome, QueueEvent):
        with contextlib.suppress(MalformedMessage):
            parse_record(model, value)


def test_commands_round_trip_in_camel_case() -> None:
    rid = uuid.uuid4()
    commands: list[ReserveCommand | CancelCommand | TransferCommand] = [
        ReserveCommand(reservation_id=rid, event_id="demo", user_id="u1", seat_ids=["A1", "A2"]),
        CancelCommand(reservation_id=rid, event_id="demo", user_id="u1"),
        TransferCommand(reservation_id=rid, event_id="demo", user_id="u1", to_user_id="u2"),
    ]
    for command in commands:
        wire = orjson.loads(command.to_json())
        assert wire["reservationId"] == str(rid)
        assert parse_command(command.to_json()) == command
    assert len({command_deduplication_id(c) for c in commands}) == 3


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b'{"type": "reserve"}',
        b'{"type": "reserve", "reservationId": "%s", "eventId": "demo", "userId": "u",'
        b' "seatIds": ["A1", "A1"]}' % str(uuid.uuid4()).encode(),
        b'{"type": "reserve", "reservationId": "%s", "eventId": "demo", "userId": "u",'
        b' "seatIds": []}' % str(uuid.uuid4()).encode(),
        b'{"type": "reserve", "reservationId": "%s", "eventId": "../etc", "userId": "u",'
        b' "seatIds": ["A1"]}' % str(uuid.uuid4()).encode(),
    ],
)
def test_bad_commands_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_command(body)


def test_queue_events_from_the_queue_service_parse() -> None:
    event = parse_record(
        QueueEvent,
        b'{"id": "q-1", "type": "admitted", "eventId": "demo", "userId": "u1", "position": 3,'
        b' "at": 1700000000123, "extra": true}',
    )
    assert (event.type, event.position) == ("admitted", 3)


def test_one_buyers_commands_for_an_event_share_a_group_and_others_do_not() -> None:
    rid = uuid.uuid4()
    reserve = ReserveCommand(reservation_id=rid, event_id="ev1", user_id="u1", seat_ids=["A1"])
    cancel = CancelCommand(reservation_id=rid, event_id="ev1", user_id="u1")
    transfer = TransferCommand(reservation_id=rid, event_id="ev1", user_id="u1", to_user_id="u2")
    assert {command_group_id(c) for c in (reserve, cancel, transfer)} == {"ev1:u1"}
    other_user = reserve.model_copy(update={"user_id": "u2"})
    other_event = reserve.model_copy(update={"event_id": "ev2"})
    assert command_group_id(other_user) == "ev1:u2"
    assert command_group_id(other_event) == "ev2:u1"


@given(
    event=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    user=st.from_regex(r"[\x21-\x7e]{1,128}", fullmatch=True),
)
@settings(max_examples=200)
def test_every_group_id_is_one_sqs_accepts_and_keeps_the_event(event: str, user: str) -> None:
    command = CancelCommand(reservation_id=uuid.uuid4(), event_id=event, user_id=user)
    group = command_group_id(command)
    assert 1 <= len(group) <= MAX_GROUP_ID_LENGTH
    assert all(0x21 <= ord(ch) <= 0x7E for ch in group)  # SQS: letters, digits, punctuation
    assert group.startswith(f"{event}:")
    # A long pair is still one group per user.
    other = command.model_copy(update={"user_id": user + "x" if len(user) < 128 else user[:-1]})
    assert command_group_id(other) != group
