"""Settings of the Tier-1 Lambdas and their local stand-ins (env prefix ``URR_``).

Read once, on a function's first invocation (never at import). Shared names:
``URR_AWS__*`` (endpoint, region), ``URR_VWR_TOKENS__*`` (signing the Tier-1 token),
``URR_VWR_TRUST__PUBLIC_KEY_FILES`` (verifying it), ``URR_ACCESS_TRUST__*`` (verifying the auth
service's access tokens). Lambda@Edge has no environment at all: the edge verifier reads a JSON
document instead (see ``edge_config``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from urr_common.settings import (
    AwsSettings,
    HttpSettings,
    KafkaSettings,
    ServiceSettings,
    TokenKeySettings,
    TrustedKeysSettings,
)

TOKEN_COOKIE = "urr-vwr-token"  # noqa: S105 - a cookie name
VWR_ISSUER = "urr-vwr"
VWR_AUDIENCE = "urr-vwr"
VWR_KEY_DIR = Path(".urr/keys/vwr")
DEFAULT_EDGE_CONFIG = Path(".urr/vwr/edge-config.json")


class VwrTokenSettings(TokenKeySettings):
    """Signing the Tier-1 token.

    Locally the private key is the PEM ``private_key_file`` (created on first start, with its
    public half written to ``public/<kid>.pem`` beside it). In AWS set
    ``URR_VWR_TOKENS__PRIVATE_KEY_SECRET_ID`` to a Secrets Manager secret holding the PEM
    (encrypted with the account's KMS key): it is fetched once per container, on first use.
    """

    private_key_file: Path = VWR_KEY_DIR / "local-1.pem"
    private_key_secret_id: str | None = None
    issuer: str = VWR_ISSUER
    audience: str = VWR_AUDIENCE
    #: How long an admission token lets its holder past the edge.
    ttl_s: int = Field(default=1800, ge=60, le=86_400)


def _vwr_trust() -> TrustedKeysSettings:
    return TrustedKeysSettings(
        public_key_files=[VWR_KEY_DIR / "public" / "local-1.pem"],
        issuer=VWR_ISSUER,
        audience=VWR_AUDIENCE,
    )


def _access_trust() -> TrustedKeysSettings:
    return TrustedKeysSettings(
        jwks_url="http://127.0.0.1:3005/.well-known/jwks.json", issuer="urr-auth", audience="urr"
    )


class TableSettings(BaseModel):
    #: DESIGN.md §4 names; the SAM template passes its own generated names in AWS.
    counters: str = "counters"
    positions: str = "positions"


class CookieSettings(BaseModel):
    #: ``Secure`` on the token cookie; on wherever the site is served over TLS.
    secure: bool = False
    path: str = "/"


class StatusCacheSettings(BaseModel):
    """``Cache-Control`` of the public status figures (CloudFront and browsers)."""

    max_age_s: int = Field(default=2, ge=0, le=300)
    stale_while_revalidate_s: int = Field(default=10, ge=0, le=3600)


class QueueFeedSettings(BaseModel):
    """Where Tier 2 reports what it can absorb (``GET {url}/api/v1/queue/{id}/capacity``)."""

    url: str = "http://127.0.0.1:3007"
    timeout_s: float = Field(default=1.0, gt=0.0, le=10.0)


class AdvancerSettings(BaseModel):
    #: Cycles per invocation; EventBridge invokes once a minute, so 30 cycles 2 s apart. Small,
    #: frequent waves: a wave's admitted waiters all check within a poll or two of it, and a
    #: 10 s wave made that a burst that queued every other Tier-1 call (docs/performance.md).
    steps_per_invocation: int = Field(default=30, ge=1, le=60)
    step_interval_s: float = Field(default=2.0, ge=0.0, le=60.0)
    #: A waiter whose last check is older than this has abandoned its place.
    abandon_after_s: int = Field(default=120, ge=10, le=86_400)
    #: Abandoned places marked per event per cycle at most (each mark is one write).
    max_skips_per_step: int = Field(default=200, ge=0, le=5000)
    #: Batch size of an event created without one.
    default_batch_size: int = Field(default=500, ge=1, le=100_000)


class GrantLogSettings(BaseModel):
    """The random method's grants published to the admission log (``grant_log``)."""

    #: Off, the random draw is not auditable: production turns it on (the SAM template).
    enabled: bool = False
    topic: str = "queue-events"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    #: How long one cycle waits for the broker before keeping its records for the next.
    timeout_s: float = Field(default=5.0, gt=0.0, le=60.0)


class PollSettings(BaseModel):
    min_s: int = Field(default=2, ge=1, le=60)
    max_s: int = Field(default=30, ge=1, le=300)
    #: A check writes ``lastSeen`` only when the stored one is older than this: most checks
    #: then write nothing. A waiter who follows the advice is at most this plus ``max_s``
    #: behind, which must stay under the advancer's ``abandon_after_s`` (checked at start).
    last_seen_write_interval_s: int = Field(default=45, ge=0, le=600)
    #: How long a warm container answers checks from its copy of the counters item (the read
    #: is eventually consistent anyway); 0 reads it on every check.
    counters_cache_s: float = Field(default=1.0, ge=0.0, le=10.0)
    #: Places a warm container remembers (their numbers never change); 0 turns it off.
    place_cache_size: int = Field(default=20_000, ge=0, le=1_000_000)


class EdgeConfigSettings(BaseModel):
    """Where the document the edge verifier reads is published (a file, or ``s3://b/key``)."""

    target: str = str(DEFAULT_EDGE_CONFIG)
    #: How long the edge may use a fetched document before fetching it again.
    max_age_s: int = Field(default=15, ge=1, le=3600)


class PowSettings(BaseModel):
    """The proof-of-work gate of events with ``botChallenge: pow`` (``proof_of_work``)."""

    #: How long a challenge may be solved and used; the waiting page fetches a new one after.
    challenge_ttl_s: int = Field(default=300, ge=30, le=3600)
    #: The HMAC key of the challenges (at least 32 characters). Unset: derived (HKDF) from
    #: the Tier-1 signing key, which every container already loads and which is rotated anyway.
    secret: SecretStr | None = None

    @field_validator("secret")
    @classmethod
    def _secret_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("the proof-of-work secret must be at least 32 characters")
        return value


#: An HTTP header name (RFC 9110 token characters).
_HEADER_NAME_RE = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"


class OriginVerifySettings(BaseModel):
    """The origin-verify header CloudFront adds and the API insists on (issue 15, 3b).

    ``secret_id`` names a Secrets Manager secret whose ``AWSCURRENT`` and, during a rotation,
    ``AWSPENDING`` values are both accepted. Unset, the check is off (tests and a bare local
    run); ``environment=prod`` refuses to start without it.
    """

    secret_id: str | None = None
    header: str = Field(default="X-Origin-Verify", pattern=_HEADER_NAME_RE)
    #: How long a container uses the values it fetched before asking Secrets Manager again.
    cache_s: float = Field(default=60.0, ge=0.0, le=3600.0)


class GateSettings(BaseModel):
    """Tier-1 place flooding and presale codes (``urr_vwr_lambda.gates``)."""

    origin: OriginVerifySettings = Field(default_factory=OriginVerifySettings)
    #: Live places one client address may hold in an event that does not set its own
    #: ``placesPerClient`` (anonymous callers only; an account holds one place anyway).
    places_per_client: int = Field(default=2, ge=0, le=1000)
    #: How long a container uses an event's gate settings (code requirement, per-client cap)
    #: before reading them again; 0 reads them on every assign.
    config_cache_s: float = Field(default=2.0, ge=0.0, le=60.0)


class VwrSettings(ServiceSettings):
    """Everything the API, admin and advancer functions read (the API emulator listens on 3010)."""

    service_name: str = "urr-vwr"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3010))
    aws: AwsSettings = Field(default_factory=AwsSettings)
    tables: TableSettings = Field(default_factory=TableSettings)
    vwr_tokens: VwrTokenSettings = Field(default_factory=VwrTokenSettings)
    vwr_trust: TrustedKeysSettings = Field(default_factory=_vwr_trust)
    access_trust: TrustedKeysSettings = Field(default_factory=_access_trust)
    cookie: CookieSettings = Field(default_factory=CookieSettings)
    status_cache: StatusCacheSettings = Field(default_factory=StatusCacheSettings)
    queue: QueueFeedSettings = Field(default_factory=QueueFeedSettings)
    advancer: AdvancerSettings = Field(default_factory=AdvancerSettings)
    grant_log: GrantLogSettings = Field(default_factory=GrantLogSettings)
    poll: PollSettings = Field(default_factory=PollSettings)
    edge_config: EdgeConfigSettings = Field(default_factory=EdgeConfigSettings)
    pow: PowSettings = Field(default_factory=PowSettings)
    gates: GateSettings = Field(default_factory=GateSettings)
    #: Per-call read timeout of AWS calls and attempts per call (botocore's standard retries).
    #: A retried ``ADD nextPosition`` whose first try did land leaves one number unused (the
    #: advancer passes it at no cost); a generous timeout keeps that rare.
    aws_read_timeout_s: float = Field(default=5.0, gt=0.0, le=60.0)
    aws_max_attempts: int = Field(default=3, ge=1, le=10)
    #: Which client sends the handlers' DynamoDB calls (``URR_DYNAMODB_CLIENT``): ``lean``
    #: (``urr_vwr_lambda.dynamodb``: signed JSON over kept-alive connections, botocore's
    #: standard retries and error shapes, about a third of botocore's CPU per call) or
    #: ``botocore`` (the plain boto3 client; the way back if the lean one ever misbehaves).
    dynamodb_client: Literal["lean", "botocore"] = "lean"
    #: Who may call the admin routes: an admin access token (local), or API Gateway's IAM
    #: authoriser (AWS; the function then trusts the caller identity in the request context).
    admin_auth: Literal["access_token", "iam"] = "access_token"
    #: Worker processes of the local API Gateway emulator (each one a "container" running one
    #: invocation at a time, as powertools' resolver requires); 0 runs it in-process.
    local_api_processes: int = Field(default=4, ge=0, le=16)
    #: Invocations the emulator lets run or wait at once; beyond that it answers 429 at once,
    #: as API Gateway's throttling does in AWS. Without a bound, a crowd larger than moto can
    #: serve queues requests that time out before they run, and nothing useful gets done.
    local_api_max_pending: int = Field(default=6, ge=1, le=10_000)
    #: The same for reads (checks, status), counted apart: a check is mostly answered from the
    #: container's copies, and a waiter throttled on its checks learns of its turn late and
    #: loses its place in the admission order. API Gateway throttles per method likewise.
    local_api_max_pending_reads: int = Field(default=64, ge=1, le=10_000)
    #: What serves the emulator's port (``URR_LOCAL_API_SERVER``): ``protocol``, its own
    #: HTTP/1.1 listener (``local.apigw_server``, on the gateway's connection layer
    #: ``urr_common.http1``: about 30 % less CPU per call), or ``aiohttp``, aiohttp's
    #: server and the shared middlewares (the way back); both answer the same.
    local_api_server: Literal["protocol", "aiohttp"] = "protocol"
    #: Whether a missing signing key may be generated (only ever on a developer's machine).
    create_missing_keys: bool = True

    @model_validator(mode="after")
    def _live_waiters_are_never_abandoned(self) -> VwrSettings:
        # The longest a polling waiter's lastSeen can lag: one write interval plus one poll.
        lag = self.poll.last_seen_write_interval_s + self.poll.max_s
        if lag >= self.advancer.abandon_after_s:
            raise ValueError(
                f"poll.last_seen_write_interval_s + poll.max_s ({lag} s) must stay below "
                f"advancer.abandon_after_s ({self.advancer.abandon_after_s} s), or waiters "
                "who keep checking would be given up"
            )
        return self

    @model_validator(mode="after")
    def _production_verifies_the_origin(self) -> VwrSettings:
        if self.environment == "prod" and not self.gates.origin.secret_id:
            raise ValueError(
                "gates.origin.secret_id (URR_GATES__ORIGIN__SECRET_ID) is required in prod: "
                "without it the API answers callers that bypass CloudFront and its WAF"
            )
        return self


class EdgeEmulatorSettings(ServiceSettings):
    """The local CloudFront stand-in (port 8000)."""

    service_name: str = "urr-vwr-edge"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=8000))
    gateway_url: str = "http://127.0.0.1:3001"
    api_url: str = "http://127.0.0.1:3010"
    edge_config: EdgeConfigSettings = Field(default_factory=EdgeConfigSettings)
    upstream_timeout_s: float = Field(default=30.0, gt=0.0)
    #: Where the origin-verify secret is read (moto locally), as CloudFront is configured
    #: with the value: the emulator adds the header on every request to the API.
    aws: AwsSettings = Field(default_factory=AwsSettings)
    origin: OriginVerifySettings = Field(default_factory=OriginVerifySettings)
    #: What serves the edge's port (``URR_LOCAL_EDGE_SERVER``): ``protocol``, its own
    #: HTTP/1.1 listener (``local.edge_server``, on ``urr_common.http1`` as the API Gateway
    #: emulator's), or ``aiohttp``, aiohttp's server and the shared middlewares (the way
    #: back); both answer the same.
    local_edge_server: Literal["protocol", "aiohttp"] = "protocol"


class SchedulerSettings(ServiceSettings):
    """The local EventBridge stand-in: invokes the advancer every ``interval_s``."""

    service_name: str = "urr-vwr-scheduler"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3012))
    #: The advancer's ``step_interval_s``: the stand-in runs one cycle per invocation.
    interval_s: float = Field(default=2.0, gt=0.0, le=3600.0)
