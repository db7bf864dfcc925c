"""Tier 1's draw records (``tier1_granted``, ``tier1_waived``) become leaves; a malformed one
is counted and skipped, whatever field it breaks, and the rest of its batch is appended whole,
served by the entries API and audited clean."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from urr_admission_log import heads
from urr_admission_log.consumer import LogMetrics, admissions_by_event, append_batch
from urr_admission_log.leaves import tier1_leaf_of
from urr_verify.tier1 import audit_tier1

SECRET = b"k" * 32
SEED = bytes(32)
EVENT = "t1-log"


def _alias(n: int) -> str:
    return hashlib.sha256(f"r{n}".encode()).hexdigest()


def _key(arrival: str) -> int:
    return int(hmac.new(SEED, arrival.encode(), hashlib.sha1).hexdigest()[:13], 16)


def _place(place: int) -> dict[str, Any]:
    arrival = _alias(place)
    key = _key(arrival)
    return {"eventId": EVENT, "epoch": 1, "place": place, "arrival": arrival, "orderKey": key}


def granted(place: int, seq: int, /, **changes: Any) -> dict[str, Any]:
    record = _place(place) | {"type": "tier1_granted", "id": f"tier1:1:grant:{seq}", "seq": seq}
    return record | {"at": 5_000, "draw": 1, "floor": 0, "top": 3, "cutoff": 1_000} | changes


def waived(place: int, /, **changes: Any) -> dict[str, Any]:
    record = _place(place) | {"type": "tier1_waived", "id": f"tier1:1:waive:{place}"}
    return record | {"at": 5_000, "reason": "abandoned", "lastSeen": 500} | changes


def passed(place: int, /, **changes: Any) -> dict[str, Any]:
    record = _place(place) | {"type": "tier1_passed", "id": f"tier1:1:pass:{place}:5000"}
    return (
        record
        | {"at": 5_000, "lastSeen": 500, "draw": 1, "floor": 0, "top": 3, "cutoff": 1_000}
        | changes
    )


def honest() -> list[dict[str, Any]]:
    """Place 3 stopped checking and is given up; 1 and 2 are drawn by key."""
    first, second = sorted((1, 2), key=lambda p: _key(_alias(p)))
    return [waived(3), granted(first, 1), granted(second, 2)]


MALFORMED = [
    granted(1, 1, arrival="R" * 64),  # not lowercase hex
    granted(1, 1, arrival="ab"),
    granted(1, 1, orderKey=1 << 52),
    granted(1, 1, orderKey=-1),
    granted(1, 1, orderKey=True),
    granted(1, 1, orderKey="12"),
    granted(1, 1, seq=0),
    granted(1, 1, place=4),  # outside the draw's range
    granted(1, 1, place=0),
    granted(1, 1, floor=None),
    granted(1, 1, top=1.5),
    granted(1, 1, cutoff=-1),
    granted(1, 1, epoch=1 << 63),  # beyond a PostgreSQL bigint
    granted(1, 1, eventId=""),
    granted(1, 1, eventId="x" * 200),
    granted(1, 1, id=None),
    granted(1, 1, at=None),
    waived(3, reason="vip"),
    waived(3, lastSeen=None),
    waived(3, reason="grant_lost"),  # names no sequence
    waived(3, place=-3),
    passed(2, lastSeen=None),
    passed(2, place=9),  # outside its draw
    passed(2, cutoff="1000"),
    passed(2, draw=0),
    granted(1, 1, draw=None),
]


def test_a_pass_becomes_a_leaf_with_its_draw() -> None:
    leaf = tier1_leaf_of(passed(2))
    assert leaf is not None
    assert leaf.leaf["kind"] == "tier1-pass"
    assert (leaf.leaf["lastSeen"], leaf.leaf["floor"], leaf.leaf["top"]) == (500, 0, 3)
    assert leaf.record().ticket is None  # not an admission: no receipt by ticket


@pytest.mark.parametrize("bad", MALFORMED)
def test_a_malformed_draw_record_makes_no_leaf(bad: dict[str, Any]) -> None:
    assert tier1_leaf_of(bad) is None
    metrics = LogMetrics(CollectorRegistry())
    grouped = admissions_by_event([orjson.dumps(bad)], SECRET, metrics)
    assert grouped == {}
    assert metrics.records.labels("malformed")._value.get() == 1


async def test_a_batch_with_bad_records_appends_the_good_ones_whole(log: dict[str, Any]) -> None:
    metrics = LogMetrics(CollectorRegistry())
    good = honest()
    batch = [
        orjson.dumps(good[0]),
        *(orjson.dumps(bad) for bad in MALFORMED),
        b"{not json",
        b'{"type": "tier1_granted", "epoch": 1' + b"9" * 30 + b"}",  # beyond 64 bits
        orjson.dumps(good[1]),
        orjson.dumps(good[2]),
        orjson.dumps(good[2]),  # redelivered: appended once
    ]
    await append_batch(log["pool"], admissions_by_event(batch, SECRET, metrics), metrics)
    assert metrics.records.labels("malformed")._value.get() == len(MALFORMED) + 2
    assert metrics.records.labels("appended")._value.get() == 3
    async with log["pool"].acquire() as conn:
        await heads.sign_grown(conn, log["key"], "urr-admission-log")
    answer = await log["client"].get(f"/v1/log/{EVENT}/entries?start=0&end=3")
    assert answer.status == 200
    leaves = (await answer.json())["entries"]
    assert [leaf["kind"] for leaf in leaves] == ["tier1-waive", "tier1-grant", "tier1-grant"]
    report = audit_tier1(list(enumerate(leaves)), SEED)
    assert (report.granted, report.waived, report.exceptions) == (2, 1, [])
