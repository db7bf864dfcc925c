"""A buyer's receipt named by the number they queued with (what the waiting page knows)."""

from __future__ import annotations

from typing import Any

import pytest

from urr_admission_log import heads, store
from urr_admission_log.leaves import admission_of, waivers_of
from urr_verify.log import verify_receipt

pytestmark = pytest.mark.integration
EVENT = "by-ticket"
SECRET = b"holder-secret-for-tests"


def _admitted(i: int, ticket: int) -> dict[str, Any]:
    return {
        "id": f"rec-{i}",
        "type": "admitted",
        "eventId": EVENT,
        "userId": f"user-{ticket}",
        "queueNumber": ticket,
        "at": 1_000 + i,
    }


async def test_the_receipt_of_a_ticket_is_its_admission(log: dict[str, Any]) -> None:
    client = log["client"]
    waiver = waivers_of(
        {
            "id": "w",
            "type": "waived",
            "eventId": EVENT,
            "queueNumbers": [7],
            "reason": "order_hold",
            "at": 1,
        }
    )
    assert waiver is not None
    admissions = [admission_of(_admitted(i, t), SECRET) for i, t in enumerate([3, 1, 2, 9, 7])]
    leaves = [*waiver, *(a for a in admissions if a is not None)]
    async with log["pool"].acquire() as conn:
        await store.append(conn, EVENT, [a.record() for a in leaves[:4]])
        await heads.sign_grown(conn, log["key"], "urr-admission-log")
        await store.append(conn, EVENT, [a.record() for a in leaves[4:]])
    jwks = await (await client.get("/v1/log/jwks.json")).json()

    answer = await client.get(f"/v1/log/{EVENT}/receipt?ticket=2")
    assert answer.status == 200, await answer.text()
    receipt = await answer.json()
    assert (receipt["leafIndex"], receipt["leaf"]["ticket"], receipt["leaf"]["kind"]) == (
        3,
        2,
        "admit",
    )
    assert verify_receipt(receipt, jwks).size == 4
    # Ticket 7's waiver is not its receipt; its admission is logged but not signed yet.
    unsigned = await client.get(f"/v1/log/{EVENT}/receipt?ticket=7")
    assert (unsigned.status, (await unsigned.json())["code"]) == (422, "leaf_beyond_tree")
    async with log["pool"].acquire() as conn:
        await heads.sign_grown(conn, log["key"], "urr-admission-log")
    signed = await (await client.get(f"/v1/log/{EVENT}/receipt?ticket=7")).json()
    assert (signed["leafIndex"], signed["leaf"]["kind"]) == (5, "admit")
    assert verify_receipt(signed, jwks).size == 6

    never = await client.get(f"/v1/log/{EVENT}/receipt?ticket=4")
    assert (never.status, (await never.json())["code"]) == (404, "ticket_not_logged")
    for query in ("ticket=-1", "ticket=x", "leaf=1&ticket=2", ""):
        bad = await client.get(f"/v1/log/{EVENT}/receipt?{query}")
        assert bad.status == 400, query
        assert bad.headers["Content-Type"].startswith("application/problem+json")
