"""Stand-ins for the settings classes of services not merged into this branch yet.

Each mirrors the settings contract of its service (DESIGN.md §3-4, the brief's conventions):
the same blocks, field names and local defaults, built from ``urr_common`` blocks. A stand-in
is only used while its real module cannot be imported (``import_settings_class``); once the
service is merged the real class answers and the stand-in here should be deleted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings

from urr_common.settings import (
    AwsSettings,
    HttpSettings,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    ServiceSettings,
    TokenKeySettings,
    TrustedKeysSettings,
)


class _Upstreams(BaseModel):
    auth: str = "http://127.0.0.1:3005"
    queue: str = "http://127.0.0.1:3007"
    ticket: str = "http://127.0.0.1:3002"


class _Internal(BaseModel):
    host: str = "127.0.0.1"
    port: int = 3011


class GatewayStandIn(ServiceSettings):
    service_name: str = "gateway"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3001))
    redis: RedisSettings = Field(default_factory=RedisSettings)
    access_trust: TrustedKeysSettings = Field(
        default_factory=lambda: TrustedKeysSettings(
            jwks_url="http://127.0.0.1:3005/.well-known/jwks.json",
            issuer="urr-auth",
            audience="urr",
        )
    )
    entry_trust: TrustedKeysSettings = Field(
        default_factory=lambda: TrustedKeysSettings(
            jwks_url="http://127.0.0.1:3007/.well-known/jwks.json",
            issuer="urr-queue",
            audience="urr-entry",
        )
    )
    upstreams: _Upstreams = Field(default_factory=_Upstreams)
    internal: _Internal = Field(default_factory=_Internal)


class AuthStandIn(ServiceSettings):
    service_name: str = "auth"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3005))
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    access_tokens: TokenKeySettings = Field(default_factory=TokenKeySettings)
    cookie_secure: bool = False


class QueueStandIn(ServiceSettings):
    service_name: str = "urr-queue"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3007))
    redis: RedisSettings = Field(default_factory=RedisSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    entry_tokens: TokenKeySettings = Field(default_factory=TokenKeySettings)
    vwr_trust: TrustedKeysSettings = Field(default_factory=TrustedKeysSettings)
    cookie_secure: bool = False


class _QueueAdmin(BaseModel):
    base_url: str = "http://127.0.0.1:3007"


class TicketStandIn(ServiceSettings):
    service_name: str = "ticket"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3002))
    redis: RedisSettings = Field(default_factory=RedisSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    aws: AwsSettings = Field(default_factory=AwsSettings)
    queue_admin: _QueueAdmin = Field(default_factory=_QueueAdmin)


class OutcomeStandIn(TicketStandIn):
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3024))


class _Sqs(BaseModel):
    queue_name: str = "ticket-events.fifo"
    dlq_name: str = "ticket-events-dlq.fifo"


class TicketWorkerStandIn(ServiceSettings):
    service_name: str = "ticket-worker"
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    aws: AwsSettings = Field(default_factory=AwsSettings)
    sqs: _Sqs = Field(default_factory=_Sqs)


class PollerStandIn(TicketWorkerStandIn):
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3020))


class RelayStandIn(TicketWorkerStandIn):
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3021))


class PaymentStandIn(TicketWorkerStandIn):
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3022))


class StatsStandIn(TicketWorkerStandIn):
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3023))


class _QueueFeed(BaseModel):
    url: str = "http://127.0.0.1:3007"


class _EdgeConfig(BaseModel):
    target: str = ".urr/vwr/edge-config.json"


class VwrStandIn(ServiceSettings):
    service_name: str = "urr-vwr"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3010))
    aws: AwsSettings = Field(default_factory=AwsSettings)
    vwr_tokens: TokenKeySettings = Field(default_factory=TokenKeySettings)
    vwr_trust: TrustedKeysSettings = Field(
        default_factory=lambda: TrustedKeysSettings(
            public_key_files=[Path(".urr/keys/vwr/public/local-1.pem")]
        )
    )
    access_trust: TrustedKeysSettings = Field(
        default_factory=lambda: TrustedKeysSettings(
            jwks_url="http://127.0.0.1:3005/.well-known/jwks.json"
        )
    )
    queue: _QueueFeed = Field(default_factory=_QueueFeed)
    edge_config: _EdgeConfig = Field(default_factory=_EdgeConfig)


class EdgeStandIn(ServiceSettings):
    service_name: str = "urr-vwr-edge"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=8000))
    gateway_url: str = "http://127.0.0.1:3001"
    api_url: str = "http://127.0.0.1:3010"
    edge_config: _EdgeConfig = Field(default_factory=_EdgeConfig)


class SchedulerStandIn(ServiceSettings):
    service_name: str = "urr-vwr-scheduler"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3011))
    interval_s: float = 10.0


STAND_INS: dict[str, type[BaseSettings]] = {
    "urr_gateway.settings:GatewaySettings": GatewayStandIn,
    "urr_auth.settings:AuthSettings": AuthStandIn,
    "urr_queue.settings:QueueSettings": QueueStandIn,
    "urr_ticket.settings:TicketSettings": TicketStandIn,
    "urr_ticket.settings:OutcomeSettings": OutcomeStandIn,
    "urr_ticket_worker.settings:PollerSettings": PollerStandIn,
    "urr_ticket_worker.settings:RelayProcessSettings": RelayStandIn,
    "urr_ticket_worker.settings:PaymentProcessSettings": PaymentStandIn,
    "urr_ticket_worker.settings:StatsProcessSettings": StatsStandIn,
    "urr_vwr_lambda.settings:VwrSettings": VwrStandIn,
    "urr_vwr_lambda.settings:EdgeEmulatorSettings": EdgeStandIn,
    "urr_vwr_lambda.settings:SchedulerSettings": SchedulerStandIn,
}


@pytest.fixture(scope="session")
def stand_ins() -> dict[str, type[BaseSettings]]:
    return STAND_INS
