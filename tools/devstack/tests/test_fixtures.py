from __future__ import annotations

import random
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis


async def test_redis_url_is_an_empty_private_server(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert await client.dbsize() == 0
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()


async def test_postgres_dsn_is_a_fresh_database(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
    finally:
        await conn.close()


async def test_kafka_bootstrap_round_trips_a_record(kafka_bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait("fixture-check", b"hello")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        "fixture-check", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    assert [m.value for msgs in batches.values() for m in msgs] == [b"hello"]


async def test_moto_endpoint_serves_sqs(moto_endpoint: str) -> None:
    import aioboto3

    session = aioboto3.Session()
    async with session.client(
        "sqs",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    ) as sqs:
        url = (await sqs.create_queue(QueueName="fixture-check"))["QueueUrl"]
        await sqs.send_message(QueueUrl=url, MessageBody="hi")
        got = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
    assert [m["Body"] for m in got["Messages"]] == ["hi"]


async def test_the_stacks_moto_serves_sqs_and_s3_without_an_access_log_line_per_request(
    tmp_path: Path,
) -> None:
    """``urr_devstack.moto_server``: the module scan read once still routes each service,
    and werkzeug's per-request line is gone (an error would still be logged)."""
    import aioboto3

    from urr_devstack.procs import free_port, moto_server

    server = moto_server(free_port(), tmp_path / "moto.log")
    server.die_with_parent = True
    server.start()
    try:
        endpoint = f"http://{server.host}:{server.port}"
        session = aioboto3.Session()
        keys = {"region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
        async with session.client("sqs", endpoint_url=endpoint, **keys) as sqs:
            url = (await sqs.create_queue(QueueName="quiet-check"))["QueueUrl"]
            for n in range(20):
                await sqs.send_message(QueueUrl=url, MessageBody=f"m{n}")
            got = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        async with session.client("s3", endpoint_url=endpoint, **keys) as s3:
            await s3.create_bucket(Bucket="quiet-check")
            await s3.put_object(Bucket="quiet-check", Key="k", Body=b"v")
            body = await (await s3.get_object(Bucket="quiet-check", Key="k"))["Body"].read()
    finally:
        server.stop()
    assert len(got["Messages"]) == 10
    assert body == b"v"
    log = (tmp_path / "moto.log").read_text()
    # moto_server's own log has a line per request: '127.0.0.1 - - [...] "POST / HTTP/1.1" 200 -'
    assert '"POST / HTTP/1.1" 200' not in log, log[-2000:]
    assert '"GET /quiet-check/k HTTP/1.1"' not in log, log[-2000:]


def test_free_port_never_hands_out_a_port_twice() -> None:
    # Among a few hundred random ephemeral ports a repeat is likely; callers pick several ports
    # before binding any, so a repeat made two test servers collide (seen in CI).
    from urr_devstack.procs import free_port

    ports = [free_port() for _ in range(400)]
    assert len(set(ports)) == len(ports)


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    """Outgoing connections take their local ports from the ephemeral range: a port picked
    there may be gone by the time a server binds it (seen with two xdist workers)."""
    import socket

    from urr_devstack.procs import free_port

    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    assert max(ports) + 2000 < ephemeral_start  # derived ports (metrics, internal) too
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))


def test_parallel_workers_pick_from_disjoint_residues_which_derived_ports_keep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A service binds its metrics and internal listeners at +1000 and +2000: another xdist
    worker must never pick one of those (seen in CI: a stack's metrics port was taken)."""
    from urr_devstack import procs

    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    picked: dict[str, set[int]] = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        picked[worker] = {procs.free_port() for _ in range(150)}
    derived = {
        worker: {port + offset for port in ports for offset in (0, 1000, 2000)}
        for worker, ports in picked.items()
    }
    assert not derived["gw0"] & derived["gw1"]
    assert {port % 1000 for port in picked["gw0"]} <= set(range(500))
    assert {port % 1000 for port in picked["gw1"]} <= set(range(500, 1000))


def test_free_port_never_hands_out_a_port_another_one_derives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stack's service binds its metrics listener at its port + 1000 only once it starts: a
    test server picked in between must not get that port (seen in CI: an alert webhook took a
    stack's metrics port). The draw is forced to offer exactly those ports first."""
    from urr_devstack import procs

    monkeypatch.setattr(procs, "_HANDED_OUT", set())
    service = procs.free_port()
    thousands = service // 1000
    derived = [thousands + 1, thousands + 2, thousands - 1, thousands - 2]
    elsewhere = [
        t for t in range(procs._PICK_FROM // 1000, procs._PICK_TO // 1000) if abs(t - thousands) > 2
    ]
    # The derived ones first; then ports far from them (one of those may be bound by another
    # test worker, so the draw goes on to the next rather than to a fixed answer).
    offered = iter(derived + elsewhere)
    drawn: list[int] = []

    def draw(start: int, stop: int) -> int:
        drawn.append(next(offered))
        return drawn[-1]

    monkeypatch.setattr(random, "randrange", draw)
    monkeypatch.setattr(random, "choice", lambda residues: service % 1000)
    port = procs.free_port()
    assert drawn[:4] == derived  # every derived port was offered, and refused
    assert port // 1000 not in derived
    assert port // 1000 != thousands
    assert port % 1000 == service % 1000
