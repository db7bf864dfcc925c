"""Message formats: SQS booking commands and the Kafka records of every booking topic.

One definition per format, shared by whoever writes and whoever reads it (the ticket API, the
SQS worker, the relay, the payment stand-in, the consumers). Field names on the wire are
camelCase. Readers accept unknown extra fields (producers may add some) but reject anything
missing or out of range with ``MalformedMessage``, which consumers count and skip and which the
SQS worker lets fail so the message reaches the dead-letter queue.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic.alias_generators import to_camel

PAYMENT_EVENTS = "payment-events"
RESERVATION_EVENTS = "reservation-events"
TRANSFER_EVENTS = "transfer-events"
MEMBERSHIP_EVENTS = "membership-events"
QUEUE_EVENTS = "queue-events"

#: Most seats one reservation may take.
MAX_SEATS_PER_RESERVATION = 10

EventId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
SeatId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,16}$")]
#: User ids come from the auth service (via the gateway's X-Urr-Identity): printable text.
UserId = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,128}$")]


def _unique(seat_ids: list[str]) -> list[str]:
    if len(set(seat_ids)) != len(seat_ids):
        raise ValueError("seat ids must be unique")
    return seat_ids


SeatIds = Annotated[
    list[SeatId],
    Field(min_length=1, max_length=MAX_SEATS_PER_RESERVATION),
    AfterValidator(_unique),
]
ReservationStatus = Literal[
    "pending", "awaiting_payment", "confirmed", "declined", "expired", "cancelled"
]
OutcomeStatus = Literal["confirmed", "declined", "expired", "cancelled"]


class MalformedMessage(ValueError):
    """A message body that is not a valid instance of its format; never retried usefully."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python, immutable once parsed."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))


# --- SQS FIFO booking commands (ticket API -> worker) ------------------------------------


class ReserveCommand(WireModel):
    type: Literal["reserve"] = "reserve"
    reservation_id: uuid.UUID
    event_id: EventId
    user_id: UserId
    seat_ids: SeatIds
    requested_at: datetime = Field(default_factory=utc_now)


class CancelCommand(WireModel):
    type: Literal["cancel"] = "cancel"
    reservation_id: uuid.UUID
    event_id: EventId
    user_id: UserId
    requested_at: datetime = Field(default_factory=utc_now)


class TransferCommand(WireModel):
    type: Literal["transfer"] = "transfer"
    reservation_id: uuid.UUID
    event_id: EventId
    user_id: UserId
    to_user_id: UserId
    requested_at: datetime = Field(default_factory=utc_now)


BookingCommand = Annotated[
    ReserveCommand | CancelCommand | TransferCommand, Field(discriminator="type")
]
_COMMAND_ADAPTER: TypeAdapter[ReserveCommand | CancelCommand | TransferCommand] = TypeAdapter(
    BookingCommand
)


def parse_command(body: str | bytes) -> ReserveCommand | CancelCommand | TransferCommand:
    """The command in an SQS message body; ``MalformedMessage`` when it is not one."""
    data = _load_object(body)
    try:
        return _COMMAND_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise MalformedMessage(_summary(exc)) from exc


#: Longest ``MessageGroupId`` SQS accepts.
MAX_GROUP_ID_LENGTH = 128


def command_group_id(command: ReserveCommand | CancelCommand | TransferCommand) -> str:
    """SQS FIFO message group: ``<eventId>:<userId>``, the commands one account sends for one
    event. SQS keeps a group in order and hands different groups to different workers at once,
    so a sale runs in parallel across its buyers while one buyer's reserve, cancel and transfer
    stay in the order they were sent (a reservation's follow-ups come from its current owner).
    Seat conflicts between groups are decided by the ``seat_claims`` key, not by the queue.
    A pair too long for SQS (128 characters) uses a digest of the user id instead; two users
    sharing a group could only add order, never lose any."""
    group = f"{command.event_id}:{command.user_id}"
    if len(group) <= MAX_GROUP_ID_LENGTH:
        return group
    digest = hashlib.sha256(command.user_id.encode()).hexdigest()[:40]
    return f"{command.event_id}:#{digest}"


def command_deduplication_id(
    command: ReserveCommand | CancelCommand | TransferCommand,
) -> str:
    """SQS FIFO deduplication id: the reservation id, qualified for follow-up commands."""
    if isinstance(command, ReserveCommand):
        return str(command.reservation_id)
    if isinstance(command, CancelCommand):
        return f"{command.reservation_id}-cancel"
    return f"{command.reservation_id}-transfer-{uuid.uuid5(uuid.NAMESPACE_OID, command.to_user_id)}"


# --- Kafka records ----------------------------------------------------------------------


class PaymentRequested(WireModel):
    """``payment-events``: the ticket side asks the payment service to charge a reservation."""

    message_id: uuid.UUID
    type: Literal["payment_requested"] = "payment_requested"
    reservation_id: uuid.UUID
    event_id: EventId
    user_id: UserId
    seat_ids: SeatIds
    amount_cents: int = Field(ge=0)
    at: datetime = Field(default_factory=utc_now)


class ReservationOutcome(WireModel):
    """``reservation-events``: how a reservation ended. The queue service also reads it to end
    the user's Tier-2 session, so its fields are a contract with that service."""

    message_id: uuid.UUID
    event_id: EventId
    user_id: UserId
    reservation_id: uuid.UUID
    status: OutcomeStatus
    reason: str | None = Field(default=None, max_length=200)
    at: datetime = Field(default_factory=utc_now)


class TicketTransferred(WireModel):
    """``transfer-events``: a confirmed reservation changed owner."""

    message_id: uuid.UUID
    type: Literal["ticket_transferred"] = "ticket_transferred"
    reservation_id: uuid.UUID
    event_id: EventId
    from_user_id: UserId
    to_user_id: UserId
    seat_ids: SeatIds
    at: datetime = Field(default_factory=utc_now)


class MembershipRecorded(WireModel):
    """``membership-events``: a member's activity worth counting (a purchase, a cancellation)."""

    message_id: uuid.UUID
    type: Literal["purchase_confirmed", "purchase_cancelled"]
    reservation_id: uuid.UUID
    event_id: EventId
    user_id: UserId
    seats: int = Field(ge=0, le=MAX_SEATS_PER_RESERVATION)
    at: datetime = Field(default_factory=utc_now)


class QueueEvent(WireModel):
    """``queue-events`` as the queue service produces them (its ``id`` is the message id)."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    type: Literal["entered", "admitted", "left", "expired"]
    event_id: EventId
    user_id: UserId
    position: int | None = None
    at: float | str | None = None


RecordT = TypeVar("RecordT", bound=WireModel)


def parse_record(model: type[RecordT], value: bytes | None) -> RecordT:
    """A Kafka record's value as ``model``; ``MalformedMessage`` when it is not one."""
    if value is None:
        raise MalformedMessage("the record has no value")
    data = _load_object(value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise MalformedMessage(_summary(exc)) from exc


def _load_object(raw: str | bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedMessage("not a JSON object")
    return data


def _summary(exc: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False)[:5]
    ]
    return "; ".join(parts)


def outcome_message_id(reservation_id: uuid.UUID, status: str) -> uuid.UUID:
    """A stable id for 'reservation X ended with status S': a re-publication of the same
    outcome carries the same id, so every consumer can drop the copy."""
    return uuid.uuid5(reservation_id, f"outcome:{status}")
