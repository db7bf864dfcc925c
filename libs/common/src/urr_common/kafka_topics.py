"""Kafka topics the services exchange events on, created idempotently and verified.

The layout (partitions, replication factor, min in-sync replicas, retention) is a setting per
environment: seed 004 gives 3 partitions, RF 2, min ISR 2 and 7 days for MSK; the local single
broker can only hold RF 1. ``ensure_topics`` creates what is missing with that layout and
``verify_topics`` reads back what the broker holds, so a topic made by hand with the wrong
layout is reported instead of silently used.

The local stack calls these from ``urr-devstack up``; a cluster runs them as a Job before the
services start: ``python -m urr_common.kafka_topics`` (settings ``URR_KAFKA__*`` for the
broker, ``URR_TOPICS__*`` for the layout; exit 0 when every topic matches, 1 with each
difference printed, 2 on a bad setting or an unreachable broker).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from urr_common.clients import kafka_admin
from urr_common.settings import (
    ENV_PREFIX,
    NESTED_DELIMITER,
    KafkaSettings,
    SettingsError,
    load_settings,
)

#: DESIGN.md §1: who produces and who consumes each topic is in the services' own docs.
TOPICS = (
    "payment-events",
    "reservation-events",
    "transfer-events",
    "membership-events",
    "queue-events",
)

_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno
_WEEK_MS = 7 * 24 * 3600 * 1000


class TopicLayout(BaseModel):
    """How every topic is laid out; defaults are the local single broker's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partitions: int = Field(default=3, ge=1, le=64)
    replication_factor: int = Field(default=1, ge=1, le=5)
    min_insync_replicas: int = Field(default=1, ge=1, le=5)
    retention_ms: int = Field(default=_WEEK_MS, ge=60_000)

    @model_validator(mode="after")
    def _isr_within_replicas(self) -> Self:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) cannot exceed "
                f"replication_factor ({self.replication_factor}): no write could ever succeed"
            )
        return self

    def configs(self) -> dict[str, str]:
        """The topic-level configs the layout sets at creation."""
        return {
            "min.insync.replicas": str(self.min_insync_replicas),
            "retention.ms": str(self.retention_ms),
        }


@dataclass(frozen=True, slots=True)
class TopicFacts:
    """What the broker says a topic is."""

    partitions: int
    replication_factor: int
    configs: Mapping[str, str]


def layout_mismatches(name: str, layout: TopicLayout, facts: TopicFacts | None) -> list[str]:
    """Why ``facts`` do not match ``layout`` (empty when they do)."""
    if facts is None:
        return [f"{name}: missing"]
    wrong = []
    if facts.partitions != layout.partitions:
        wrong.append(f"{name}: {facts.partitions} partitions, want {layout.partitions}")
    if facts.replication_factor != layout.replication_factor:
        wrong.append(
            f"{name}: replication factor {facts.replication_factor}, "
            f"want {layout.replication_factor}"
        )
    for key, want in layout.configs().items():
        have = facts.configs.get(key)
        # A broker that does not report a config is not contradicting it.
        if have is not None and have != want:
            wrong.append(f"{name}: {key}={have}, want {want}")
    return wrong


Brokers = str | KafkaSettings


def _admin(brokers: Brokers, timeout_ms: int) -> AIOKafkaAdminClient:
    """An admin client secured like every other (TLS / SASL from ``KafkaSettings``); a bare
    ``host:port`` list means a plaintext local broker."""
    settings = brokers if isinstance(brokers, KafkaSettings) else None
    settings = settings or KafkaSettings(bootstrap_servers=str(brokers))
    return kafka_admin(settings, request_timeout_ms=timeout_ms)


def _address(brokers: Brokers) -> str:
    return brokers.bootstrap_servers if isinstance(brokers, KafkaSettings) else brokers


class TopicCreationError(RuntimeError):
    """The broker refused to create a topic for a reason other than it existing already."""


async def ensure_topics(
    bootstrap_servers: Brokers,
    topics: Iterable[str] = TOPICS,
    layout: TopicLayout | None = None,
    *,
    timeout_ms: int = 10_000,
) -> list[str]:
    """Create each missing topic; returns the names created now (existing ones are kept)."""
    layout = layout or TopicLayout()
    wanted = list(dict.fromkeys(topics))
    admin = _admin(bootstrap_servers, timeout_ms)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return []
        new = [
            NewTopic(
                name,
                layout.partitions,
                layout.replication_factor,
                topic_configs=layout.configs(),
            )
            for name in missing
        ]
        response = await admin.create_topics(new, timeout_ms=timeout_ms)
    finally:
        await admin.close()
    created = []
    # The broker answers per topic; "already exists" means another starter won a race.
    for name, error_code, *rest in response.topic_errors:
        if error_code == 0:
            created.append(name)
        elif error_code != _TOPIC_ALREADY_EXISTS:
            message = rest[0] if rest else ""
            raise TopicCreationError(f"creating topic {name!r} failed: {error_code} {message}")
    return created


async def describe_topics(
    bootstrap_servers: Brokers, topics: Iterable[str], *, timeout_ms: int = 10_000
) -> dict[str, TopicFacts]:
    """Partitions, replication factor and configs of each named topic the broker has."""
    admin = _admin(bootstrap_servers, timeout_ms)
    await admin.start()
    try:
        # aiokafka's metadata request lets the broker auto-create the topics it names, so
        # only topics the broker already lists are described.
        existing = set(await admin.list_topics())
        names = [name for name in dict.fromkeys(topics) if name in existing]
        if not names:
            return {}
        described = await admin.describe_topics(names)
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        configs = await admin.describe_configs(resources)
    finally:
        await admin.close()
    by_topic = _configs_by_topic(configs)
    facts = {}
    for topic in described:
        if topic.get("error_code", 0) != 0:
            continue
        partitions = topic["partitions"]
        replicas = len(partitions[0]["replicas"]) if partitions else 0
        facts[topic["topic"]] = TopicFacts(
            len(partitions), replicas, by_topic.get(topic["topic"], {})
        )
    return facts


def _configs_by_topic(responses: Iterable[Any]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, _message, _type, name, entries in response.resources:
            if error_code != 0:
                continue
            found[name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
    return found


async def verify_topics(
    bootstrap_servers: Brokers,
    topics: Iterable[str] = TOPICS,
    layout: TopicLayout | None = None,
) -> list[str]:
    """Every way the broker's topics differ from ``layout`` (empty when they match)."""
    layout = layout or TopicLayout()
    names = list(dict.fromkeys(topics))
    facts = await describe_topics(bootstrap_servers, names)
    return [wrong for name in names for wrong in layout_mismatches(name, layout, facts.get(name))]


async def list_topics(bootstrap_servers: Brokers, timeout_ms: int = 5_000) -> list[str]:
    """The broker's topics: a metadata round trip that proves it speaks Kafka."""
    admin = _admin(bootstrap_servers, timeout_ms)
    try:
        await admin.start()
        return sorted(await admin.list_topics())
    except KafkaError as exc:
        where = _address(bootstrap_servers)
        raise ConnectionError(f"no Kafka broker answers at {where}: {exc!r}") from exc
    finally:
        await admin.close()


class TopicProvisioningSettings(BaseSettings):
    """What the provisioning Job reads: the broker (as the services do) and the layout."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED_DELIMITER, extra="ignore", frozen=True
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicLayout = Field(default_factory=TopicLayout)


async def provision(settings: TopicProvisioningSettings) -> list[str]:
    """Create what is missing, then every difference between the broker and the layout."""
    created = await ensure_topics(settings.kafka, TOPICS, settings.topics)
    if created:
        print(f"created topics: {', '.join(created)}")
    return await verify_topics(settings.kafka, TOPICS, settings.topics)


def main() -> int:
    try:
        settings = load_settings(TopicProvisioningSettings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        wrong = asyncio.run(provision(settings))
    except (KafkaError, TopicCreationError, OSError, SettingsError) as exc:
        print(f"kafka at {settings.kafka.bootstrap_servers}: {exc!r}", file=sys.stderr)
        return 2
    for line in wrong:
        print(f"layout differs: {line}", file=sys.stderr)
    if not wrong:
        layout = settings.topics
        print(
            f"{len(TOPICS)} topics match: {layout.partitions} partitions, "
            f"RF {layout.replication_factor}, min ISR {layout.min_insync_replicas}, "
            f"retention {layout.retention_ms} ms"
        )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
