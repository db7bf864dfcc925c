"""The queue service's settings (env prefix ``URR_``, nested blocks with ``__``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator

from urr_common.settings import (
    AwsSettings,
    HttpSettings,
    KafkaSettings,
    RedisSettings,
    ServiceSettings,
    TokenKeySettings,
    TrustedKeysSettings,
)
from urr_common.upstream_security import InternalListenerSettings, UpstreamIdentitySettings
from urr_queue.console.settings import ConsoleSettings

QUEUE_PORT = 3007


# The queue's defaults live on subclasses, not in ``default_factory`` values: when one
# variable of a block is set (``URR_HTTP__HOST``), the block is built from the environment
# alone and a factory's values would be lost (the port would fall back to 8080, the token
# issuer to "urr").


class QueueHttpSettings(HttpSettings):
    port: int = Field(default=QUEUE_PORT, ge=1, le=65535)


class EntryTokenSettings(TokenKeySettings):
    """Signing block of the Tier-2 entry tokens (``URR_ENTRY_TOKENS__*``)."""

    private_key_file: Path = Path(".urr/keys/entry/local-1.pem")
    key_id: str = "local-1"
    issuer: str = "urr-queue"
    audience: str = "urr-entry"


class VwrTrustSettings(TrustedKeysSettings):
    """Trust block of the Tier-1 tokens (``URR_VWR_TRUST__*``).

    The default is a glob, expanded when the app starts and again when a token names an
    unknown kid, so a new Tier-1 key dropped into the folder is picked up without a restart.
    """

    public_key_files: list[Path] = Field(
        default_factory=lambda: [Path(".urr/keys/vwr/public/*.pem")]
    )
    issuer: str = "urr-vwr"
    audience: str = "urr-vwr"


class AdmissionSettings(BaseModel):
    """The admission loop every replica runs; ticks of all replicas interleave safely."""

    enabled: bool = True
    #: Time between two ticks of one event on this replica (the issue asks for <= 1 s).
    tick_interval_s: float = Field(default=0.5, gt=0.0, le=1.0)
    #: Most waiters one tick admits, whatever the budget (bounds one script's run time;
    #: Lua's unpack() limit of 8000 arguments bounds it too).
    max_admit_per_tick: int = Field(default=2_000, ge=1, le=3_000)
    #: Most waiters one tick looks at (admitted plus dropped as idle).
    max_scan_per_tick: int = Field(default=5_000, ge=1, le=5_000)
    #: Most expired sessions one tick removes.
    max_expire_per_tick: int = Field(default=2_000, ge=1, le=3_000)
    #: Events ticked at the same time on this replica.
    concurrency: int = Field(default=16, ge=1, le=256)
    #: Events behind a Tier-1 room: how long a free slot is held for a lower Tier-1 number
    #: that was released but has not reached the queue yet (its holder learns of the release
    #: at the next poll). After that the missing numbers are waived and admission goes on;
    #: 0 turns the hold off (admission in the order users reach the queue's front).
    tier1_order_grace_s: float = Field(default=5.0, ge=0.0, le=60.0)


class QueueEventsSettings(BaseModel):
    """``queue-events`` on Kafka: a bounded buffer drained in the background."""

    enabled: bool = True
    topic: str = "queue-events"
    buffer_size: int = Field(default=10_000, ge=1)
    #: Wait before reconnecting after the broker failed.
    retry_delay_s: float = Field(default=2.0, gt=0.0)


class OutboxSettings(BaseModel):
    """The admission outbox (``URR_OUTBOX__*``, issue 19): the ``admitted`` and ``waived``
    records the public admission log needs are written into a Redis stream per event by the
    tick that admits, and relayed to ``queue-events`` from there (``outbox.py``). Used while
    ``queue_events`` is enabled; with it off no record is written."""

    #: Most entries one event's outbox holds. At the cap (Kafka unreachable that long) the
    #: event's ticks admit nobody until the relay drains it (``urr_queue_outbox_full_ticks``):
    #: a record is never trimmed. A tick may pass the cap by its own records (at most
    #: ``max_admit_per_tick`` plus its waivers). About 100-200 bytes of Redis memory an entry.
    max_len: int = Field(default=500_000, ge=1, le=50_000_000)
    #: Time between two relay rounds over the events' outboxes (each round: one small script
    #: per configured event, like a tick; the records reach Kafka this much later at most).
    interval_s: float = Field(default=0.5, gt=0.0, le=10.0)
    #: Entries one send to Kafka carries (acknowledged together, then deleted).
    batch_size: int = Field(default=1_000, ge=1, le=10_000)
    #: How long one replica's claim to relay an event's outbox lasts without renewal (each
    #: round renews it); after a replica dies another takes over within this time.
    lease_ttl_s: float = Field(default=10.0, ge=1.0, le=300.0)
    #: Wait before reconnecting after the broker failed.
    retry_delay_s: float = Field(default=2.0, gt=0.0, le=60.0)
    #: Longest one attempt may take: opening the producer, or relaying one event's batches
    #: (aiokafka waits for a topic's metadata and for acknowledgements on its own clocks, and a
    #: broker that accepts connections but does not answer would hold the relay). Past it the
    #: attempt counts as a broker failure and is retried after ``retry_delay_s``.
    attempt_timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)

    @model_validator(mode="after")
    def _renewed_before_it_lapses(self) -> Self:
        if self.interval_s * 3 > self.lease_ttl_s:
            raise ValueError("outbox lease_ttl_s must be at least 3 x interval_s")
        return self


class ReservationEventsSettings(BaseModel):
    """``reservation-events`` consumer that ends admitted sessions when a booking is done."""

    enabled: bool = True
    topic: str = "reservation-events"
    group_id: str = "urr-queue"
    #: Where a brand-new consumer group starts. ``latest`` so a new deployment does not replay
    #: old bookings onto today's sessions.
    auto_offset_reset: str = "latest"
    #: How long a processed (reservationId, status) pair is remembered for deduplication.
    dedupe_ttl_s: int = Field(default=86_400, ge=60)
    retry_delay_s: float = Field(default=2.0, gt=0.0)


class Tier1PlacesSettings(BaseModel):
    """Marking spent Tier-1 places in the Tier-1 ``positions`` table (``tier1_marks.py``).

    Tier 2 refuses a spent place's pass whatever this does; the mark only stops ``/vwr/check``
    from handing the pass out again.
    """

    enabled: bool = True
    #: The Tier-1 positions table (the VWR's ``URR_TABLES__POSITIONS``).
    table: str = Field(default="positions", min_length=3, max_length=255)
    #: Time between two rounds over the events' outboxes.
    interval_s: float = Field(default=1.0, gt=0.0, le=60.0)
    #: Most places one round marks per event (one conditional UpdateItem each, in parallel).
    batch_size: int = Field(default=100, ge=1, le=1_000)
    #: How the marks are sent: ``lean`` (signed JSON on kept-alive connections, a fraction of
    #: botocore's CPU per mark) or ``botocore`` (the aioboto3 client; the way back if the lean
    #: path ever misbehaves).
    client: Literal["lean", "botocore"] = "lean"


class FiguresSettings(BaseModel):
    """The per-event gauges on ``/metrics`` (``URR_FIGURES__*``), copied from Redis."""

    enabled: bool = True
    #: Time between two copies; a scrape sees figures at most this old.
    interval_s: float = Field(default=5.0, gt=0.0, le=60.0)


class QueueSettings(ServiceSettings):
    service_name: str = "urr-queue"
    http: QueueHttpSettings = Field(default_factory=QueueHttpSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    #: How the store sends its scripts (every request's Redis work) to a single Redis:
    #: ``lean`` (one pipelined connection, pre-encoded commands parsed by hiredis:
    #: ``urr_common.resp.RespLane``, a fraction of redis-py's CPU per command) or ``redis-py``
    #: (the client's own commands; the way back if the lean path ever misbehaves). A Redis
    #: Cluster always goes through redis-py (``URR_STORE_CLIENT``).
    store_client: Literal["lean", "redis-py"] = "lean"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    entry_tokens: EntryTokenSettings = Field(default_factory=EntryTokenSettings)
    vwr_trust: VwrTrustSettings = Field(default_factory=VwrTrustSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    queue_events: QueueEventsSettings = Field(default_factory=QueueEventsSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    reservation_events: ReservationEventsSettings = Field(default_factory=ReservationEventsSettings)
    #: DynamoDB of the Tier-1 room (``URR_AWS__*``), for ``tier1_places``.
    aws: AwsSettings = Field(default_factory=AwsSettings)
    tier1_places: Tier1PlacesSettings = Field(default_factory=Tier1PlacesSettings)
    figures: FiguresSettings = Field(default_factory=FiguresSettings)
    #: The operator console (``console/``), ``URR_CONSOLE__*``.
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    #: ``Secure`` attribute of the ``urr-entry-token`` cookie (on wherever the site uses TLS).
    cookie_secure: bool = False
    #: Width of one heartbeat bucket. Written into an event's configuration when the event is
    #: created and fixed for its life, so replicas with different settings still agree.
    heartbeat_bucket_ms: int = Field(default=5_000, ge=100, le=60_000)
    #: The gateway keys whose identity assertions this service believes (``URR_IDENTITY__*``).
    identity: UpstreamIdentitySettings = Field(default_factory=UpstreamIdentitySettings)
    #: The listener of ``/internal/...`` and who may call it (``URR_INTERNAL__*``).
    internal: InternalListenerSettings = Field(default_factory=InternalListenerSettings)

    @model_validator(mode="after")
    def _internal_port_is_its_own(self) -> Self:
        self.internal.check_port(self.http.port, self.metrics_port)
        return self
