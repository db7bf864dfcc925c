"""The random method's seed in the log: the commitment first, the seed once, never rewritten."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import orjson
import pytest
from prometheus_client import CollectorRegistry

from urr_admission_log.app import IMMUTABLE
from urr_admission_log.consumer import (
    LogMetrics,
    admissions_by_event,
    order_seed_records,
    store_order_seeds,
)
from urr_admission_log.leaves import admission_of

pytestmark = pytest.mark.integration
EVENT = "lottery-9"
SEED = "a1" * 32
COMMITMENT = hashlib.sha256(bytes.fromhex(SEED)).hexdigest()
COMMITTED = {
    "id": f"order_seed_committed:{EVENT}",
    "type": "order_seed_committed",
    "eventId": EVENT,
    "method": "random",
    "commitment": COMMITMENT,
}
REVEALED = {**COMMITTED, "id": f"order_seed_revealed:{EVENT}", "type": "order_seed_revealed"}


async def _feed(log: dict[str, Any], records: list[dict[str, Any]]) -> LogMetrics:
    metrics = LogMetrics(CollectorRegistry())
    values = [orjson.dumps(record) for record in records]
    assert admissions_by_event(values, b"s" * 32, metrics) == {}  # no leaf from these
    await store_order_seeds(log["pool"], order_seed_records(values), metrics)
    return metrics


async def refuses_rewrites(log: dict[str, Any], table: str) -> None:
    """Every write path refuses to change or drop a stored seed."""
    async with log["pool"].acquire() as conn:
        for sql in (
            f"UPDATE {table} SET seed = NULL",  # noqa: S608 - the test's own table names
            f"DELETE FROM {table}",  # noqa: S608
            f"TRUNCATE {table}",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)


async def test_the_commitment_then_the_seed_once(log: dict[str, Any]) -> None:
    client = log["client"]
    missing = await client.get(f"/v1/log/{EVENT}/order-seed")
    assert missing.status == 404
    assert (await missing.json())["code"] == "no_order_seed"
    assert (await client.get("/v1/log/bad id!/order-seed")).status in (400, 404)

    await _feed(log, [COMMITTED])
    before = await client.get(f"/v1/log/{EVENT}/order-seed")
    body = await before.json()
    assert (body["commitment"], body["revealed"], "seed" in body) == (COMMITMENT, False, False)
    assert before.headers["Cache-Control"] != IMMUTABLE

    forged = {**REVEALED, "seed": "00" * 32}
    junk = {**REVEALED, "seed": "not hex"}
    metrics = await _feed(log, [{**REVEALED, "seed": SEED}, forged, junk, COMMITTED])
    assert metrics.records.labels("malformed")._value.get() == 1
    after = await client.get(f"/v1/log/{EVENT}/order-seed")
    assert after.headers["Cache-Control"] == IMMUTABLE
    document = await after.json()
    assert (document["seed"], document["commitment"]) == (SEED, COMMITMENT)
    assert document["committedAt"] == body["committedAt"]
    # Every write path refuses to change or drop it.
    await refuses_rewrites(log, "admission_order_seeds")


async def test_a_reveal_with_no_commitment_seen_publishes_its_own(log: dict[str, Any]) -> None:
    other = {**REVEALED, "eventId": "lost-1", "seed": SEED}
    await _feed(log, [other])
    document = await (await log["client"].get("/v1/log/lost-1/order-seed")).json()
    assert (document["revealed"], document["seed"]) == (True, SEED)


def test_an_admissions_order_key_goes_into_its_leaf() -> None:
    record = {
        "id": "r1",
        "type": "admitted",
        "eventId": EVENT,
        "userId": "u1",
        "queueNumber": 3,
        "at": 5,
        "orderKey": 12345,
    }
    admission = admission_of(record, b"s" * 32)
    assert admission is not None
    assert admission.leaf["key"] == 12345
    plain = admission_of({k: v for k, v in record.items() if k != "orderKey"}, b"s" * 32)
    assert plain is not None
    assert "key" not in plain.leaf
    for bad in (-1, 2**52, "12", True, 1.5):
        assert admission_of({**record, "orderKey": bad}, b"s" * 32) is None


TIER1_SEED = "b2" * 32
TIER1_COMMITMENT = hashlib.sha256(bytes.fromhex(TIER1_SEED)).hexdigest()
TIER1_COMMITTED = {
    **COMMITTED,
    "id": f"tier1_order_seed_committed:{EVENT}",
    "type": "tier1_order_seed_committed",
    "commitment": TIER1_COMMITMENT,
}
TIER1_REVEALED = {
    **TIER1_COMMITTED,
    "id": f"tier1_order_seed_revealed:{EVENT}",
    "type": "tier1_order_seed_revealed",
}


async def test_tier1s_seed_is_a_part_of_its_own(log: dict[str, Any]) -> None:
    client = log["client"]
    only_tier1 = "tier1-only"
    await _feed(log, [{**TIER1_COMMITTED, "eventId": only_tier1}])
    alone = await (await client.get(f"/v1/log/{only_tier1}/order-seed")).json()
    assert "commitment" not in alone
    assert alone["revealed"] is False
    assert alone["tier1"]["commitment"] == TIER1_COMMITMENT

    await _feed(log, [COMMITTED, TIER1_COMMITTED])
    # Malformed Tier-1 records: no seed, a seed that is not hex, a short commitment, no event.
    bad: list[dict[str, Any]] = [
        TIER1_REVEALED,
        {**TIER1_REVEALED, "seed": "zz" * 32},
        {**TIER1_COMMITTED, "commitment": "ab"},
        {**TIER1_REVEALED, "seed": TIER1_SEED, "eventId": ["x"]},
    ]
    metrics = await _feed(log, bad)
    assert metrics.records.labels("malformed")._value.get() == 4
    # The queue's reveal alone leaves the document open (Tier 1's seed is still secret).
    await _feed(log, [{**REVEALED, "seed": SEED}])
    half = await client.get(f"/v1/log/{EVENT}/order-seed")
    body = await half.json()
    assert (body["seed"], body["revealed"], body["tier1"]["revealed"]) == (SEED, False, False)
    assert half.headers["Cache-Control"] != IMMUTABLE

    # A reveal naming another commitment changes nothing; the right one is stored once.
    forged = {**TIER1_REVEALED, "seed": "00" * 32, "commitment": "0" * 64}
    await _feed(log, [forged, {**TIER1_REVEALED, "seed": TIER1_SEED}])
    await _feed(log, [{**TIER1_REVEALED, "seed": "cd" * 32}])
    done = await client.get(f"/v1/log/{EVENT}/order-seed")
    assert done.headers["Cache-Control"] == IMMUTABLE
    final = await done.json()
    assert final["revealed"] is True
    assert (final["tier1"]["seed"], final["tier1"]["commitment"]) == (TIER1_SEED, TIER1_COMMITMENT)
    assert (final["seed"], final["commitment"]) == (SEED, COMMITMENT)
    await refuses_rewrites(log, "admission_tier1_order_seeds")
