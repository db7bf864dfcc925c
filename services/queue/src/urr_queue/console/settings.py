"""The console's settings block (``URR_CONSOLE__*`` in the queue service)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, field_validator

#: The issue asks for figures refreshed at least every 2 s. A change shows after at most
#: ``cache_s`` + ``refresh_s`` (plus one request), so the defaults keep that sum well under 2 s.
MAX_REFRESH_S = 2.0


class ConsoleSettings(BaseModel):
    enabled: bool = True
    #: How often the page asks for figures (seconds, at most 2).
    refresh_s: float = Field(default=1.0, ge=0.5, le=MAX_REFRESH_S)
    #: How long one assembled view is shared by every console that asks (seconds): the
    #: sources are read at most this often per replica, however many consoles are open.
    cache_s: float = Field(default=0.5, ge=0.0, le=1.0)
    #: Time between two samples of the sparkline history, and how much history is kept.
    sample_interval_s: float = Field(default=10.0, ge=1.0, le=60.0)
    history_s: int = Field(default=900, ge=60, le=3_600)
    #: The Tier-1 ``counters`` table (the VWR's ``URR_TABLES__COUNTERS``); empty: no Tier-1
    #: figures.
    tier1_counters_table: str = Field(default="counters", max_length=255)
    #: Base URL of the Tier-1 admin API (API Gateway); empty: the waiting room cannot be
    #: switched from the console. The operator's own access token is forwarded.
    tier1_admin_url: str = ""
    #: The booking database, read only for seat counts; unset: no seat figures.
    seats_dsn: SecretStr | None = None
    #: Audit records kept (a Redis stream, trimmed to about this many).
    audit_max: int = Field(default=10_000, ge=100, le=1_000_000)

    @field_validator("tier1_admin_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (or be empty)")
        return value.rstrip("/")

    @field_validator("seats_dsn")
    @classmethod
    def _pg_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("must start with postgresql://")
        return value

    @property
    def history_points(self) -> int:
        return max(1, int(self.history_s / self.sample_interval_s))
