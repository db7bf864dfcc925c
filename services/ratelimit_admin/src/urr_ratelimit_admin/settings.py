"""The rate-limit admin service's settings (env prefix ``URR_``, nested with ``__``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from urr_common.settings import HttpSettings, PostgresSettings, RedisSettings, ServiceSettings
from urr_common.upstream_security import UpstreamIdentitySettings

ADMIN_PORT = 3040


class AdminHttpSettings(HttpSettings):
    port: int = Field(default=ADMIN_PORT, ge=0, le=65535)


class PublishSettings(BaseModel):
    #: Redis is brought up to date with PostgreSQL at least this often (after an outage).
    republish_every_s: float = Field(default=1.0, gt=0.0, le=60.0)


class LocalTrialSettings(BaseModel):
    """``URR_LOCAL_TRIAL__BROWSERS``: browsers sharing this machine's address in a local
    trial; the published ``auth`` policy allows that many times its limit (``local_trial``)."""

    browsers: int = Field(default=1, ge=1, le=50)


class RatelimitAdminSettings(ServiceSettings):
    service_name: str = "ratelimit-admin"
    http: AdminHttpSettings = Field(default_factory=AdminHttpSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
    #: The gateway keys whose identity assertions this service believes (``URR_IDENTITY__*``).
    identity: UpstreamIdentitySettings = Field(default_factory=UpstreamIdentitySettings)
    local_trial: LocalTrialSettings = Field(default_factory=LocalTrialSettings)

    @model_validator(mode="after")
    def _trial_is_local_only(self) -> RatelimitAdminSettings:
        if self.local_trial.browsers > 1 and self.environment not in ("local", "test"):
            raise ValueError(
                "URR_LOCAL_TRIAL__BROWSERS widens AUTH's per-address limit for a laptop trial; "
                f"it must stay 1 in {self.environment}"
            )
        return self


#: The snapshot scheduler's health listener (its /metrics listener is this + 1000).
SNAPSHOTS_PORT = 3041


class SnapshotHttpSettings(HttpSettings):
    port: int = Field(default=SNAPSHOTS_PORT, ge=0, le=65535)


class SnapshotSettings(BaseModel):
    #: The current hour's rows are refreshed this often (and the lag metric's resolution).
    every_s: float = Field(default=15.0, gt=0.0, le=600.0)
    #: An hour is final once this long has passed after its end: decisions that began in it
    #: may still be counting when it ends.
    close_grace_s: int = Field(default=120, ge=0, le=1800)
    #: Redis commands per pipeline (one round trip each).
    batch_keys: int = Field(default=500, ge=1, le=10_000)
    #: Closed hours written per round while catching up, so one round stays short.
    max_hours_per_round: int = Field(default=24, ge=1, le=24 * 8)
    #: On the very first start (no watermark yet), how far back to collect: at most as long
    #: as the usage hashes live in Redis (8 days).
    first_start_backfill_h: int = Field(default=24, ge=0, le=24 * 8)
    #: Readiness fails when no round has completed for this long.
    stale_after_s: float = Field(default=120.0, gt=0.0)


class RatelimitSnapshotSettings(ServiceSettings):
    """``python -m urr_ratelimit_admin.snapshots``: hourly usage rows from Redis counters."""

    service_name: str = "ratelimit-usage"
    http: SnapshotHttpSettings = Field(default_factory=SnapshotHttpSettings)
    postgres: PostgresSettings = Field(
        default_factory=lambda: PostgresSettings(min_connections=1, max_connections=2)
    )
    redis: RedisSettings = Field(default_factory=RedisSettings)
    snapshots: SnapshotSettings = Field(default_factory=SnapshotSettings)
