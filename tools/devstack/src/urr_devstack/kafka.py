"""Kafka topics the services exchange events on, created idempotently with the admin API."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

#: DESIGN.md §1: who produces and who consumes each topic is in the services' own docs.
TOPICS = (
    "payment-events",
    "reservation-events",
    "transfer-events",
    "membership-events",
    "queue-events",
)

_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno


class TopicCreationError(RuntimeError):
    """The broker refused to create a topic for a reason other than it existing already."""


async def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str] = TOPICS,
    *,
    partitions: int = 3,
    replication_factor: int = 1,
    timeout_ms: int = 10_000,
) -> list[str]:
    """Create each missing topic; returns the names created now (existing ones are kept)."""
    wanted = list(dict.fromkeys(topics))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication_factor) for name in missing],
            timeout_ms=timeout_ms,
        )
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


async def list_topics(bootstrap_servers: str, timeout_ms: int = 5_000) -> list[str]:
    """The broker's topics: a metadata round trip that proves it speaks Kafka."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=timeout_ms)
    try:
        await admin.start()
        return sorted(await admin.list_topics())
    except KafkaError as exc:
        raise ConnectionError(f"no Kafka broker answers at {bootstrap_servers}: {exc!r}") from exc
    finally:
        await admin.close()
