"""Per-event configuration: what operators set through the admin API, as stored in Redis."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from urr_common.fairness import QueueMethod, is_hex64

#: Three polls at the shortest interval the poll advice gives (2 s).
MIN_IDLE_TIMEOUT_S = 6


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _epoch_ms(moment: datetime | None) -> str:
    return (
        "" if moment is None else str(int(moment.timestamp()) * 1000 + moment.microsecond // 1000)
    )


def _from_epoch_ms(text: str) -> datetime | None:
    return datetime.fromtimestamp(int(text) / 1000, tz=UTC) if text else None


class Mode(StrEnum):
    """How an event lets people in."""

    #: Waiters are admitted in order as capacity and the admission rate allow.
    QUEUE = "queue"
    #: Everyone is admitted at once (capacity and rate are not applied).
    PASSTHROUGH = "passthrough"
    #: Nobody is admitted; people may still join the queue.
    PAUSED = "paused"
    #: Nobody may join; those already waiting are still admitted.
    CLOSED = "closed"


class EventConfig(BaseModel):
    """An event's settings; every field has a default so an event can be created empty."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Most users admitted at the same time.
    capacity: int = Field(default=100, ge=1, le=1_000_000)
    #: Most admissions per second (a token bucket shared by every replica).
    admit_per_second: float = Field(default=10.0, gt=0.0, le=100_000.0)
    #: Length of an admitted session; fixed at admission, polling does not renew it.
    session_seconds: int = Field(default=600, ge=1, le=86_400)
    #: A waiter who has not polled for this long loses the place when it reaches the front.
    #: At least three polls at the shortest advised interval (2 s) fit in it.
    idle_timeout_seconds: int = Field(default=60, ge=MIN_IDLE_TIMEOUT_S, le=3_600)
    #: Only holders of a valid Tier-1 token may join; places follow the signed position.
    require_tier1_token: bool = False
    mode: Mode = Mode.QUEUE
    #: How the line is ordered (``urr_common.fairness``): fifo, random, passthrough, reject.
    #: Behind a Tier-1 room the room's method orders the line (by its signed positions).
    queue_method: QueueMethod = QueueMethod.FIFO
    #: The scheduled pre-queue (issue 19): who joins from ``prequeue_start`` until
    #: ``sale_start`` is on the roster, shuffled at sale start by the secret whose SHA-256 is
    #: ``prequeue_commitment``. All three or none; set once.
    prequeue_start: AwareDatetime | None = None
    sale_start: AwareDatetime | None = None
    prequeue_commitment: str | None = None

    @field_validator("prequeue_start", "sale_start")
    @classmethod
    def _to_milliseconds(cls, value: datetime | None) -> datetime | None:
        # Stored as epoch milliseconds: the same time given again must compare equal.
        if value is None:
            return None
        return value.replace(microsecond=value.microsecond // 1000 * 1000)

    @model_validator(mode="after")
    def _prequeue_is_whole(self) -> EventConfig:
        start, sale, commitment = self.prequeue_start, self.sale_start, self.prequeue_commitment
        if start is None and sale is None and commitment is None:
            return self
        if start is None or sale is None or commitment is None:
            raise ValueError("a pre-queue needs prequeue_start, sale_start and prequeue_commitment")
        if not is_hex64(commitment):
            raise ValueError("prequeue_commitment must be 64 lowercase hex digits")
        if sale <= start:
            raise ValueError("sale_start must come after prequeue_start")
        if self.queue_method is not QueueMethod.FIFO:
            # Behind a Tier-1 room (require_tier1_token) later arrivals go by Tier-1 number.
            raise ValueError(
                "a pre-queue orders later arrivals by arrival: it needs queue_method fifo"
            )
        return self

    @property
    def has_prequeue(self) -> bool:
        return self.prequeue_commitment is not None

    def to_redis(self) -> dict[str, str]:
        return {
            "capacity": str(self.capacity),
            "admit_per_second": repr(float(self.admit_per_second)),
            "session_ms": str(self.session_seconds * 1000),
            "idle_ms": str(self.idle_timeout_seconds * 1000),
            "require_tier1": "1" if self.require_tier1_token else "0",
            "mode": self.mode.value,
            "queue_method": self.queue_method.value,
            "prequeue_start_ms": _epoch_ms(self.prequeue_start),
            "sale_start_ms": _epoch_ms(self.sale_start),
            "prequeue_commitment": self.prequeue_commitment or "",
        }

    @classmethod
    def from_redis(cls, fields: Mapping[Any, Any]) -> EventConfig:
        text = {_text(key): _text(value) for key, value in fields.items()}
        return cls(
            capacity=int(text["capacity"]),
            admit_per_second=float(text["admit_per_second"]),
            session_seconds=int(text["session_ms"]) // 1000,
            idle_timeout_seconds=int(text["idle_ms"]) // 1000,
            require_tier1_token=text["require_tier1"] == "1",
            mode=Mode(text["mode"]),
            queue_method=QueueMethod(text.get("queue_method", QueueMethod.FIFO.value)),
            prequeue_start=_from_epoch_ms(text.get("prequeue_start_ms", "")),
            sale_start=_from_epoch_ms(text.get("sale_start_ms", "")),
            prequeue_commitment=text.get("prequeue_commitment") or None,
        )

    @property
    def steady_rate(self) -> float:
        """Admissions per second the event sustains once full: a prior before measurements.

        At most the configured rate, and at most capacity / session length (if every admitted
        user keeps the full session, that many slots free up per second).
        """
        return min(self.admit_per_second, self.capacity / self.session_seconds)


class EventConfigPatch(BaseModel):
    """An admin update: only the fields given change; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    capacity: int | None = Field(default=None, ge=1, le=1_000_000)
    admit_per_second: float | None = Field(default=None, gt=0.0, le=100_000.0)
    session_seconds: int | None = Field(default=None, ge=1, le=86_400)
    idle_timeout_seconds: int | None = Field(default=None, ge=MIN_IDLE_TIMEOUT_S, le=3_600)
    require_tier1_token: bool | None = None
    mode: Mode | None = None
    queue_method: QueueMethod | None = None
    prequeue_start: AwareDatetime | None = None
    sale_start: AwareDatetime | None = None
    prequeue_commitment: str | None = None
    #: The random method's seed (64 hex digits), set once: given when the event is created,
    #: or drawn by the service. Kept apart from the configuration (it is a secret).
    order_seed: str | None = None

    @field_validator("order_seed", "prequeue_commitment")
    @classmethod
    def _is_hex64(cls, value: str | None) -> str | None:
        if value is not None and not is_hex64(value):
            raise ValueError("must be 64 lowercase hex digits")
        return value

    def apply_to(self, current: EventConfig) -> EventConfig:
        changes = self.model_dump(exclude_none=True, exclude={"order_seed"})
        return EventConfig.model_validate({**current.model_dump(), **changes})
