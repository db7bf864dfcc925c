"""Everything a warm container keeps: settings, clients, keys; built on first use, not import.

``VwrRuntime.from_environment()`` reads the settings on a function's first invocation. Tests
and the local stand-ins build one from settings they made themselves.
"""

from __future__ import annotations

import threading
import time
from contextlib import suppress
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from urr_common.clients import aws_client_kwargs
from urr_common.settings import load_settings
from urr_common.tokens import KeySet, SigningKey, TokenSigner, load_verification_keys
from urr_vwr_lambda.access import AccessVerifier
from urr_vwr_lambda.edge_config import EdgeConfigPublisher, build_document
from urr_vwr_lambda.keys import SigningKeyUnavailable, load_signing_key
from urr_vwr_lambda.pow_store import PowUseStore
from urr_vwr_lambda.settings import VwrSettings
from urr_vwr_lambda.store import VwrStore
from urr_vwr_lambda.warm import EventCache, PlaceCache

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics
    from mypy_boto3_dynamodb import DynamoDBClient

    from urr_vwr_lambda.gates.guard import Gates
    from urr_vwr_lambda.grant_log import GrantLogPublisher

_CONNECT_TIMEOUT_S = 2.0


class VwrRuntime:
    """Lazily created dependencies of the API, admin and advancer functions (thread-safe)."""

    def __init__(self, settings: VwrSettings, *, clock: Any = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._lock = threading.RLock()

    @classmethod
    def from_environment(cls) -> VwrRuntime:
        return cls(load_settings(VwrSettings))

    def _client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"mode": "standard", "max_attempts": self.settings.aws_max_attempts},
            connect_timeout=_CONNECT_TIMEOUT_S,
            read_timeout=self.settings.aws_read_timeout_s,
            max_pool_connections=64,
        )
        return boto3.session.Session().client(  # type: ignore[call-overload]
            service, config=config, **aws_client_kwargs(self.settings.aws, service)
        )

    @cached_property
    def dynamodb(self) -> DynamoDBClient:
        with self._lock:
            client: DynamoDBClient = self._client("dynamodb")
            if self.settings.dynamodb_client == "botocore":
                return client
            from urr_vwr_lambda.dynamodb import LeanDynamoDB

            lean: Any = LeanDynamoDB(
                client,
                max_attempts=self.settings.aws_max_attempts,
                connect_timeout_s=_CONNECT_TIMEOUT_S,
                read_timeout_s=self.settings.aws_read_timeout_s,
            )
            return cast("DynamoDBClient", lean)

    @cached_property
    def store(self) -> VwrStore:
        tables = self.settings.tables
        return VwrStore(
            self.dynamodb,
            counters_table=tables.counters,
            positions_table=tables.positions,
        )

    @cached_property
    def pow_store(self) -> PowUseStore:
        return PowUseStore(self.dynamodb, positions_table=self.settings.tables.positions)

    @cached_property
    def pow_key(self) -> bytes:
        """The HMAC key of the proof-of-work challenges (``pow_gate``)."""
        from urr_vwr_lambda.pow_gate import pow_key

        with self._lock:
            return pow_key(self.settings.pow, lambda: self.signing_key)

    @cached_property
    def gates(self) -> Gates:
        """Issue 15's gates: the origin check, the per-client cap, access codes."""
        from urr_vwr_lambda.gates.guard import Gates
        from urr_vwr_lambda.gates.origin import OriginSecrets
        from urr_vwr_lambda.gates.store import GateStore

        settings = self.settings.gates
        with self._lock:
            origin = None
            if settings.origin.secret_id:
                origin = OriginSecrets(
                    self._client("secretsmanager"),
                    settings.origin.secret_id,
                    cache_s=settings.origin.cache_s,
                )
            return Gates(
                settings,
                GateStore(self.store),
                origin=origin,
                retry_after_s=self.settings.advancer.abandon_after_s,
            )

    @cached_property
    def event_cache(self) -> EventCache:
        return EventCache(ttl_s=self.settings.poll.counters_cache_s, clock=time.monotonic)

    @cached_property
    def place_cache(self) -> PlaceCache:
        return PlaceCache(size=self.settings.poll.place_cache_size)

    @cached_property
    def signing_key(self) -> SigningKey:
        with self._lock:
            tokens = self.settings.vwr_tokens
            secrets = self._client("secretsmanager") if tokens.private_key_secret_id else None
            return load_signing_key(
                tokens, create_missing=self.settings.create_missing_keys, secrets=secrets
            )

    @cached_property
    def signer(self) -> TokenSigner:
        tokens = self.settings.vwr_tokens
        return TokenSigner(
            self.signing_key, issuer=tokens.issuer, audience=tokens.audience, ttl_s=tokens.ttl_s
        )

    @cached_property
    def access_verifier(self) -> AccessVerifier:
        with self._lock:
            return AccessVerifier(self.settings.access_trust)

    @cached_property
    def logger(self) -> Logger:
        from aws_lambda_powertools import Logger

        return Logger(service=self.settings.service_name)

    @cached_property
    def metrics(self) -> Metrics:
        from aws_lambda_powertools import Metrics

        return Metrics(namespace="URR/VWR", service=self.settings.service_name)

    @cached_property
    def grant_log(self) -> GrantLogPublisher | None:
        """Where the random method's grants go (``grant_log``); None when it is off."""
        from urr_vwr_lambda.grant_log import GrantLogPublisher

        options = self.settings.grant_log
        if not options.enabled:
            return None
        with self._lock:
            return GrantLogPublisher(options.kafka, options.topic, timeout_s=options.timeout_s)

    @cached_property
    def edge_publisher(self) -> EdgeConfigPublisher:
        return EdgeConfigPublisher(self.settings.edge_config.target, s3_client=lambda: self._s3)

    @cached_property
    def _s3(self) -> Any:
        with self._lock:
            return self._client("s3")

    def published_keys(self) -> KeySet:
        """The public keys the edge should trust: the trust files, the keys being rotated out
        (``URR_VWR_TOKENS__PREVIOUS_PUBLIC_KEY_FILES``) and our own signing key."""
        configured = [
            *self.settings.vwr_trust.public_key_files,
            *self.settings.vwr_tokens.previous_public_key_files,
        ]
        files = [p for p in configured if p.exists()]
        keys = KeySet(load_verification_keys(files))
        with suppress(SigningKeyUnavailable):
            keys.add(self.signing_key.verification_key())
        return keys

    def publish_edge_config(self, active_events: list[str]) -> bool:
        """Tell the edge which events are gated now; True when the document changed."""
        tokens = self.settings.vwr_tokens
        document = build_document(
            self.published_keys(),
            active_events,
            max_age_s=self.settings.edge_config.max_age_s,
            issuer=tokens.issuer,
            audience=tokens.audience,
        )
        return self.edge_publisher.publish(document)

    def publish_page_document(self, event_id: str, document: bytes) -> bool:
        """Write an event's waiting-page document beside the edge document (short-lived in
        caches: see ``page_document``); True when it changed."""
        from urr_vwr_lambda.page_document import DOCUMENT_CACHE_CONTROL, document_target

        publisher = EdgeConfigPublisher(
            document_target(self.settings.edge_config.target, event_id),
            s3_client=lambda: self._s3,
            cache_control=DOCUMENT_CACHE_CONTROL,
        )
        return publisher.publish(document)

    def now_s(self) -> int:
        return int(self.clock())

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def emit_event_gauges(self, event_id: str, serving_counter: int, next_position: int) -> None:
        """One event's serving counter and next position as EMF gauges with an ``eventId``
        dimension (the invocation's shared metric set has none), printed at once."""
        from aws_lambda_powertools.metrics import MetricUnit, single_metric
        from aws_lambda_powertools.metrics.functions import is_metrics_disabled

        if is_metrics_disabled():
            return
        for name, value in (("ServingCounter", serving_counter), ("NextPosition", next_position)):
            with single_metric(
                name=name,
                unit=MetricUnit.Count,
                value=value,
                namespace=self.metrics.namespace,
                default_dimensions={"service": self.settings.service_name},
            ) as metric:
                metric.add_dimension(name="eventId", value=event_id)

    def count(self, name: str) -> None:
        """One more of the invocation's count ``name`` (EMF, printed by ``flush_metrics``).

        Nothing at all when metrics are disabled (``POWERTOOLS_METRICS_DISABLED``, as the
        emulator's containers run): the flush would drop the metric unread, after powertools
        had validated and stored it and the flush had read the switch again and cleared the
        set, about a sixth of a warm check's CPU. With metrics on it is ``add_metric`` as before.
        """
        from aws_lambda_powertools.metrics import MetricUnit
        from aws_lambda_powertools.metrics.functions import is_metrics_disabled

        if not is_metrics_disabled():
            self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)

    def flush_metrics(self) -> None:
        """Emit the metrics of this invocation (EMF on stdout), or drop them when disabled."""
        from aws_lambda_powertools.metrics.functions import is_metrics_disabled

        metrics = self.metrics
        if not metrics.metric_set:
            return
        if is_metrics_disabled():
            metrics.clear_metrics()
        else:
            metrics.flush_metrics()
