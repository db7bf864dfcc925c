"""The queue's order-hold waivers become ``waive`` leaves ahead of the late admission they
explain, so urr-verify's audit reports the late number as explained, not as an exception."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from urr_admission_log.consumer import LogMetrics, admissions_by_event
from urr_admission_log.leaves import waivers_of
from urr_verify.log import audit_order

SECRET = b"k" * 32


def admitted(i: int, ticket: int) -> dict[str, Any]:
    return {
        "id": f"a{i}",
        "type": "admitted",
        "eventId": "e1",
        "userId": f"u{ticket}",
        "queueNumber": ticket,
        "at": 1_000 + i,
    }


def waived(numbers: list[Any], **extra: Any) -> dict[str, Any]:
    record = {
        "id": "w1",
        "type": "waived",
        "eventId": "e1",
        "queueNumbers": numbers,
        "reason": "order_hold",
        "at": 1_001,
    }
    return {**record, **extra}


def leaves(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    grouped = admissions_by_event(
        [orjson.dumps(r) for r in records], SECRET, LogMetrics(CollectorRegistry())
    )
    return [orjson.loads(record.leaf) for record in grouped.get("e1", [])]


def test_a_late_number_after_its_waiver_is_explained() -> None:
    # 1 and 4 never came in time: the hold gave up on them, 2 and 3 went ahead, 4 came late.
    records = [waived([1, 4]), admitted(1, 2), admitted(2, 3), admitted(3, 5), admitted(4, 4)]
    logged = leaves(records)
    assert [(e["kind"], e["ticket"]) for e in logged] == [
        ("waive", 1),
        ("waive", 4),
        ("admit", 2),
        ("admit", 3),
        ("admit", 5),
        ("admit", 4),
    ]
    report = audit_order(logged)
    assert report.exceptions == []
    assert report.waived == 2
    # The same admissions without the waiver: the late 4 is an unexplained exception.
    assert [e.ticket for e in audit_order(logged[2:]).exceptions] == [4]


def test_a_redelivered_waiver_names_the_same_leaves() -> None:
    first = waivers_of(waived([7, 9]))
    again = waivers_of(waived([7, 9]))
    assert first is not None
    assert again is not None
    assert [w.record_id for w in first] == [w.record_id for w in again] == ["w1:7", "w1:9"]


@pytest.mark.parametrize(
    "bad",
    [
        {"queueNumbers": []},
        {"queueNumbers": [0]},
        {"queueNumbers": [True]},
        {"queueNumbers": ["3"]},
        {"queueNumbers": 3},
        {"queueNumbers": list(range(1, 20_002))},
        {"reason": "because"},
        {"at": -1},
        {"eventId": ""},
        {"id": None},
    ],
)
def test_malformed_waivers_are_skipped_and_counted(bad: dict[str, Any]) -> None:
    metrics = LogMetrics(CollectorRegistry())
    record = {**waived([2]), **bad}
    assert waivers_of(record) is None
    assert admissions_by_event([orjson.dumps(record)], SECRET, metrics) == {}
    assert metrics.records.labels("malformed")._value.get() == 1
