"""The admission outbox (issue 19): every ``admitted`` and ``waived`` record the public log needs
reaches ``queue-events``, through Kafka outages, restarts and a full outbox, on real Redis (one
server and a Cluster) and a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import ResponseError

from urr_admission_log.consumer import LogMetrics, admissions_by_event
from urr_common.clients import open_kafka_producer, redis_client
from urr_common.settings import KafkaSettings, RedisSettings
from urr_devstack.procs import free_port, tansu_server
from urr_queue.app import ADMISSION_LOOP
from urr_queue.config import EventConfig
from urr_queue.context import QUEUE_CONTEXT
from urr_queue.keys import event_keys
from urr_queue.metrics import QueueMetrics
from urr_queue.outbox import OutboxRelay
from urr_queue.settings import OutboxSettings, QueueEventsSettings
from urr_queue.store import QueueStore, Waiting
from urr_ticket_worker.testing import create_topics, json_objects, read_topic

TICK = {"max_admit": 2_000, "max_scan": 5_000, "max_expire": 2_000}
#: A relay that retries fast and lets a lease go quickly (a test's minutes are short); an
#: attempt stuck on the broker is given up and retried well inside the tests' waits.
FAST = OutboxSettings(interval_s=0.05, retry_delay_s=0.3, lease_ttl_s=1.0, attempt_timeout_s=5.0)


async def create_topic(bootstrap: str, name: str) -> None:
    await asyncio.to_thread(create_topics, bootstrap, [name])


async def read_records(
    bootstrap: str, topic: str, until: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """The topic's JSON records from its start, once ``until`` holds for them."""
    raw = await read_topic(bootstrap, topic, until=lambda rs: until(json_objects(rs)))
    return json_objects(raw)


async def read_n(bootstrap: str, topic: str, want: int) -> list[dict[str, Any]]:
    return await read_records(bootstrap, topic, lambda records: len(records) >= want)


def records_of(values: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [value for value in values if value["type"] == kind]


async def outbox_depth(store: QueueStore, event_id: str) -> int:
    return int(await store.redis.xlen(event_keys(event_id).outbox))


async def wait_for(condition: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def read_admissions(bootstrap: str, topic: str, want: int) -> list[dict[str, Any]]:
    """The whole topic once it holds ``want`` distinct admissions (other records too)."""

    def enough(records: list[dict[str, Any]]) -> bool:
        return len({r["id"] for r in records_of(records, "admitted")}) >= want

    return await read_records(bootstrap, topic, enough)


async def client_with_event(
    queue_client: Any,
    redis: RedisSettings,
    admin_headers: Any,
    *,
    bootstrap: str,
    topic: str,
    event: str,
    outbox: OutboxSettings = FAST,
) -> Any:
    """A queue app whose Kafka is ``bootstrap`` (perhaps nobody there), with ``event`` set up
    to admit at once."""
    client = await queue_client(
        redis,
        kafka=KafkaSettings(bootstrap_servers=bootstrap, request_timeout_ms=1_000),
        queue_events=QueueEventsSettings(topic=topic, retry_delay_s=0.3),
        outbox=outbox,
    )
    body = {"capacity": 100, "admit_per_second": 1000}
    put = await client.put(f"/api/v1/admin/queue/{event}", json=body, headers=admin_headers)
    assert put.status == 201
    return client


async def enter_all(client: Any, event_id: str, users: list[str], as_user: Any) -> None:
    for user in users:
        response = await client.post(f"/api/v1/queue/{event_id}/enter", headers=as_user(user))
        assert response.status == 201, await response.text()


async def test_admissions_while_the_broker_is_down_all_arrive_once_it_is_back(
    single_redis: RedisSettings,
    queue_client: Any,
    as_user: Any,
    admin_headers: Any,
    tmp_path: Path,
) -> None:
    """Kafka is down while 30 users are admitted in several ticks: the records wait in Redis
    (the gauges show them), then the broker starts and every admission arrives, in order, and
    becomes exactly one leaf of the admission log after its dedupe."""
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topic = f"queue-events-{uuid.uuid4().hex[:8]}"
    event = "outbox-down"
    client = await client_with_event(
        queue_client, single_redis, admin_headers, bootstrap=bootstrap, topic=topic, event=event
    )
    users = [f"u{n:02d}" for n in range(30)]
    loop = client.app[ADMISSION_LOOP]
    ctx = client.app[QUEUE_CONTEXT]
    admitted: list[str] = []
    for batch in (users[:10], users[10:20], users[20:]):
        await enter_all(client, event, batch, as_user)
        await asyncio.sleep(0.05)
        result = await loop.tick(event)
        assert result is not None
        admitted += [user for user, _ in result.admitted]
    assert admitted == users
    assert await outbox_depth(ctx.store, event) == 30
    metrics = ctx.metrics

    async def measured() -> bool:
        failed = metrics.outbox_relay_failures.labels("kafka")._value.get()
        return bool(metrics.outbox_depth._value.get() == 30 and failed >= 1)

    await wait_for(measured)
    assert metrics.outbox_oldest_age._value.get() >= 0.0

    broker = tansu_server(port, tmp_path / "tansu.log")
    broker.start()
    try:
        await create_topic(bootstrap, topic)
        values = await read_admissions(bootstrap, topic, want=30)
        admissions = records_of(values, "admitted")
        unique = {record["id"]: record for record in admissions}
        assert [record["userId"] for record in unique.values()] == users, "in order, none lost"
        assert [record["queueNumber"] for record in unique.values()] == list(range(1, 31))
        assert [record["position"] for record in unique.values()][:10] == list(range(1, 11))
        # The log's own decoding and dedupe: one leaf per admission, whatever was resent.
        leaves = admissions_by_event(
            [orjson.dumps(v) for v in values], b"secret", LogMetrics(CollectorRegistry())
        )
        assert len({leaf.record_id for leaf in leaves[event]}) == 30
        await wait_for(lambda: _is(outbox_depth(ctx.store, event), 0))
        await wait_for(lambda: _gauge_is(metrics.outbox_depth, 0))
        assert metrics.outbox_relayed._value.get() >= 30
    finally:
        await client.close()
        broker.stop()


async def _is(value: Any, wanted: int) -> bool:
    return bool(await value == wanted)


async def _gauge_is(gauge: Any, wanted: float) -> bool:
    return bool(gauge._value.get() == wanted)


async def _counter_reached(counter: Any, wanted: float) -> bool:
    return bool(counter._value.get() >= wanted)


async def test_a_restarted_queue_relays_what_its_predecessor_left_pending(
    kafka_bootstrap: str,
    single_redis: RedisSettings,
    queue_client: Any,
    as_user: Any,
    admin_headers: Any,
) -> None:
    """The first process admits with no broker reachable and stops; the next one, with a
    broker, relays the pending records at once (a replica that cannot reach Kafka measures
    the outbox but claims no lease, so nobody waits for one to lapse)."""
    topic = f"queue-events-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_bootstrap, topic)
    event = "outbox-restart"
    slow_lease = OutboxSettings(interval_s=0.05, retry_delay_s=0.3, lease_ttl_s=60.0)
    dead = f"127.0.0.1:{free_port()}"
    first = await client_with_event(
        queue_client,
        single_redis,
        admin_headers,
        bootstrap=dead,
        topic=topic,
        event=event,
        outbox=slow_lease,
    )
    users = [f"r{n}" for n in range(12)]
    await enter_all(first, event, users, as_user)
    await asyncio.sleep(0.05)
    result = await first.app[ADMISSION_LOOP].tick(event)
    assert result is not None
    assert len(result.admitted) == 12
    store = first.app[QUEUE_CONTEXT].store
    failures = first.app[QUEUE_CONTEXT].metrics.outbox_relay_failures.labels("kafka")
    # It tried Kafka and failed: at least once (it retries every 0.3 s, so a slow poll can see 2).
    await wait_for(lambda: _counter_reached(failures, 1), timeout_s=10)
    assert await store.redis.get(event_keys(event).outbox_lease) is None
    assert await outbox_depth(store, event) == 12
    await first.close()
    second = await queue_client(
        single_redis,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
        queue_events=QueueEventsSettings(topic=topic),
        outbox=slow_lease,
    )
    try:
        started = time.monotonic()
        values = await read_admissions(kafka_bootstrap, topic, want=12)
        assert [r["userId"] for r in records_of(values, "admitted")] == users
        assert time.monotonic() - started < slow_lease.lease_ttl_s / 2, "not after the lease"
        await wait_for(lambda: _is(outbox_depth(second.app[QUEUE_CONTEXT].store, event), 0))
    finally:
        await second.close()


@asynccontextmanager
async def relay_on(
    store: QueueStore, bootstrap: str, topic: str, settings: OutboxSettings = FAST
) -> AsyncIterator[OutboxRelay]:
    yield OutboxRelay(
        store.redis,
        topic=topic,
        settings=settings,
        metrics=QueueMetrics.register(CollectorRegistry()),
        producer_factory=lambda: open_kafka_producer(KafkaSettings(bootstrap_servers=bootstrap)),
    )


async def open_event(store: QueueStore, event_id: str, **fields: Any) -> None:
    values: dict[str, Any] = {"capacity": 100, "admit_per_second": 1000.0, **fields}
    assert await store.configure(event_id, EventConfig(**values)) == "created"


async def queue_up(store: QueueStore, event_id: str, count: int) -> list[str]:
    users = [f"{event_id}-{n}" for n in range(count)]
    for user in users:
        assert isinstance(await store.visit(event_id, user, enter=True), Waiting)
    await asyncio.sleep(0.02)  # the rate bucket starts empty
    return users


async def test_a_full_outbox_stops_admission_and_loses_nothing(
    store_on: QueueStore, kafka_bootstrap: str
) -> None:
    """Cap 5, three admissions a tick, no relay: two ticks admit 3 + 3 (a tick may pass the
    cap by its own records), the third admits nobody and says so; nothing is trimmed. Once
    the relay drained the outbox, admission goes on."""
    store, event = store_on, f"outbox-cap-{uuid.uuid4().hex[:6]}"
    await open_event(store, event)
    users = await queue_up(store, event, 10)
    tick = {**TICK, "max_admit": 3}
    first = await store.tick(event, outbox_cap=5, **tick)
    second = await store.tick(event, outbox_cap=5, **tick)
    full = await store.tick(event, outbox_cap=5, **tick)
    assert first is not None
    assert second is not None
    assert full is not None
    assert (len(first.admitted), len(second.admitted)) == (3, 3)
    assert not first.outbox_full
    assert not second.outbox_full
    assert full.outbox_full
    assert full.admitted == []
    assert full.waiting == 4
    assert await outbox_depth(store, event) == 6, "never trimmed"

    topic = f"queue-events-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_bootstrap, topic)
    async with relay_on(store, kafka_bootstrap, topic) as relay:
        assert event in await relay.survey()
        assert relay.metrics.outbox_depth._value.get() >= 6
        async with relay._factory() as producer:
            assert await relay.relay_event(producer, event) == 6
    assert await outbox_depth(store, event) == 0
    values = await read_n(kafka_bootstrap, topic, 6)
    assert [r["userId"] for r in values] == users[:6]
    after = await store.tick(event, outbox_cap=5, **tick)
    assert after is not None
    assert not after.outbox_full
    assert [user for user, _ in after.admitted] == users[6:9]


async def test_the_admission_and_its_record_are_one_script(store_on: QueueStore) -> None:
    """A tick whose outbox cannot be written fails with nothing admitted and no record; the
    next tick admits them, and each admission has exactly its record, in admission order."""
    store, event = store_on, f"outbox-atomic-{uuid.uuid4().hex[:6]}"
    await open_event(store, event)
    users = await queue_up(store, event, 5)
    outbox = event_keys(event).outbox
    await store.redis.set(outbox, b"not a stream")
    with pytest.raises(ResponseError):
        await store.tick(event, outbox_cap=100, **TICK)
    keys = event_keys(event)
    assert await store.redis.zcard(keys.queue) == 5, "nobody left the queue"
    assert await store.redis.zcard(keys.active) == 0, "nobody admitted"
    assert await store.redis.get(outbox) == b"not a stream"
    await store.redis.delete(outbox)

    result = await store.tick(event, outbox_cap=100, **TICK)
    assert result is not None
    assert [user for user, _ in result.admitted] == users
    entries: list[Any] = list(await store.redis.xrange(outbox) or [])
    fields = [{k.decode(): v.decode() for k, v in entry.items()} for _, entry in entries]
    assert [f["member"] for f in fields] == users
    assert [f["type"] for f in fields] == ["admitted"] * 5
    assert [int(f["position"]) for f in fields] == [1, 2, 3, 4, 5]
    assert {int(f["at"]) for f in fields} == {result.now_ms}
    assert len({f["id"] for f in fields}) == 5
    # Without an outbox (no relay: queue-events off) a tick writes no record at all.
    other = f"outbox-off-{uuid.uuid4().hex[:6]}"
    await open_event(store, other)
    await queue_up(store, other, 2)
    off = await store.tick(other, **TICK)
    assert off is not None
    assert len(off.admitted) == 2
    assert await outbox_depth(store, other) == 0


async def test_one_replica_relays_an_event_at_a_time_and_hands_it_over(
    store_on: QueueStore, kafka_bootstrap: str
) -> None:
    """Two relays on one outbox: the first claims it, the second only measures it; the first
    gives it up at shutdown and the second has it at once; when the second stops renewing,
    the first takes over after the lease. A deleted event's drained outbox is removed."""
    store, event = store_on, f"outbox-lease-{uuid.uuid4().hex[:6]}"
    await open_event(store, event)
    await queue_up(store, event, 3)
    assert (await store.tick(event, outbox_cap=100, **TICK)) is not None
    topic = f"queue-events-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_bootstrap, topic)
    async with (
        relay_on(store, kafka_bootstrap, topic) as one,
        relay_on(store, kafka_bootstrap, topic) as two,
    ):
        assert event not in await one.survey(claim=False), "measuring claims nothing"
        assert one.metrics.outbox_depth._value.get() >= 3
        assert event in await one.survey()
        assert event not in await two.survey()
        assert two.metrics.outbox_depth._value.get() >= 3, "the other replica still measures"
        await one.release()
        assert event in await two.survey(), "released: taken at once"
        assert event not in await one.survey()
        await asyncio.sleep(FAST.lease_ttl_s + 0.2)
        assert event in await one.survey(), "not renewed: lapsed"
        async with one._factory() as producer:
            assert await one.relay_event(producer, event) == 3
        assert await store.delete_event(event) is not None
        await one.survey()
        assert await store.redis.exists(event_keys(event).outbox) == 0
    values = await read_n(kafka_bootstrap, topic, 3)
    assert Counter(r["type"] for r in values) == {"admitted": 3}


async def test_passthrough_admissions_and_prequeue_publications_are_kept_too(
    kafka_bootstrap: str,
    single_redis: RedisSettings,
    queue_client: Any,
    as_user: Any,
    admin_headers: Any,
) -> None:
    """Every record the admission log reads goes through the outbox: a passthrough admission
    (written by the visit script), and the pre-queue's commitment, roster and reveal."""
    from datetime import UTC, datetime, timedelta
    from hashlib import sha256

    dead = f"127.0.0.1:{free_port()}"
    client = await queue_client(
        single_redis,
        kafka=KafkaSettings(bootstrap_servers=dead, request_timeout_ms=500),
        queue_events=QueueEventsSettings(retry_delay_s=0.3),
        outbox=FAST,
    )
    admin = "/api/v1/admin/queue/"
    put = await client.put(f"{admin}pass-1", json={"mode": "passthrough"}, headers=admin_headers)
    assert put.status == 201
    for user in ("p1", "p2"):
        entered = await client.post("/api/v1/queue/pass-1/enter", headers=as_user(user))
        assert (await entered.json())["status"] == "admitted"
    secret = bytes(range(32))
    now = datetime.now(UTC)
    body = {
        "prequeue_start": (now - timedelta(seconds=1)).isoformat(),
        "sale_start": (now + timedelta(seconds=3)).isoformat(),
        "prequeue_commitment": sha256(secret).hexdigest(),
    }
    assert (await client.put(f"{admin}pre-1", json=body, headers=admin_headers)).status == 201
    for user in ("f1", "f2", "f3"):
        joined = await client.post("/api/v1/queue/pre-1/enter", headers=as_user(user))
        assert (await joined.json())["status"] == "prequeue"
    await asyncio.sleep(3.2 - (datetime.now(UTC) - now).total_seconds())  # the sale starts
    reveal = f"{admin}pre-1/prequeue/reveal"
    revealed = await client.post(reveal, json={"secret": secret.hex()}, headers=admin_headers)
    assert revealed.status == 200, await revealed.text()
    store = client.app[QUEUE_CONTEXT].store
    assert await outbox_depth(store, "pass-1") == 2
    assert await outbox_depth(store, "pre-1") >= 3

    topic = f"queue-events-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_bootstrap, topic)
    async with relay_on(store, kafka_bootstrap, topic) as relay, relay._factory() as producer:
        assert await relay.relay_event(producer, "pass-1") == 2
        assert await relay.relay_event(producer, "pre-1") >= 3
    values = await read_records(
        kafka_bootstrap,
        topic,
        lambda got: (
            len(records_of(got, "admitted")) == 2 and bool(records_of(got, "prequeue_revealed"))
        ),
    )
    passed = records_of(values, "admitted")
    assert [(r["userId"], r["path"], r["queueNumber"]) for r in passed] == [
        ("p1", "passthrough", 1),
        ("p2", "passthrough", 2),
    ]
    kinds = [r["type"] for r in values if r["eventId"] == "pre-1"]
    assert kinds[0] == "prequeue_committed"
    assert kinds[-1] == "prequeue_revealed"
    assert "prequeue_roster" in kinds
    await client.close()


def test_outbox_settings_are_validated_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from urr_queue.settings import QueueSettings

    monkeypatch.setenv("URR_OUTBOX__MAX_LEN", "1000")
    monkeypatch.setenv("URR_OUTBOX__LEASE_TTL_S", "5")
    settings = QueueSettings()
    assert (settings.outbox.max_len, settings.outbox.lease_ttl_s) == (1000, 5.0)
    for name, bad in (("MAX_LEN", "0"), ("INTERVAL_S", "0"), ("LEASE_TTL_S", "1.2")):
        monkeypatch.setenv(f"URR_OUTBOX__{name}", bad)
        with pytest.raises(ValidationError):
            QueueSettings()
        monkeypatch.setenv(f"URR_OUTBOX__{name}", {"MAX_LEN": "1000"}.get(name, "5"))


def test_outbox_entries_become_the_records_the_log_reads() -> None:
    """The relay's decoding of each entry kind: the JSON is what ``events.py`` publishes and
    what ``urr_admission_log.leaves`` accepts (a pre-queue rank may come as a float score)."""
    from urr_admission_log.leaves import admission_of, waivers_of
    from urr_queue.members import encode_member
    from urr_queue.outbox import outbox_record

    uid = str(uuid.uuid4())
    admitted = outbox_record(
        "e-1",
        {
            b"id": b"abc-2",
            b"type": b"admitted",
            b"member": encode_member(uid),
            b"number": b"1.099511627777e+12",
            b"position": b"1",
            b"at": b"1733490000000",
        },
    )
    assert admitted == {
        "id": "abc-2",
        "type": "admitted",
        "eventId": "e-1",
        "userId": uid,
        "position": 1,
        "at": 1733490000000,
        "queueNumber": 1099511627777,
    }
    assert admission_of(admitted, b"secret") is not None
    waived = outbox_record(
        "e-1", {b"id": b"abc-1", b"type": b"waived", b"numbers": b"3,5", b"at": b"7"}
    )
    assert [leaf.record_id for leaf in waivers_of(waived) or []] == ["abc-1:3", "abc-1:5"]
    whole = {"type": "prequeue_committed", "eventId": "e-1", "id": "x"}
    assert outbox_record("e-1", {b"json": orjson.dumps(whole)}) == whole


async def test_two_replicas_relay_each_record_once(
    kafka_bootstrap: str,
    single_redis: RedisSettings,
    queue_client: Any,
    as_user: Any,
    admin_headers: Any,
) -> None:
    """Two queue processes on one Redis, both relaying: the lease lets one send the event's
    records, so each admission reaches Kafka exactly once, in order."""
    topic = f"queue-events-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_bootstrap, topic)
    event = "outbox-replicas"
    settings = OutboxSettings(interval_s=0.05, retry_delay_s=0.3, lease_ttl_s=10.0)
    one = await client_with_event(
        queue_client,
        single_redis,
        admin_headers,
        bootstrap=kafka_bootstrap,
        topic=topic,
        event=event,
        outbox=settings,
    )
    two = await queue_client(
        single_redis,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
        queue_events=QueueEventsSettings(topic=topic),
        outbox=settings,
    )
    users = [f"w{n:02d}" for n in range(40)]
    for index, batch in enumerate((users[:20], users[20:])):
        client = (one, two)[index]
        await enter_all(client, event, batch, as_user)
        await asyncio.sleep(0.05)
        assert await client.app[ADMISSION_LOOP].tick(event) is not None
    values = await read_admissions(kafka_bootstrap, topic, want=40)
    await asyncio.sleep(0.5)  # a second sender would have sent by now
    values = await read_admissions(kafka_bootstrap, topic, want=40)
    admissions = records_of(values, "admitted")
    assert [r["userId"] for r in admissions] == users, "once each, in order"
    relayed = [c.app[QUEUE_CONTEXT].metrics.outbox_relayed._value.get() for c in (one, two)]
    assert sum(relayed) == 40
    await one.close()
    await two.close()


def relay_with(store: QueueStore, factory: Any, settings: OutboxSettings = FAST) -> OutboxRelay:
    return OutboxRelay(
        store.redis,
        topic="unused",
        settings=settings,
        metrics=QueueMetrics.register(CollectorRegistry()),
        producer_factory=factory,
    )


async def waiting_record(store: QueueStore) -> str:
    """An event whose outbox holds one record, so the relay opens its producer."""
    event = f"outbox-wait-{uuid.uuid4().hex[:6]}"
    await open_event(store, event)
    await queue_up(store, event, 1)
    result = await store.tick(event, outbox_cap=10, **TICK)
    assert result is not None
    assert len(result.admitted) == 1
    return event


@asynccontextmanager
async def patient_store(redis: RedisSettings) -> AsyncIterator[QueueStore]:
    """A store whose client waits 5 s to connect: these tests judge the relay, and the
    production 0.5 s connect timeout is not met on a loaded CI host (a failed run)."""
    client = redis_client(redis)
    try:
        yield QueueStore(client, heartbeat_bucket_ms=500)
    finally:
        await client.aclose()


async def test_a_cancel_the_broker_client_turns_into_an_error_still_stops_the_relay(
    single_redis: RedisSettings,
) -> None:
    """aiokafka's bootstrap can turn a cancelled connect into "Unable to bootstrap": the relay
    saw one more broker failure, went round again and never ended, so the queue's shutdown
    waited for it for ever (a fresh-clone CI run hung 60 s in ``first.close()``)."""
    opening = asyncio.Event()

    @asynccontextmanager
    async def swallowing() -> AsyncIterator[Any]:
        opening.set()
        # What the driver does: the cancel becomes its own connection error.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        if opening.is_set():  # always: the generator only needs its yield
            raise ConnectionError("Unable to bootstrap")
        yield

    async with patient_store(single_redis) as store:
        await waiting_record(store)
        task = asyncio.create_task(relay_with(store, swallowing).run())
        await asyncio.wait_for(opening.wait(), 10)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=10)
        assert done, "the relay kept running after it was cancelled"
        assert task.cancelled()


async def test_a_broker_that_never_answers_costs_one_bounded_attempt(
    single_redis: RedisSettings,
) -> None:
    """A producer that never finishes opening (a broker that accepts and does not answer):
    the attempt ends after ``attempt_timeout_s`` as a broker failure and is tried again."""
    attempts = 0

    @asynccontextmanager
    async def silent() -> AsyncIterator[Any]:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(3600)
        yield  # pragma: no cover

    settings = OutboxSettings(
        interval_s=0.05, retry_delay_s=0.05, lease_ttl_s=1.0, attempt_timeout_s=0.3
    )
    async with patient_store(single_redis) as store:
        await waiting_record(store)
        relay = relay_with(store, silent, settings)
        failures = relay.metrics.outbox_relay_failures.labels("kafka")
        task = asyncio.create_task(relay.run())
        try:
            await wait_for(lambda: _counter_reached(failures, 2), timeout_s=20)
            assert attempts >= 2, "tried again after the bounded attempt"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
