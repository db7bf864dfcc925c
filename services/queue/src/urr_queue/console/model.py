"""What the console shows and accepts, as plain data: no I/O here.

An event's row joins three sources that may each be missing (an event can have a Tier-1 room
and no Tier-2 queue, or seats and neither); a missing source is ``None`` and the page says
"not configured", never a made-up zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from urr_queue.config import EventConfig, EventConfigPatch, Mode
from urr_queue.estimates import eta_seconds
from urr_queue.store import Figures


@dataclass(frozen=True)
class Tier1Row:
    is_active: bool
    next_position: int
    serving_counter: int
    updated_at_ms: int

    @property
    def waiting(self) -> int:
        return max(0, self.next_position - self.serving_counter)


@dataclass(frozen=True)
class Tier2Row:
    mode: str
    capacity: int
    admit_per_second: float
    waiting: int
    admitted: int
    admitted_last_minute: int
    admission_rate_per_second: float | None
    oldest_waiter_seconds: float | None
    eta_seconds: int | None
    #: What the console's reveal buttons need: the method (``random`` has an order seed to
    #: reveal once the line is over) and a pre-queue's sale start (RFC 3339; its secret is
    #: revealed after it).
    queue_method: str = "fifo"
    sale_start: str | None = None

    @classmethod
    def from_figures(cls, figures: Figures) -> Tier2Row:
        config = figures.config
        rate = figures.expected_rate()
        oldest = figures.oldest_wait_ms
        return cls(
            mode=config.mode.value,
            capacity=config.capacity,
            admit_per_second=config.admit_per_second,
            waiting=figures.waiting,
            admitted=figures.admitted,
            admitted_last_minute=figures.admitted_last_minute,
            admission_rate_per_second=None if rate is None else round(rate, 3),
            oldest_waiter_seconds=None if oldest is None else round(oldest / 1000, 1),
            eta_seconds=eta_seconds(figures.waiting, rate) if figures.waiting else 0,
            queue_method=config.queue_method.value,
            sale_start=(
                config.sale_start.isoformat()
                if config.has_prequeue and config.sale_start is not None
                else None
            ),
        )


@dataclass(frozen=True)
class SeatCounts:
    name: str
    total: int
    #: Seats in a reservation waiting for payment (the seat is taken, not yet paid).
    held: int
    #: Seats of confirmed reservations.
    sold: int


@dataclass(frozen=True)
class EventView:
    event_id: str
    tier1: Tier1Row | None
    tier2: Tier2Row | None
    seats: SeatCounts | None

    def to_json(self) -> dict[str, Any]:
        tier1 = (
            None if self.tier1 is None else {**asdict(self.tier1), "waiting": self.tier1.waiting}
        )
        return {
            "event_id": self.event_id,
            "name": self.seats.name if self.seats else None,
            "tier1": tier1,
            "tier2": None if self.tier2 is None else asdict(self.tier2),
            "seats": None if self.seats is None else asdict(self.seats),
        }

    def sample(self) -> dict[str, float | int | None]:
        """The numbers the sparklines draw, one point of history."""
        tier1, tier2, seats = self.tier1, self.tier2, self.seats
        return {
            "t1_waiting": tier1.waiting if tier1 else None,
            "t1_serving": tier1.serving_counter if tier1 else None,
            "t2_waiting": tier2.waiting if tier2 else None,
            "t2_admitted": tier2.admitted if tier2 else None,
            "t2_rate": tier2.admission_rate_per_second if tier2 else None,
            "sold": seats.sold if seats else None,
            "held": seats.held if seats else None,
        }


def join_events(
    tier1: Mapping[str, Tier1Row],
    tier2: Mapping[str, Tier2Row],
    seats: Mapping[str, SeatCounts],
) -> list[EventView]:
    """Every event any source knows, in id order."""
    ids = sorted(set(tier1) | set(tier2) | set(seats))
    return [EventView(i, tier1.get(i), tier2.get(i), seats.get(i)) for i in ids]


def refusals_total(counts: Mapping[str, int]) -> int:
    return sum(counts.values())


def series(
    samples: Sequence[Mapping[str, Any]], fields: Iterable[str]
) -> dict[str, list[float | int | None]]:
    """Oldest-first value lists per field (``samples`` come newest first from the ring)."""
    ordered = list(reversed(samples))
    return {field: [sample.get(field) for sample in ordered] for field in fields}


def per_interval(values: Sequence[float | int | None]) -> list[float | int | None]:
    """Differences of a cumulative counter between samples (a reset shows as the new value)."""
    out: list[float | int | None] = []
    previous: float | int | None = None
    for value in values:
        if value is None or previous is None:
            out.append(None)
        else:
            out.append(value - previous if value >= previous else value)
        previous = value
    return out


class ConsoleChange(BaseModel):
    """One confirmed change from the console; only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode | None = None
    capacity: int | None = Field(default=None, ge=1, le=1_000_000)
    admit_per_second: float | None = Field(default=None, gt=0.0, le=100_000.0)
    #: The Tier-1 waiting room of the event on (true) or off.
    waiting_room_active: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.model_fields_set or all(
            getattr(self, name) is None for name in self.model_fields_set
        ):
            raise ValueError(
                "name at least one of mode, capacity, admit_per_second, waiting_room_active"
            )
        return self

    def tier2_patch(self) -> EventConfigPatch | None:
        fields = {
            name: getattr(self, name)
            for name in ("mode", "capacity", "admit_per_second")
            if getattr(self, name) is not None
        }
        return EventConfigPatch(**fields) if fields else None


TIER2_FIELDS = ("mode", "capacity", "admit_per_second")


def tier2_before_after(
    before: EventConfig, after: EventConfig, patch: EventConfigPatch
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields the patch names, as they were and as they are (JSON values)."""
    named = [name for name in TIER2_FIELDS if getattr(patch, name) is not None]
    old = before.model_dump(mode="json")
    new = after.model_dump(mode="json")
    return {name: old[name] for name in named}, {name: new[name] for name in named}


@dataclass(frozen=True)
class AuditRecord:
    """Who changed what, from what to what, and when (Redis's clock, ms)."""

    at_ms: int
    actor: str
    event_id: str
    before: dict[str, Any]
    after: dict[str, Any]
    request_id: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
