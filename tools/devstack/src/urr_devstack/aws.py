"""The AWS resources of DESIGN.md §4 on any endpoint (moto locally), created idempotently.

- SQS FIFO ``ticket-events.fifo`` with the DLQ ``ticket-events-dlq.fifo`` after 3 receives.
  Content-based deduplication is off: the ticket service sets ``MessageDeduplicationId``.
- DynamoDB ``counters`` (PK ``eventId``) and ``positions`` (PK ``eventId``, SK ``requestId``,
  TTL attribute ``ttl``; the line is items of its own, read by key, so no index).
- S3 bucket ``tansu``, where the Kafka broker keeps its records.

Each ``ensure_*`` checks first and converges an existing resource's mutable settings, so a
second run changes nothing and a run after a settings change applies it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from urr_vwr_lambda.settings import TableSettings
from urr_vwr_lambda.tables import TTL_ATTRIBUTE, counters_table, positions_table

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient

TICKET_QUEUE = "ticket-events.fifo"
TICKET_DLQ = "ticket-events-dlq.fifo"
#: A booking command that failed this many receives goes to the DLQ (DESIGN.md §4).
TICKET_MAX_RECEIVES = 3
#: Seconds a received message stays hidden; the worker's batch window is 5 s.
TICKET_VISIBILITY_TIMEOUT_S = 30
#: The DLQ keeps messages for the longest SQS allows (14 days), for inspection and replay.
DLQ_RETENTION_S = 14 * 24 * 3600

#: The Tier-1 tables as the VWR package defines them (names, keys, TTL): one schema.
_TABLES = TableSettings()
COUNTERS_TABLE = _TABLES.counters
POSITIONS_TABLE = _TABLES.positions
POSITIONS_TTL_ATTRIBUTE = TTL_ATTRIBUTE
TANSU_BUCKET = "tansu"
#: The origin-verify secret the edge stand-in adds to Tier-1 calls, as CloudFront does, and the
#: Tier-1 API insists on (issue 15, 3b): calling the API emulator directly is refused locally too.
ORIGIN_SECRET_NAME = "urr-vwr-origin-verify"  # noqa: S105 - the name, not the value


@dataclass(frozen=True)
class AwsEndpoint:
    """Where the AWS APIs answer and with which (local, dummy) credentials."""

    url: str
    region: str = "us-east-1"
    access_key_id: str = "urr-local"
    secret_access_key: str = "urr-local"  # noqa: S105 - moto takes any; nothing secret
    #: DynamoDB's own endpoint (dynalite) when it is not ``url``.
    dynamodb_url: str | None = None


@dataclass(frozen=True)
class AwsClients:
    s3: S3Client
    sqs: SQSClient
    dynamodb: DynamoDBClient


@asynccontextmanager
async def open_clients(endpoint: AwsEndpoint) -> AsyncIterator[AwsClients]:
    """S3 and SQS clients on ``endpoint``, DynamoDB on its own endpoint when it has one."""
    session = aioboto3.Session()
    # Fail fast when the endpoint is down instead of botocore's long retry ladder.
    config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2})
    kwargs: dict[str, Any] = {
        "endpoint_url": endpoint.url,
        "region_name": endpoint.region,
        "aws_access_key_id": endpoint.access_key_id,
        "aws_secret_access_key": endpoint.secret_access_key,
        "config": config,
    }
    async with AsyncExitStack() as stack:
        s3 = await stack.enter_async_context(session.client("s3", **kwargs))
        sqs = await stack.enter_async_context(session.client("sqs", **kwargs))
        dynamodb = await stack.enter_async_context(
            session.client(
                "dynamodb", **{**kwargs, "endpoint_url": endpoint.dynamodb_url or endpoint.url}
            )
        )
        yield AwsClients(s3=s3, sqs=sqs, dynamodb=dynamodb)


@dataclass(frozen=True)
class ProvisionedAws:
    ticket_queue_url: str
    ticket_dlq_url: str
    tables: tuple[str, ...]


async def provision(endpoint: AwsEndpoint) -> ProvisionedAws:
    """Every queue and table the services use."""
    async with open_clients(endpoint) as clients:
        queue_url, dlq_url = await ensure_fifo_queue_with_dlq(
            clients.sqs, TICKET_QUEUE, TICKET_DLQ, max_receives=TICKET_MAX_RECEIVES
        )
        await ensure_counters_table(clients.dynamodb)
        await ensure_positions_table(clients.dynamodb)
    await ensure_origin_secret(endpoint)
    return ProvisionedAws(queue_url, dlq_url, (COUNTERS_TABLE, POSITIONS_TABLE))


async def ensure_origin_secret(endpoint: AwsEndpoint, name: str = ORIGIN_SECRET_NAME) -> bool:
    """Create the origin-verify secret with a random value unless it exists; True when made."""
    session = aioboto3.Session()
    async with session.client(
        "secretsmanager",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key_id,
        aws_secret_access_key=endpoint.secret_access_key,
    ) as client:
        try:
            await client.describe_secret(SecretId=name)
        except ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
        else:
            return False
        try:
            await client.create_secret(Name=name, SecretString=secrets.token_urlsafe(36))
        except ClientError as exc:
            if _error_code(exc) == "ResourceExistsException":
                return False
            raise
        return True


async def ensure_bucket(s3: S3Client, name: str) -> bool:
    """Create bucket ``name`` unless it exists; True when created."""
    try:
        await s3.head_bucket(Bucket=name)
    except ClientError as exc:
        if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    else:
        return False
    try:
        await s3.create_bucket(Bucket=name)
    except ClientError as exc:
        if _error_code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False
        raise
    return True


async def ensure_fifo_queue_with_dlq(
    sqs: SQSClient, name: str, dlq_name: str, *, max_receives: int
) -> tuple[str, str]:
    """The FIFO queue and its FIFO dead-letter queue; returns both URLs."""
    dlq_url = await _ensure_queue(
        sqs,
        dlq_name,
        {
            "FifoQueue": "true",
            "ContentBasedDeduplication": "false",
            "MessageRetentionPeriod": str(DLQ_RETENTION_S),
        },
    )
    dlq_attributes = await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    redrive = {
        "deadLetterTargetArn": dlq_attributes["Attributes"]["QueueArn"],
        "maxReceiveCount": str(max_receives),
    }
    queue_url = await _ensure_queue(
        sqs,
        name,
        {
            "FifoQueue": "true",
            "ContentBasedDeduplication": "false",
            "VisibilityTimeout": str(TICKET_VISIBILITY_TIMEOUT_S),
            "RedrivePolicy": json.dumps(redrive),
        },
    )
    return queue_url, dlq_url


async def _ensure_queue(sqs: SQSClient, name: str, attributes: dict[str, str]) -> str:
    try:
        url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
    except ClientError as exc:
        if "NonExistentQueue" not in _error_code(exc):
            raise
        created = await sqs.create_queue(QueueName=name, Attributes=attributes)  # type: ignore[arg-type]
        return created["QueueUrl"]
    # FifoQueue cannot change after creation; everything else converges to what we want.
    mutable = {key: value for key, value in attributes.items() if key != "FifoQueue"}
    await sqs.set_queue_attributes(QueueUrl=url, Attributes=mutable)  # type: ignore[arg-type]
    return url


async def ensure_counters_table(dynamodb: DynamoDBClient) -> bool:
    """``counters``: one item per event (``nextPosition``, ``servingCounter``, ``isActive``)."""
    if await _table_exists(dynamodb, COUNTERS_TABLE):
        return False
    await dynamodb.create_table(**counters_table(_TABLES))
    await _wait_active(dynamodb, COUNTERS_TABLE)
    return True


async def ensure_positions_table(dynamodb: DynamoDBClient) -> bool:
    """``positions``: one item per (event, request) with its place; expires through ``ttl``."""
    created = False
    if not await _table_exists(dynamodb, POSITIONS_TABLE):
        await dynamodb.create_table(**positions_table(_TABLES))
        await _wait_active(dynamodb, POSITIONS_TABLE)
        created = True
    ttl = await dynamodb.describe_time_to_live(TableName=POSITIONS_TABLE)
    if ttl["TimeToLiveDescription"].get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        try:
            await dynamodb.update_time_to_live(
                TableName=POSITIONS_TABLE,
                TimeToLiveSpecification={
                    "Enabled": True,
                    "AttributeName": POSITIONS_TTL_ATTRIBUTE,
                },
            )
        except ClientError as exc:
            # dynalite has no TTL; the stack never relied on expiry (moto deletes nothing
            # either, and every read treats ``ttl < now`` as gone).
            if _error_code(exc) != "UnknownOperationException":
                raise
    return created


async def _table_exists(dynamodb: DynamoDBClient, name: str) -> bool:
    try:
        await dynamodb.describe_table(TableName=name)
    except ClientError as exc:
        if _error_code(exc) == "ResourceNotFoundException":
            return False
        raise
    return True


async def _wait_active(dynamodb: DynamoDBClient, name: str) -> None:
    waiter = dynamodb.get_waiter("table_exists")
    await waiter.wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
