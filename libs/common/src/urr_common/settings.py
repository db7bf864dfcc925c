"""Settings from environment variables, validated once at start-up.

Every service declares one ``BaseSettings`` subclass built from the blocks below and calls
``load_settings(TheirSettings)`` in its entry point: nothing reads the environment at import
time, and a bad value stops the process with one readable message naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "URR_"
NESTED_DELIMITER = "__"


class SettingsError(RuntimeError):
    """The environment does not describe a valid configuration; the message says what to fix."""


class HttpSettings(BaseModel):
    """Where an HTTP service listens and how it drains."""

    host: str = "127.0.0.1"
    #: 0 picks a free port (tests); the bound port is logged.
    port: int = Field(default=8080, ge=0, le=65535)
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    #: After SIGTERM, readiness answers 503 for this long before the listener closes, so a
    #: load balancer stops sending new requests first.
    drain_delay_s: float = Field(default=0.0, ge=0.0, le=120.0)
    #: How long in-flight requests may take to finish once the listener has closed.
    shutdown_timeout_s: float = Field(default=15.0, gt=0.0, le=600.0)
    use_uvloop: bool = True


#: The metrics port a service picks when none is set: its public port plus this (3001 -> 4001).
METRICS_PORT_OFFSET = 1000


class MetricsSettings(BaseModel):
    """Where ``/metrics`` is served: a listener of its own, never the public port.

    Keep ``host`` on loopback or a private interface; in Kubernetes every pod uses the same
    port (``URR_METRICS__PORT=9464``) and NetworkPolicies let Prometheus reach that port only.
    """

    host: str = "127.0.0.1"
    #: ``None``: the public port + 1000 (so the local services, all on one host, differ), or
    #: a free port when the public one is 0 (tests). 0 picks a free port.
    port: int | None = Field(default=None, ge=0, le=65535)
    #: Off: no metrics listener at all (one-shot tools).
    enabled: bool = True

    def port_beside(self, public_port: int) -> int:
        """The metrics port of a service whose public listener is ``public_port``."""
        if self.port is not None:
            return self.port
        return public_port + METRICS_PORT_OFFSET if public_port else 0


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: JSON lines for machines; ``console`` renders the same events readably for a terminal.
    format: Literal["json", "console"] = "json"


class RedisSettings(BaseModel):
    """Where Redis is and how a client proves itself to it.

    TLS is on with ``tls`` or a ``rediss://`` URL; either way the server's certificate must
    chain to ``ca_file`` and name the host in the URL (the system trust store is never used
    implicitly, so a wrong or missing CA bundle stops the service at start-up).
    """

    url: str = "redis://127.0.0.1:6379/0"
    #: Treat ``url`` (or ``cluster_nodes``) as a Redis Cluster.
    cluster: bool = False
    socket_timeout_s: float = Field(default=0.5, gt=0.0)
    connect_timeout_s: float = Field(default=0.5, gt=0.0)
    max_connections: int = Field(default=64, ge=1)
    #: ACL user (ElastiCache RBAC); unset: the ``default`` user, with ``password`` as AUTH.
    username: str | None = None
    #: ``AUTH`` password (``requirepass`` or the ACL user's); from a Secret, never a file.
    password: SecretStr | None = None
    tls: bool = False
    #: PEM bundle of the CA(s) that signed the server certificate; required with TLS.
    ca_file: Path | None = None
    #: Client certificate and its key, for servers that ask for one (both or neither).
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.url.startswith("rediss://")

    @model_validator(mode="after")
    def _tls_is_complete(self) -> RedisSettings:
        if self.uses_tls:
            if self.url.startswith("unix://"):
                raise ValueError("URR_REDIS__TLS cannot be used with a unix:// socket URL")
            if self.ca_file is None:
                raise ValueError(
                    "Redis TLS is on (URR_REDIS__TLS or a rediss:// URL) but "
                    "URR_REDIS__CA_FILE is not set: name the PEM bundle of the CA that signed "
                    "the server certificate"
                )
        elif self.ca_file or self.cert_file or self.key_file:
            raise ValueError(
                "URR_REDIS__CA_FILE, __CERT_FILE and __KEY_FILE are used only with TLS: set "
                "URR_REDIS__TLS=true or use a rediss:// URL"
            )
        _both_or_neither(
            "URR_REDIS__CERT_FILE", self.cert_file, "URR_REDIS__KEY_FILE", self.key_file
        )
        if self.username is not None and self.password is None:
            raise ValueError("URR_REDIS__USERNAME is set without URR_REDIS__PASSWORD")
        return self


def _both_or_neither(first: str, first_value: object, second: str, second_value: object) -> None:
    if (first_value is None) != (second_value is None):
        raise ValueError(f"{first} and {second} go together: set both or neither")


#: What ``sslmode`` means, as in libpq; ``verify-full`` is what staging and prod use.
PostgresSslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class PostgresSettings(BaseModel):
    """Where PostgreSQL is and how the connection is secured.

    ``sslmode``/``sslrootcert`` mean what they mean to libpq. Unset, the DSN (or ``PGSSLMODE``)
    decides, so a DSN carrying ``?sslmode=`` keeps working; setting both is refused.
    """

    dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/urr")
    min_connections: int = Field(default=1, ge=0)
    max_connections: int = Field(default=10, ge=1)
    command_timeout_s: float = Field(default=10.0, gt=0.0)
    sslmode: PostgresSslMode | None = None
    #: PEM bundle of the CA(s) the server certificate must chain to (RDS: the region bundle).
    sslrootcert: Path | None = None
    #: Client certificate and key, for servers that authenticate clients by certificate.
    sslcert: Path | None = None
    sslkey: Path | None = None

    @field_validator("dsn")
    @classmethod
    def _pg_scheme(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return value

    @model_validator(mode="after")
    def _ssl_is_complete(self) -> PostgresSettings:
        if self.sslmode is not None and "sslmode=" in self.dsn.get_secret_value():
            raise ValueError(
                "sslmode is given twice, in URR_POSTGRES__DSN and URR_POSTGRES__SSLMODE: "
                "keep URR_POSTGRES__SSLMODE"
            )
        if self.sslmode in ("verify-ca", "verify-full") and self.sslrootcert is None:
            raise ValueError(
                f"URR_POSTGRES__SSLMODE={self.sslmode} needs URR_POSTGRES__SSLROOTCERT, the PEM "
                "bundle of the CA that signed the server certificate"
            )
        uses_files = self.sslrootcert or self.sslcert or self.sslkey
        if uses_files and self.sslmode not in ("require", "verify-ca", "verify-full"):
            raise ValueError(
                "URR_POSTGRES__SSLROOTCERT, __SSLCERT and __SSLKEY need URR_POSTGRES__SSLMODE "
                "require, verify-ca or verify-full"
            )
        _both_or_neither("URR_POSTGRES__SSLCERT", self.sslcert, "URR_POSTGRES__SSLKEY", self.sslkey)
        return self


#: SASL mechanisms a service can use: SCRAM with a username and password, or MSK IAM (SASL
#: OAUTHBEARER with a token signed by the pod's AWS credentials).
KafkaSaslMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "AWS_MSK_IAM"]


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "urr"
    #: Tansu (and some managed brokers) have no idempotent producer: acks=all and consumers
    #: that deduplicate give at-least-once without it.
    enable_idempotence: bool = False
    request_timeout_ms: int = Field(default=10_000, ge=100)
    linger_ms: int = Field(default=5, ge=0)
    #: ``PLAINTEXT`` locally; ``SSL`` (TLS, optionally mutual) or ``SASL_SSL`` (TLS + SASL).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: KafkaSaslMechanism | None = None
    #: SCRAM credentials (required with SCRAM, refused with AWS_MSK_IAM).
    username: str | None = None
    password: SecretStr | None = None
    #: Region of the MSK cluster; the IAM token is signed for it (AWS_MSK_IAM only).
    aws_region: str | None = None
    #: PEM bundle of the CA(s) that signed the broker certificates; required with TLS.
    ca_file: Path | None = None
    #: Client certificate and key for mutual TLS (``SSL``), both or neither.
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _security_is_complete(self) -> KafkaSettings:
        protocol = self.security_protocol
        if protocol == "PLAINTEXT":
            if self.ca_file or self.cert_file or self.key_file:
                raise ValueError(
                    "URR_KAFKA__CA_FILE, __CERT_FILE and __KEY_FILE need "
                    "URR_KAFKA__SECURITY_PROTOCOL=SSL or SASL_SSL"
                )
        elif self.ca_file is None:
            raise ValueError(
                f"URR_KAFKA__SECURITY_PROTOCOL={protocol} needs URR_KAFKA__CA_FILE, the PEM "
                "bundle of the CA that signed the broker certificates"
            )
        _both_or_neither(
            "URR_KAFKA__CERT_FILE", self.cert_file, "URR_KAFKA__KEY_FILE", self.key_file
        )
        mechanism = self.sasl_mechanism
        if protocol == "SASL_SSL" and mechanism is None:
            raise ValueError(
                "URR_KAFKA__SECURITY_PROTOCOL=SASL_SSL needs URR_KAFKA__SASL_MECHANISM "
                "(SCRAM-SHA-256, SCRAM-SHA-512 or AWS_MSK_IAM)"
            )
        if protocol != "SASL_SSL" and mechanism is not None:
            raise ValueError(
                f"URR_KAFKA__SASL_MECHANISM={mechanism} needs URR_KAFKA__SECURITY_PROTOCOL=SASL_SSL"
            )
        has_credentials = self.username is not None or self.password is not None
        if mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            if self.username is None or self.password is None:
                raise ValueError(
                    f"URR_KAFKA__SASL_MECHANISM={mechanism} needs URR_KAFKA__USERNAME and "
                    "URR_KAFKA__PASSWORD"
                )
        elif has_credentials:
            raise ValueError(
                "URR_KAFKA__USERNAME and URR_KAFKA__PASSWORD are used only with a SCRAM "
                "mechanism (AWS_MSK_IAM signs with the pod's AWS credentials)"
            )
        if mechanism == "AWS_MSK_IAM" and not self.aws_region:
            raise ValueError(
                "URR_KAFKA__SASL_MECHANISM=AWS_MSK_IAM needs URR_KAFKA__AWS_REGION, the MSK "
                "cluster's region"
            )
        return self


class AwsSettings(BaseModel):
    region: str = "us-east-1"
    #: ``http://127.0.0.1:5000`` locally (moto); unset in production.
    endpoint_url: str | None = None
    #: DynamoDB's own endpoint when it is not ``endpoint_url``: locally dynalite, which keeps
    #: up with a flash crowd where moto does not (issue 22); unset: ``endpoint_url``.
    dynamodb_endpoint_url: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None

    @field_validator("endpoint_url", "dynamodb_endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    def endpoint_for(self, service: str) -> str | None:
        """The endpoint a client of ``service`` (``"dynamodb"``, ``"sqs"``, ...) talks to."""
        if service == "dynamodb" and self.dynamodb_endpoint_url:
            return self.dynamodb_endpoint_url
        return self.endpoint_url


class TokenKeySettings(BaseModel):
    """The key a service signs its tokens with, and what it writes into them."""

    #: PEM file of the EC P-256 private key (created on first start when missing).
    private_key_file: Path = Path(".urr/keys/default/local-1.pem")
    #: Key id written into every token's header and published in JWKS.
    key_id: str = "local-1"
    #: Public PEM files of keys still accepted while keys rotate (``kid`` = file stem).
    previous_public_key_files: list[Path] = Field(default_factory=list)
    issuer: str = "urr"
    audience: str = "urr"
    ttl_s: int = Field(default=900, ge=30, le=86_400)


class TrustedKeysSettings(BaseModel):
    """How a service verifies tokens another service signs."""

    #: JWKS document to fetch the keys from (``kid`` lookup, refreshed on an unknown kid).
    jwks_url: str | None = None
    #: Or public PEM files (``kid`` = file stem); both may be given.
    public_key_files: list[Path] = Field(default_factory=list)
    issuer: str = "urr"
    audience: str = "urr"
    leeway_s: int = Field(default=10, ge=0, le=300)


class ServiceSettings(BaseSettings):
    """Fields every service has; subclasses add their own blocks."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="ignore",
        frozen=True,
    )

    service_name: str = "urr"
    environment: Literal["local", "test", "staging", "prod"] = "local"
    http: HttpSettings = Field(default_factory=HttpSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @property
    def metrics_port(self) -> int:
        """The port of the metrics listener (see ``MetricsSettings.port``)."""
        return self.metrics.port_beside(self.http.port)

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> ServiceSettings:
        port = self.metrics_port
        if port > 65535:
            raise ValueError(
                f"the metrics port would be {port}: set URR_METRICS__PORT (0-65535) explicitly"
            )
        if self.metrics.enabled and port and port == self.http.port:
            raise ValueError(
                f"URR_METRICS__PORT ({port}) must differ from URR_HTTP__PORT: /metrics is never "
                "served on the public port"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _keep_service_defaults_of_nested_blocks(cls, data: Any) -> Any:
        """Layer nested variables over the service's own block defaults.

        Without this, one ``URR_HTTP__HOST`` rebuilds the whole ``http`` block from
        ``HttpSettings``'s class defaults, silently dropping a service's
        ``default_factory=lambda: HttpSettings(port=3005)``.
        """
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, field in cls.model_fields.items():
            given = merged.get(name)
            if not isinstance(given, dict) or field.default_factory is None:
                continue
            if field.default_factory_takes_validated_data:
                continue
            default = field.default_factory()  # type: ignore[call-arg]
            if isinstance(default, BaseModel):
                merged[name] = _deep_merge(default.model_dump(exclude_unset=True), given)
        return merged


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


#: Values of variables whose names contain these are never echoed back in an error.
_SECRET_WORDS = ("dsn", "password", "secret", "key", "token")

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(settings_cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Build ``settings_cls`` from the environment, turning validation errors into one message.

    ``overrides`` win over the environment; tests use them instead of patching ``os.environ``.
    """
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc, settings_cls)) from exc


def describe_validation_error(exc: ValidationError, settings_cls: type[BaseSettings]) -> str:
    """Name each bad variable as the operator would set it, e.g. ``URR_HTTP__PORT``."""
    prefix = str(settings_cls.model_config.get("env_prefix", ENV_PREFIX))
    lines = [f"invalid configuration for {settings_cls.__name__}:"]
    for error in exc.errors():
        path = [str(part) for part in error["loc"]]
        variable = prefix + NESTED_DELIMITER.join(path).upper() if path else "(settings)"
        received = error.get("input")
        secret = any(word in variable.lower() for word in _SECRET_WORDS)
        plain = not (secret or isinstance(received, dict) or received is None)
        shown = f" (got {received!r})" if plain else ""
        lines.append(f"  {variable}: {error['msg']}{shown}")
    return "\n".join(lines)
