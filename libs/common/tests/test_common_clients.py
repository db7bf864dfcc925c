from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from botocore.exceptions import ClientError
from pydantic import SecretStr

from urr_common.clients import (
    aws_client_kwargs,
    open_aws_clients,
    open_kafka_producer,
    open_postgres,
    open_redis,
)
from urr_common.settings import AwsSettings, KafkaSettings, PostgresSettings, RedisSettings


async def test_redis_client_talks_to_the_server(redis_url: str) -> None:
    async with open_redis(RedisSettings(url=redis_url)) as redis:
        await redis.set("greeting", "hello")
        assert await redis.get("greeting") == b"hello"


async def test_postgres_pool_runs_queries(postgres_dsn: str) -> None:
    settings = PostgresSettings(dsn=SecretStr(postgres_dsn), min_connections=1, max_connections=2)
    async with open_postgres(settings) as pool:
        assert await pool.fetchval("SELECT 40 + 2") == 42


async def test_kafka_producer_delivers_with_acks_all(kafka_bootstrap: str) -> None:
    topic = f"clients-{uuid.uuid4().hex[:8]}"
    async with open_kafka_producer(KafkaSettings(bootstrap_servers=kafka_bootstrap)) as producer:
        metadata = await producer.send_and_wait(topic, b"payload", key=b"k")
        assert metadata.offset == 0
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    assert [m.value for records in batches.values() for m in records] == [b"payload"]


async def test_aws_clients_share_one_session(moto_endpoint: str) -> None:
    settings = AwsSettings(
        endpoint_url=moto_endpoint,
        access_key_id=SecretStr("test"),
        secret_access_key=SecretStr("test"),
    )
    async with open_aws_clients(settings, "sqs", "dynamodb") as clients:
        name = f"q-{uuid.uuid4().hex[:8]}"
        created = await clients["sqs"].create_queue(QueueName=name)
        assert created["QueueUrl"].endswith(name)
        tables = await clients["dynamodb"].list_tables()
        assert isinstance(tables["TableNames"], list)


async def test_dynamodb_goes_to_its_own_endpoint(
    moto_endpoint: str, dynalite_endpoint: str
) -> None:
    """DynamoDB on dynalite, SQS on moto (the local stack's split, issue 22): a table made
    through the DynamoDB client exists on dynalite and not on moto."""
    settings = AwsSettings(
        endpoint_url=moto_endpoint,
        dynamodb_endpoint_url=dynalite_endpoint,
        access_key_id=SecretStr("test"),
        secret_access_key=SecretStr("test"),
    )
    assert aws_client_kwargs(settings, "dynamodb")["endpoint_url"] == dynalite_endpoint
    assert aws_client_kwargs(settings, "sqs")["endpoint_url"] == moto_endpoint
    assert aws_client_kwargs(settings)["endpoint_url"] == moto_endpoint
    name = f"t-{uuid.uuid4().hex[:8]}"
    async with open_aws_clients(settings, "sqs", "dynamodb") as clients:
        await clients["dynamodb"].create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        # Not ListTables: it pages at 100 names, and the session's dynalite may hold more.
        described = await clients["dynamodb"].describe_table(TableName=name)
        assert described["Table"]["TableName"] == name
        created = await clients["sqs"].create_queue(QueueName=name)
        assert created["QueueUrl"].endswith(name)
    only_moto = AwsSettings(
        endpoint_url=moto_endpoint,
        access_key_id=SecretStr("test"),
        secret_access_key=SecretStr("test"),
    )
    async with open_aws_clients(only_moto, "dynamodb") as clients:
        with pytest.raises(ClientError, match="ResourceNotFoundException"):
            await clients["dynamodb"].describe_table(TableName=name)
