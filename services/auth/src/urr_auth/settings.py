"""Configuration of the auth service, read once from ``URR_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from urr_auth.credentials import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH, normalise_email
from urr_common.settings import HttpSettings, PostgresSettings, ServiceSettings, TokenKeySettings
from urr_common.upstream_security import UpstreamIdentitySettings

ACCESS_TOKEN_ISSUER = "urr-auth"  # noqa: S105 - a name, not a secret
ACCESS_TOKEN_AUDIENCE = "urr"  # noqa: S105 - a name, not a secret


class AccessTokenSettings(TokenKeySettings):
    """The access-token signing block with this service's own defaults.

    A subclass rather than a ``default_factory``: when one ``URR_ACCESS_TOKENS__*`` variable
    is set, pydantic builds the whole block from the class defaults, so they must be auth's.
    """

    private_key_file: Path = Path(".urr/keys/access/local-1.pem")
    key_id: str = "local-1"
    issuer: str = ACCESS_TOKEN_ISSUER
    audience: str = ACCESS_TOKEN_AUDIENCE


class AuthHttpSettings(HttpSettings):
    """The HTTP block with auth's port as the class default (same reason as above)."""

    port: int = Field(default=3005, ge=1, le=65535)


class Argon2Settings(BaseModel):
    """argon2id cost parameters; changing them rehashes each password at its next login.

    Defaults are OWASP's argon2id baseline (19 MiB, 2 passes, 1 lane): about 25 ms per hash
    on one idle core here. RFC 9106's 64 MiB x 3 x 4 lanes costs about 190 ms idle and several
    times that on a busy 2-core host (docs/performance/auth.md); raise them where cores allow.
    """

    time_cost: int = Field(default=2, ge=1, le=20)
    #: KiB of memory per hash.
    memory_cost_kib: int = Field(default=19 * 1024, ge=8, le=4 * 1024 * 1024)
    parallelism: int = Field(default=1, ge=1, le=64)
    hash_len: int = Field(default=32, ge=16, le=64)
    salt_len: int = Field(default=16, ge=16, le=64)
    #: Hashes computed at once (threads); bounds memory to this many times ``memory_cost_kib``.
    max_concurrent_hashes: int = Field(default=2, ge=1, le=64)

    @model_validator(mode="after")
    def _memory_covers_lanes(self) -> Self:
        if self.memory_cost_kib < 8 * self.parallelism:
            raise ValueError("memory_cost_kib must be at least 8 x parallelism")
        return self


class AuthSettings(ServiceSettings):
    """Everything ``urr-auth`` needs; see the README for the variable names."""

    service_name: str = "auth"
    http: AuthHttpSettings = Field(default_factory=AuthHttpSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    access_tokens: AccessTokenSettings = Field(default_factory=AccessTokenSettings)
    argon2: Argon2Settings = Field(default_factory=Argon2Settings)
    #: Name of the cookie login sets (the gateway turns it into a Bearer header).
    cookie_name: str = Field(default="access_token", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    #: Mark the cookie ``Secure``: required wherever the site is served over TLS.
    cookie_secure: bool = False
    #: ``Domain`` attribute of the cookie; unset means host-only.
    cookie_domain: str | None = Field(default=None, pattern=r"^\.?[A-Za-z0-9.-]{1,253}$")
    #: Admin account created or updated at every start when both are set.
    bootstrap_admin_email: str | None = None
    bootstrap_admin_password: SecretStr | None = None
    #: The gateway keys whose identity assertions this service accepts (``URR_IDENTITY__*``).
    #: Auth names its users from their own Bearer tokens; an assertion that comes with a
    #: request must still be valid, and ``X-User-*`` headers are never read.
    identity: UpstreamIdentitySettings = Field(default_factory=UpstreamIdentitySettings)

    @field_validator("bootstrap_admin_email")
    @classmethod
    def _admin_email_shape(cls, value: str | None) -> str | None:
        return None if value is None else normalise_email(value)

    @field_validator("bootstrap_admin_password")
    @classmethod
    def _admin_password_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            length = len(value.get_secret_value())
            if not PASSWORD_MIN_LENGTH <= length <= PASSWORD_MAX_LENGTH:
                raise ValueError(
                    f"must be {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.bootstrap_admin_email is None) != (self.bootstrap_admin_password is None):
            raise ValueError(
                "set both URR_BOOTSTRAP_ADMIN_EMAIL and URR_BOOTSTRAP_ADMIN_PASSWORD, or neither"
            )
        if self.environment in ("staging", "prod") and not self.cookie_secure:
            raise ValueError("URR_COOKIE_SECURE must be true outside local and test")
        return self
