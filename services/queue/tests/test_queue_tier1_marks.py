"""Tier 2 tells the Tier-1 table that a place is spent: real Redis, DynamoDB on dynalite.

The Tier-1 rows are written and read by the VWR's own store (``urr_vwr_lambda.store``), so
these tests hold the two services to the same row format.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from botocore.exceptions import ClientError
from prometheus_client import CollectorRegistry

from urr_common.clients import redis_client
from urr_common.settings import AwsSettings, RedisSettings
from urr_devstack.procs import free_port
from urr_queue.config import EventConfig
from urr_queue.metrics import QueueMetrics
from urr_queue.settings import Tier1PlacesSettings
from urr_queue.store import QueueStore, Refusal, Waiting
from urr_queue.tier1 import place_key
from urr_queue.tier1_marks import SpentPlaceMarker, SpentPlaceTable, open_dynamodb
from urr_vwr_lambda.settings import TableSettings
from urr_vwr_lambda.store import VwrStore

pytestmark = pytest.mark.integration

EVENT = "marks-1"
TICK = {"max_admit": 2_000, "max_scan": 5_000, "max_expire": 2_000}


def aws_settings(endpoint: str) -> AwsSettings:
    return AwsSettings(
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )


@pytest_asyncio.fixture
async def queue_store(single_redis: RedisSettings) -> AsyncIterator[QueueStore]:
    client = redis_client(single_redis)
    try:
        store = QueueStore(client, heartbeat_bucket_ms=500)
        config = EventConfig(require_tier1_token=True, capacity=10, admit_per_second=1000.0)
        assert await store.configure(EVENT, config) == "created"
        await asyncio.sleep(0.02)
        yield store
    finally:
        await client.aclose()


def tier1_place(vwr: VwrStore, *, admitted: bool = True) -> tuple[str, int]:
    """A place as the Tier-1 room writes it (assign, then the check that admits it)."""
    now_s = int(time.time())
    if vwr.get_event(EVENT) is None:
        vwr.put_event(EVENT, is_active=True, batch_size=100, now_ms=now_s * 1000)
    request_id = str(uuid.uuid4())
    position, epoch = vwr.reserve_position(EVENT, now_ms=now_s * 1000)
    written = vwr.put_place(
        EVENT, request_id, position=position, epoch=epoch, user_id=None, now_s=now_s
    )
    assert written
    if admitted:
        place = vwr.get_place(EVENT, request_id)
        assert place is not None
        assert vwr.record_admission(place, token="t", token_exp=now_s + 600, now_s=now_s)
    return request_id, position


async def spend(store: QueueStore, user: str, request_id: str, position: int) -> None:
    """``user`` comes into Tier 2 with the place's pass, is admitted, and leaves."""
    entered = await store.visit(
        EVENT,
        user,
        enter=True,
        tier1_position=position,
        tier1_place=place_key(request_id, position),
    )
    assert isinstance(entered, Waiting)
    await store.tick(EVENT, **TICK)
    await store.leave(EVENT, user, only_admitted=False)


async def mark_all(store: QueueStore, dynamodb: Any, table: str, *, lean: bool = True) -> int:
    """One round of a marker over every event's outbox."""
    async with SpentPlaceTable(dynamodb, table, lean=lean) as places:
        marker = SpentPlaceMarker(
            store,
            places,
            QueueMetrics.register(CollectorRegistry()),
            Tier1PlacesSettings(table=table),
        )
        return await marker.mark_all()


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "botocore"])
async def test_spent_places_are_marked_in_the_tier1_table(
    queue_store: QueueStore,
    tier1_tables: tuple[TableSettings, VwrStore],
    dynalite_endpoint: str,
    lean: bool,
):
    tables, vwr = tier1_tables
    spent_rid, spent_pos = tier1_place(vwr)
    other_rid, other_pos = tier1_place(vwr)
    await spend(queue_store, "u1", spent_rid, spent_pos)
    # A place whose row holds another number (written again since) and a place with no row.
    await spend(queue_store, "u2", other_rid, other_pos + 100)
    await spend(queue_store, "u3", str(uuid.uuid4()), 50)
    assert len(await queue_store.unmarked_places(EVENT, 10)) == 3
    async with open_dynamodb(aws_settings(dynalite_endpoint)) as dynamodb:
        settled = await mark_all(queue_store, dynamodb, tables.positions, lean=lean)
    assert settled == 3
    assert await queue_store.unmarked_places(EVENT, 10) == []
    marked = vwr.get_place(EVENT, spent_rid)
    assert marked is not None
    assert marked.spent_at is not None
    assert abs(marked.spent_at - time.time()) < 60
    assert not marked.current(marked.epoch, int(time.time()))
    untouched = vwr.get_place(EVENT, other_rid)
    assert untouched is not None
    assert untouched.spent_at is None
    # Marking again changes nothing (the first time stays).
    async with (
        open_dynamodb(aws_settings(dynalite_endpoint)) as dynamodb,
        SpentPlaceTable(dynamodb, tables.positions, lean=lean) as table,
    ):
        assert not await table.mark_spent(EVENT, spent_rid, spent_pos, spent_at_s=1)
    again = vwr.get_place(EVENT, spent_rid)
    assert again is not None
    assert again.spent_at == marked.spent_at


async def test_a_late_mark_changes_nothing_in_tier2(
    queue_store: QueueStore, tier1_tables: tuple[TableSettings, VwrStore], dynalite_endpoint: str
):
    """DynamoDB out of reach: the place stays in the outbox, the pass is refused all the same,
    and the next round that reaches the table marks it."""
    tables, vwr = tier1_tables
    rid, pos = tier1_place(vwr)
    await spend(queue_store, "u1", rid, pos)
    nowhere = aws_settings(f"http://127.0.0.1:{free_port()}")
    async with open_dynamodb(nowhere) as dynamodb:
        assert await mark_all(queue_store, dynamodb, tables.positions) == 0
    assert [place for place, _ in await queue_store.unmarked_places(EVENT, 10)] == [
        place_key(rid, pos)
    ]
    unmarked = vwr.get_place(EVENT, rid)
    assert unmarked is not None
    assert unmarked.spent_at is None
    again = await queue_store.visit(
        EVENT, "u1", enter=True, tier1_position=pos, tier1_place=place_key(rid, pos)
    )
    assert again is Refusal.TIER1_PASS_SPENT
    async with open_dynamodb(aws_settings(dynalite_endpoint)) as dynamodb:
        assert await mark_all(queue_store, dynamodb, tables.positions) == 1
    marked = vwr.get_place(EVENT, rid)
    assert marked is not None
    assert marked.spent_at is not None


async def test_the_service_marks_in_the_background(
    single_redis: RedisSettings,
    queue_client: Any,
    make_settings: Any,
    as_user: Any,
    admin_headers: Any,
    tier1_signer: Any,
    tier1_tables: tuple[TableSettings, VwrStore],
    dynalite_endpoint: str,
):
    tables, vwr = tier1_tables
    rid, pos = tier1_place(vwr)
    client = await queue_client(
        single_redis,
        aws=aws_settings(dynalite_endpoint),
        tier1_places=Tier1PlacesSettings(table=tables.positions, interval_s=0.1),
    )
    body = {"require_tier1_token": True, "admit_per_second": 1000}
    await client.put(f"/api/v1/admin/queue/{EVENT}", json=body, headers=admin_headers)
    token = tier1_signer.sign(rid, {"evt": EVENT, "rid": rid, "pos": pos})
    entered = await client.post(
        f"/api/v1/queue/{EVENT}/enter", headers=as_user("u1"), cookies={"urr-vwr-token": token}
    )
    assert entered.status == 201
    await client.post(f"/api/v1/queue/{EVENT}/leave", headers=as_user("u1"))
    deadline = time.monotonic() + 10
    place = vwr.get_place(EVENT, rid)
    while place is not None and place.spent_at is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        place = vwr.get_place(EVENT, rid)
    assert place is not None
    assert place.spent_at is not None


async def test_the_lean_path_fails_as_botocore_does(
    tier1_tables: tuple[TableSettings, VwrStore], dynalite_endpoint: str
):
    """An error of the table comes out of both paths as the same ``ClientError`` code, so the
    marker's handling (a failed mark stays in the outbox) is the same whichever one runs."""
    codes = {}
    async with open_dynamodb(aws_settings(dynalite_endpoint)) as dynamodb:
        for lean in (True, False):
            async with SpentPlaceTable(dynamodb, "no-such-table", lean=lean) as table:
                with pytest.raises(ClientError) as raised:
                    await table.mark_spent(EVENT, str(uuid.uuid4()), 1, spent_at_s=1)
            codes[lean] = raised.value.response["Error"]["Code"]
    assert codes == {True: "ResourceNotFoundException", False: "ResourceNotFoundException"}


async def test_the_lean_path_goes_through_the_proxy_botocore_would_use(
    tier1_tables: tuple[TableSettings, VwrStore],
    dynalite_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
):
    """The environment's proxy is looked up once, as botocore would (``NO_PROXY`` bypasses
    it): a proxy that is not there fails the mark, the same endpoint exempted reaches it."""
    tables, vwr = tier1_tables
    rid, pos = tier1_place(vwr)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with (
        open_dynamodb(aws_settings(dynalite_endpoint)) as dynamodb,
        SpentPlaceTable(dynamodb, tables.positions) as table,
    ):
        with pytest.raises(aiohttp.ClientError):
            await table.mark_spent(EVENT, rid, pos, spent_at_s=1)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with (
        open_dynamodb(aws_settings(dynalite_endpoint)) as dynamodb,
        SpentPlaceTable(dynamodb, tables.positions) as table,
    ):
        assert await table.mark_spent(EVENT, rid, pos, spent_at_s=1)
