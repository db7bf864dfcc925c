"""Settings of the ticket API and its reservation-outcome consumer (env prefix ``URR_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

from urr_common.settings import (
    AwsSettings,
    HttpSettings,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    ServiceSettings,
)
from urr_common.upstream_security import ServiceCredentialSettings, UpstreamIdentitySettings
from urr_ticket_worker.settings import BookingSettings, ConsumerSettings, SqsSettings

#: Shortest reservation-id key accepted (characters; 32 random ones carry >= 128 bits).
RESERVATION_KEY_MIN_LENGTH = 32


class ReservationIdSettings(BaseModel):
    """Reservation ids are an HMAC-SHA256 of the request (event, user, seat holds) under this
    key: the same request gets the same id, but no client can compute one. Every replica of
    the API must share it (``URR_RESERVATION_IDS__KEY``). The API refuses to start without it
    in staging and prod (``ReservationIds.from_settings``; checked there, not here, because
    it comes from a Secret that manifest checks cannot see, and only the API derives ids);
    unset in local and test, each process makes a random one at start-up."""

    key: SecretStr | None = None

    @field_validator("key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < RESERVATION_KEY_MIN_LENGTH:
            raise ValueError(f"must be at least {RESERVATION_KEY_MIN_LENGTH} characters")
        return value


class UserDirectorySettings(BaseModel):
    """Where transfer recipients are looked up: read-only, in the auth service's table
    (``auth.users``, id ``uuid``). Auth and ticket share one PostgreSQL database (``urr``),
    so the ticket API checks ``SELECT 1 FROM <table> WHERE <id_column>::text = $1``; it
    never writes there. In production grant the ticket role SELECT on that table only.
    """

    table: str = Field(
        default="auth.users", pattern=r"^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$"
    )
    id_column: str = Field(default="id", pattern=r"^[a-z_][a-z0-9_]{0,62}$")


class QueueAdminSettings(BaseModel):
    """The queue service, which the seed command configures for the demo event: on its
    internal listener (``PUT /internal/v1/queue/{eventId}/config``), with the ticket
    service's credential (``URR_QUEUE_CREDENTIAL__*``)."""

    base_url: str = "http://127.0.0.1:5007"
    attempts: int = Field(default=10, ge=1, le=100)
    retry_s: float = Field(default=1.0, gt=0.0, le=60.0)


class QueueCompletionSettings(BaseModel):
    """Ending a user's Tier-2 session when their reservation ends. The queue service consumes
    ``reservation-events`` itself (the primary path); this optional HTTP call to its
    ``POST /internal/v1/queue/{eventId}/complete`` is a belt-and-braces fallback, on the
    queue's internal listener with the ``URR_QUEUE_CREDENTIAL__*`` credential."""

    http_fallback: bool = False
    base_url: str = "http://127.0.0.1:5007"
    timeout_s: float = Field(default=2.0, gt=0.0, le=30.0)


class TicketSettings(ServiceSettings):
    service_name: str = "ticket"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3002))
    redis: RedisSettings = Field(default_factory=RedisSettings)
    #: How the seat holds' hot commands reach a single Redis (``URR_SEAT_HOLDS_CLIENT``):
    #: ``lean`` (the hold script and the hold reads over one pipelined connection,
    #: ``urr_common.resp.RespLane``, as the queue's store) or ``redis-py`` (the client's own
    #: commands; the way back if the lean path ever misbehaves). A Redis Cluster, or a pool
    #: of one connection, always goes through redis-py.
    seat_holds_client: Literal["lean", "redis-py"] = "lean"
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    aws: AwsSettings = Field(default_factory=AwsSettings)
    sqs: SqsSettings = Field(default_factory=SqsSettings)
    booking: BookingSettings = Field(default_factory=BookingSettings)
    reservation_ids: ReservationIdSettings = Field(default_factory=ReservationIdSettings)
    users: UserDirectorySettings = Field(default_factory=UserDirectorySettings)
    queue_admin: QueueAdminSettings = Field(default_factory=QueueAdminSettings)
    queue_completion: QueueCompletionSettings = Field(default_factory=QueueCompletionSettings)
    #: This service's name and secret at the queue's internal listener (its
    #: ``URR_INTERNAL__CALLERS`` entry), for the seed and the completion fallback.
    queue_credential: ServiceCredentialSettings = Field(default_factory=ServiceCredentialSettings)
    #: The gateway keys whose identity assertions this service believes (``URR_IDENTITY__*``).
    identity: UpstreamIdentitySettings = Field(default_factory=UpstreamIdentitySettings)
    consumers: ConsumerSettings = Field(default_factory=ConsumerSettings)


class OutcomeSettings(TicketSettings):
    """The reservation-outcome consumer process (health listener on its own port)."""

    service_name: str = "ticket-outcomes"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3024))
