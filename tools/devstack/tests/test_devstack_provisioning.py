"""Provisioning against real servers: topics on Tansu, queues and tables on moto, the database."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from pydantic import ValidationError

from urr_common import kafka_topics
from urr_devstack import aws, infra, postgres
from urr_devstack.procs import free_port, is_listening
from urr_devstack.settings import DevstackSettings

pytestmark = pytest.mark.integration


async def test_devstack_topics_are_created_once(kafka_bootstrap: str) -> None:
    topics = [f"devstack-{uuid.uuid4().hex[:8]}-{n}" for n in range(2)]
    layout = kafka_topics.TopicLayout(partitions=2)
    created = await kafka_topics.ensure_topics(kafka_bootstrap, topics, layout)
    assert sorted(created) == sorted(topics)
    assert await kafka_topics.ensure_topics(kafka_bootstrap, topics, layout) == []
    listed = await kafka_topics.list_topics(kafka_bootstrap)
    assert set(topics) <= set(listed)


async def test_devstack_topics_carry_the_layout_and_a_different_one_is_reported(
    kafka_bootstrap: str,
) -> None:
    topic = f"devstack-{uuid.uuid4().hex[:8]}"
    layout = kafka_topics.TopicLayout(partitions=2, retention_ms=3_600_000)
    await kafka_topics.ensure_topics(kafka_bootstrap, [topic], layout)
    facts = (await kafka_topics.describe_topics(kafka_bootstrap, [topic]))[topic]
    assert (facts.partitions, facts.replication_factor) == (2, 1)
    assert facts.configs["retention.ms"] == "3600000"
    assert facts.configs["min.insync.replicas"] == "1"
    assert await kafka_topics.verify_topics(kafka_bootstrap, [topic], layout) == []
    # The seed's week of retention and three partitions: the topic made above differs.
    assert await kafka_topics.verify_topics(
        kafka_bootstrap, [topic], kafka_topics.TopicLayout()
    ) == [
        f"{topic}: 2 partitions, want 3",
        f"{topic}: retention.ms=3600000, want 604800000",
    ]
    missing = f"devstack-{uuid.uuid4().hex[:8]}"
    assert await kafka_topics.verify_topics(kafka_bootstrap, [missing], layout) == [
        f"{missing}: missing"
    ]


async def test_devstack_topic_list_fails_clearly_without_a_broker() -> None:
    with pytest.raises(ConnectionError, match="no Kafka broker"):
        await kafka_topics.list_topics(f"127.0.0.1:{free_port()}", timeout_ms=1000)


@pytest.fixture
async def aws_clients(moto_endpoint: str) -> AsyncIterator[aws.AwsClients]:
    """Clients on the session's moto, emptied before and after (other tests share it)."""
    await _reset(moto_endpoint)
    try:
        async with aws.open_clients(aws.AwsEndpoint(moto_endpoint)) as clients:
            yield clients
    finally:
        await _reset(moto_endpoint)


async def _reset(moto_endpoint: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{moto_endpoint}/moto-api/reset") as response,
    ):
        assert response.status == 200


async def test_devstack_aws_provisioning_is_idempotent(
    moto_endpoint: str, aws_clients: aws.AwsClients
) -> None:
    first = await aws.provision(aws.AwsEndpoint(moto_endpoint))
    second = await aws.provision(aws.AwsEndpoint(moto_endpoint))
    assert first == second
    queues = (await aws_clients.sqs.list_queues())["QueueUrls"]
    assert sorted(url.rsplit("/", 1)[1] for url in queues) == [aws.TICKET_DLQ, aws.TICKET_QUEUE]
    tables = (await aws_clients.dynamodb.list_tables())["TableNames"]
    assert sorted(tables) == [aws.COUNTERS_TABLE, aws.POSITIONS_TABLE]


async def test_devstack_ticket_queue_is_fifo_with_redrive(
    moto_endpoint: str, aws_clients: aws.AwsClients
) -> None:
    provisioned = await aws.provision(aws.AwsEndpoint(moto_endpoint))
    sqs = aws_clients.sqs
    attributes = (
        await sqs.get_queue_attributes(
            QueueUrl=provisioned.ticket_queue_url, AttributeNames=["All"]
        )
    )["Attributes"]
    dlq_arn = (
        await sqs.get_queue_attributes(
            QueueUrl=provisioned.ticket_dlq_url, AttributeNames=["QueueArn"]
        )
    )["Attributes"]["QueueArn"]
    assert attributes["FifoQueue"] == "true"
    assert attributes["ContentBasedDeduplication"] == "false"
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn
    assert int(redrive["maxReceiveCount"]) == aws.TICKET_MAX_RECEIVES

    # Dedup is the sender's: without a deduplication id the FIFO queue refuses the message.
    with pytest.raises(sqs.exceptions.ClientError):
        await sqs.send_message(
            QueueUrl=provisioned.ticket_queue_url, MessageBody="x", MessageGroupId="g"
        )
    await sqs.send_message(
        QueueUrl=provisioned.ticket_queue_url,
        MessageBody="poison",
        MessageGroupId="event-1",
        MessageDeduplicationId="m-1",
    )
    # Received (and not deleted) three times, the message moves to the DLQ on the next receive.
    for _ in range(aws.TICKET_MAX_RECEIVES):
        got = await sqs.receive_message(
            QueueUrl=provisioned.ticket_queue_url, VisibilityTimeout=0, WaitTimeSeconds=1
        )
        assert [m["Body"] for m in got["Messages"]] == ["poison"]
    after = await sqs.receive_message(QueueUrl=provisioned.ticket_queue_url, WaitTimeSeconds=0)
    assert after.get("Messages", []) == []
    dead = await sqs.receive_message(QueueUrl=provisioned.ticket_dlq_url, WaitTimeSeconds=1)
    assert [m["Body"] for m in dead["Messages"]] == ["poison"]


async def test_devstack_existing_queue_converges_to_the_wanted_redrive(
    aws_clients: aws.AwsClients,
) -> None:
    sqs = aws_clients.sqs
    await sqs.create_queue(QueueName=aws.TICKET_QUEUE, Attributes={"FifoQueue": "true"})
    queue_url, _ = await aws.ensure_fifo_queue_with_dlq(
        sqs, aws.TICKET_QUEUE, aws.TICKET_DLQ, max_receives=3
    )
    attributes = (
        await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    )["Attributes"]
    assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] in (3, "3")


async def test_devstack_dynamodb_tables_have_the_designed_keys(
    moto_endpoint: str, aws_clients: aws.AwsClients
) -> None:
    await aws.provision(aws.AwsEndpoint(moto_endpoint))
    dynamodb = aws_clients.dynamodb
    counters = (await dynamodb.describe_table(TableName="counters"))["Table"]
    assert counters["KeySchema"] == [{"AttributeName": "eventId", "KeyType": "HASH"}]
    positions = (await dynamodb.describe_table(TableName="positions"))["Table"]
    assert positions["KeySchema"] == [
        {"AttributeName": "eventId", "KeyType": "HASH"},
        {"AttributeName": "requestId", "KeyType": "RANGE"},
    ]
    assert not positions.get("GlobalSecondaryIndexes")  # the line is read by key
    ttl = (await dynamodb.describe_time_to_live(TableName="positions"))["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    assert ttl["AttributeName"] == "ttl"


async def test_devstack_bucket_is_created_once(aws_clients: aws.AwsClients) -> None:
    assert await aws.ensure_bucket(aws_clients.s3, "tansu") is True
    assert await aws.ensure_bucket(aws_clients.s3, "tansu") is False


async def test_the_stack_database_commits_as_the_settings_say(
    postgres_admin_dsn: str, postgres_dsn: str
) -> None:
    name = postgres_dsn.rpartition("/")[2]

    async def in_a_new_session() -> str:
        connection = await asyncpg.connect(postgres_dsn)
        try:
            return str(await connection.fetchval("SHOW synchronous_commit"))
        finally:
            await connection.close()

    await postgres.set_synchronous_commit(postgres_admin_dsn, name, "off")
    assert await in_a_new_session() == "off"
    await postgres.set_synchronous_commit(postgres_admin_dsn, name, "on")  # not sticky
    assert await in_a_new_session() == "on"
    with pytest.raises(ValueError, match="on or off"):
        await postgres.set_synchronous_commit(postgres_admin_dsn, name, "on; DROP TABLE x")
    with pytest.raises(ValidationError):
        DevstackSettings(postgres_synchronous_commit="local")


async def test_devstack_database_is_created_once(postgres_admin_dsn: str) -> None:
    name = f"urr_devstack_{uuid.uuid4().hex[:12]}"
    try:
        assert await postgres.ensure_database(postgres_admin_dsn, name) is True
        assert await postgres.ensure_database(postgres_admin_dsn, name) is False
        base = postgres_admin_dsn.rpartition("/")[0]
        connection = await asyncpg.connect(f"{base}/{name}")
        try:
            assert await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()
    finally:
        admin = await asyncpg.connect(postgres_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        finally:
            await admin.close()


def test_devstack_private_postgres_starts_keeps_data_and_stops(tmp_path: Path) -> None:
    import asyncio
    import shutil
    import tempfile

    # Under root the server runs as `postgres`, who cannot enter pytest's 0700 tmp folders.
    parent = Path(tempfile.mkdtemp(prefix="urr-devstack-test-"))
    port = free_port()
    try:
        for round_number in (1, 2):
            server = postgres.private_postgres(
                parent, port, tmp_path / "pg.log", settings=postgres.FAST_UNSAFE_SETTINGS
            )
            server.start()
            pid = server.pid
            try:
                dsn = postgres.dsn("127.0.0.1", port, "postgres", "postgres")
                asyncio.run(postgres.wait_accepting(dsn, 30))
                created = asyncio.run(postgres.ensure_database(dsn, "urr"))
                # The cluster is initialised once: the second start finds the database.
                assert created is (round_number == 1)
            finally:
                server.stop()
            assert not is_listening("127.0.0.1", port)
            assert pid is not None
            assert not Path(f"/proc/{pid}").exists()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data folder to another user")
def test_devstack_postgres_data_moves_where_its_user_can_reach() -> None:
    import pwd
    import shutil
    import tempfile

    closed = Path(tempfile.mkdtemp(prefix="urr-devstack-closed-"))  # 0700, root's
    open_ = Path(tempfile.mkdtemp(prefix="urr-devstack-open-"))
    open_.chmod(0o755)
    fallback: Path | None = None
    try:
        assert postgres.prepare_data_parent(open_ / "postgres", "postgres") == open_ / "postgres"
        fallback = postgres.prepare_data_parent(closed / "postgres", "postgres")
        assert fallback != closed / "postgres"
        assert fallback.parent == Path(tempfile.gettempdir())
        assert fallback.stat().st_uid == pwd.getpwnam("postgres").pw_uid
        # The same checkout always lands in the same folder, so its data are found again.
        assert postgres.prepare_data_parent(closed / "postgres", "postgres") == fallback
    finally:
        for folder in (closed, open_, fallback):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


async def test_devstack_tables_go_to_dynalite_and_queues_to_moto(
    moto_endpoint: str, dynalite_endpoint: str
) -> None:
    """The split the stack runs with: DynamoDB on dynalite (no TTL there: passed over),
    SQS on moto."""
    import boto3

    await aws.provision(aws.AwsEndpoint(moto_endpoint, dynamodb_url=dynalite_endpoint))
    again = await aws.provision(aws.AwsEndpoint(moto_endpoint, dynamodb_url=dynalite_endpoint))
    assert again.tables == (aws.COUNTERS_TABLE, aws.POSITIONS_TABLE)
    dynalite = boto3.client(
        "dynamodb",
        endpoint_url=dynalite_endpoint,
        region_name="us-east-1",
        aws_access_key_id="urr-local",
        aws_secret_access_key="urr-local",
    )
    try:
        assert {aws.COUNTERS_TABLE, aws.POSITIONS_TABLE} <= set(
            dynalite.list_tables()["TableNames"]
        )
    finally:
        dynalite.close()
    infra.check_dynamodb(dynalite_endpoint)  # what `up` asks before reusing one
    with pytest.raises(Exception, match="Could not connect"):
        infra.check_dynamodb(f"http://127.0.0.1:{free_port()}")
