"""The rate-limit admin service's settings (env prefix ``URR_``, nested with ``__``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from urr_common.settings import HttpSettings, PostgresSettings, RedisSettings, ServiceSettings

ADMIN_PORT = 3040


class AdminHttpSettings(HttpSettings):
    port: int = Field(default=ADMIN_PORT, ge=0, le=65535)


class PublishSettings(BaseModel):
    #: Redis is brought up to date with PostgreSQL at least this often (after an outage).
    republish_every_s: float = Field(default=1.0, gt=0.0, le=60.0)


class RatelimitAdminSettings(ServiceSettings):
    service_name: str = "ratelimit-admin"
    http: AdminHttpSettings = Field(default_factory=AdminHttpSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
