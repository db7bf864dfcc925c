"""Settings of the booking back end (env prefix ``URR_``, nested with ``__``).

One class, ``TicketWorkerSettings``, serves the Lambda handler and every long-running process
of this package; each process only differs in the port of its health listener, so each has a
small subclass with its own default port.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from urr_common.settings import (
    AwsSettings,
    HttpSettings,
    KafkaSettings,
    PostgresSettings,
    ServiceSettings,
)


class SqsSettings(BaseModel):
    """The booking command queue (FIFO) and its dead-letter queue."""

    queue_name: str = "ticket-events.fifo"
    dlq_name: str = "ticket-events-dlq.fifo"
    #: Receives before SQS moves a message to the DLQ (the queue's redrive policy).
    max_receive_count: int = Field(default=3, ge=1, le=1000)
    #: The local poller's receive batch and long-poll wait (the Lambda event source's).
    batch_size: int = Field(default=10, ge=1, le=10)
    wait_time_s: int = Field(default=5, ge=0, le=20)
    #: How long a received message stays invisible; a failed one is retried after it.
    visibility_timeout_s: int = Field(default=30, ge=0, le=43_200)
    #: How long the ticket API gathers booking commands into one ``SendMessageBatch`` (up to
    #: 10 entries) before sending: 0 sends what one event-loop tick gathered. A booking burst
    #: then costs a tenth of the SQS calls (and of the client's per-call work).
    send_batch_window_s: float = Field(default=0.002, ge=0.0, le=0.05)
    #: How many ``SendMessageBatch`` calls may be under way before a batch short of 10
    #: entries waits for one of them to be answered (gathering what comes meanwhile; a full
    #: batch always leaves at once): in a burst the window alone sent ~28 calls for 110
    #: commands, 12 of them single, because replies come a few milliseconds apart.
    send_max_calls: int = Field(default=2, ge=1, le=100)


class BookingSettings(BaseModel):
    #: How long a reservation may wait for its payment outcome before it expires.
    payment_window_s: int = Field(default=600, ge=5)
    #: How long a request may stay ``pending`` (never reached the worker) before it expires.
    pending_window_s: int = Field(default=900, ge=5)


class RelaySettings(BaseModel):
    #: Outbox rows read (and published, one by one in order) per round.
    batch_size: int = Field(default=100, ge=1, le=10_000)
    #: Sleep between rounds when the outbox is empty.
    idle_poll_s: float = Field(default=0.2, gt=0.0, le=10.0)
    #: Sleep after Kafka failed before trying again.
    retry_s: float = Field(default=1.0, gt=0.0, le=60.0)
    #: The Lambda also publishes the outbox right after its batch (lower latency); the relay
    #: process stays the guarantee. Bounded so a dead Kafka never slows the batch down much.
    flush_after_batch: bool = True
    flush_timeout_s: float = Field(default=2.0, gt=0.0, le=30.0)
    #: Every ``expire_every_s`` the relay expires overdue reservations.
    expire_every_s: float = Field(default=5.0, gt=0.0, le=3600.0)


class PaymentSettings(BaseModel):
    """The payment stand-in: how often it declines and how long it 'thinks'."""

    decline_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    delay_ms: int = Field(default=200, ge=0, le=60_000)


class ConsumerSettings(BaseModel):
    #: Kafka consumer groups of the booking consumers.
    stats_group: str = "urr-stats"
    payment_group: str = "urr-payment"
    outcomes_group: str = "urr-ticket-outcomes"
    max_records: int = Field(default=100, ge=1, le=10_000)
    #: How long the broker may hold a fetch with no new records. Each consumer hop of a
    #: booking waits up to this much (Tansu holds fetches), so keep it short; idle fetches
    #: are cheap.
    fetch_max_wait_ms: int = Field(default=100, ge=1, le=10_000)
    #: The stats consumer's own wait: its counts feed a statistics page, not a booking, so
    #: a record may wait for it (Tansu delivered one to an idle consumer in 0.21 s at the
    #: median and 0.41 s at most at 1,000 ms, 0.02 s at 100 ms), and an idle stats consumer
    #: fetches a tenth as often (bench/kafka_idle_cpu.py: 0.66 -> 0.22 CPU s a minute).
    stats_fetch_max_wait_ms: int = Field(default=1_000, ge=1, le=10_000)
    #: How long the broker keeps a silent member in the group, and how often members say
    #: they are alive (aiokafka's defaults). A member joining after another left waits up
    #: to the session timeout for the group to settle, so tests that restart a consumer in
    #: the same group set both small.
    session_timeout_ms: int = Field(default=10_000, ge=1_000, le=300_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100, le=100_000)


class TicketWorkerSettings(ServiceSettings):
    service_name: str = "ticket-worker"
    postgres: PostgresSettings = Field(
        default_factory=lambda: PostgresSettings(min_connections=0, max_connections=2)
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    aws: AwsSettings = Field(default_factory=AwsSettings)
    sqs: SqsSettings = Field(default_factory=SqsSettings)
    booking: BookingSettings = Field(default_factory=BookingSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    payment: PaymentSettings = Field(default_factory=PaymentSettings)
    consumers: ConsumerSettings = Field(default_factory=ConsumerSettings)


class PollerSettings(TicketWorkerSettings):
    service_name: str = "ticket-poller"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3020))


class RelayProcessSettings(TicketWorkerSettings):
    service_name: str = "ticket-relay"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3021))


class PaymentProcessSettings(TicketWorkerSettings):
    service_name: str = "ticket-payment"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3022))


class StatsProcessSettings(TicketWorkerSettings):
    service_name: str = "ticket-stats"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3023))
