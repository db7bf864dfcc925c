"""The admission log's settings (env prefix ``URR_``, nested blocks with ``__``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator

from urr_common.settings import (
    HttpSettings,
    KafkaSettings,
    PostgresSettings,
    ServiceSettings,
    TokenKeySettings,
)

LOG_PORT = 3030


class LogHttpSettings(HttpSettings):
    port: int = Field(default=LOG_PORT, ge=0, le=65535)


class TreeHeadKeySettings(TokenKeySettings):
    """The ES256 key tree heads are signed with (``URR_TREE_HEADS__*``), published as JWKS."""

    private_key_file: Path = Path(".urr/keys/log/local-1.pem")
    issuer: str = "urr-admission-log"


class LogOptions(BaseModel):
    """What the log consumes and serves (``URR_ADMISSION_LOG__*``)."""

    topic: str = "queue-events"
    consumer_group: str = "urr-admission-log"
    #: Keys the holder hashes (HMAC per event); rotating it changes future leaves only.
    holder_secret: SecretStr = SecretStr("local-only-holder-secret-change-me")
    #: How often a new tree head is signed for an event whose log grew.
    sign_every_s: float = Field(default=2.0, gt=0.0, le=300.0)
    #: How long the broker may hold the consumer's fetch while no record comes. The log is
    #: signed every ``sign_every_s`` and read by auditors, not by a visitor waiting, so a
    #: record may wait (Tansu delivered one to an idle consumer in 0.26 s at the median and
    #: 0.49 s at most at 1,000 ms, 0.03 s at the 200 ms fixed before), and an idle consumer
    #: fetches a fifth as often (bench/kafka_idle_cpu.py: 0.38 -> 0.22 CPU s a minute).
    fetch_max_wait_ms: int = Field(default=1_000, ge=1, le=10_000)
    #: Most entries one ``/entries`` answer carries.
    max_page: int = Field(default=1000, ge=1, le=10_000)
    #: ``Cache-Control`` max-age of the latest tree head.
    head_max_age_s: int = Field(default=2, ge=0, le=300)

    @field_validator("holder_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value


class AdmissionLogSettings(ServiceSettings):
    service_name: str = "admission-log"
    http: LogHttpSettings = Field(default_factory=LogHttpSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    tree_heads: TreeHeadKeySettings = Field(default_factory=TreeHeadKeySettings)
    admission_log: LogOptions = Field(default_factory=LogOptions)
