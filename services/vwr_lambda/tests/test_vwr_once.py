"""One admission per Tier-1 place (issue 15): ``/vwr/check`` stops issuing a spent place's pass.

The queue service marks the place spent (``spentAt``) with its own adapter
(``urr_queue.tier1_marks``), used here against the same moto table, so the two services are
held to one row format.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from urr_common.settings import AwsSettings
from urr_queue.tier1_marks import SpentPlaceTable, open_dynamodb

pytestmark = pytest.mark.integration


def mark_spent(vwr: Any, event_id: str, request_id: str, position: int) -> bool:
    """What Tier 2 does once the stay this place admitted is over."""
    aws = vwr.settings.aws
    settings = AwsSettings(
        endpoint_url=aws.endpoint_url,
        dynamodb_endpoint_url=aws.dynamodb_endpoint_url,
        region=aws.region,
        access_key_id=aws.access_key_id,
        secret_access_key=aws.secret_access_key,
    )

    async def mark() -> bool:
        async with (
            open_dynamodb(settings) as dynamodb,
            SpentPlaceTable(dynamodb, vwr.settings.tables.positions) as table,
        ):
            return await table.mark_spent(
                event_id, request_id, position, spent_at_s=int(time.time())
            )

    return asyncio.run(mark())


def admitted_place(vwr: Any, event_id: str = "evt-1", **headers: str) -> tuple[str, int]:
    request_id = str(uuid.uuid4())
    position = vwr.assign(event_id, request_id, **headers).body["position"]
    vwr.admin("POST", f"{event_id}/advance", {"by": 1})
    admitted = vwr.check(event_id, request_id)
    assert admitted.body["admitted"] is True
    assert admitted.body["token"]
    return request_id, position


def assert_spent(answer: Any) -> None:
    assert answer.status == 410, answer.body
    assert answer.body["code"] == "place_spent"
    assert "token" not in answer.body
    assert not answer.cookies
    assert answer.headers["content-type"] == "application/problem+json"


def test_check_issues_no_pass_for_a_spent_place(vwr: Any) -> None:
    vwr.open_event("evt-1")
    request_id, position = admitted_place(vwr)
    # The container holds a warm copy of the admitted place (and its token) from that check.
    assert mark_spent(vwr, "evt-1", request_id, position)
    assert_spent(vwr.check("evt-1", request_id))
    # Again from the copy, and from a cold container with nothing cached.
    assert_spent(vwr.check("evt-1", request_id))
    vwr.runtime.__dict__.pop("place_cache")
    assert_spent(vwr.check("evt-1", request_id))
    # Once the token would have been renewed: still nothing.
    vwr.clock.advance(vwr.settings.vwr_tokens.ttl_s + 1)
    assert_spent(vwr.check("evt-1", request_id))


def test_a_warm_copy_whose_token_ran_out_gets_no_new_one_once_spent(vwr: Any) -> None:
    vwr.open_event("evt-1")
    request_id, position = admitted_place(vwr)
    vwr.clock.advance(vwr.settings.vwr_tokens.ttl_s + 1)  # the copy's token needs renewing
    assert mark_spent(vwr, "evt-1", request_id, position)
    assert_spent(vwr.check("evt-1", request_id))


def test_a_spent_place_gets_no_new_token_when_the_mark_lands_mid_check(vwr: Any) -> None:
    """The mark arrives between a check's read and its token write: the write is refused."""
    vwr.open_event("evt-1")
    request_id, position = admitted_place(vwr)
    store = vwr.runtime.store
    place = store.get_place("evt-1", request_id)
    assert mark_spent(vwr, "evt-1", request_id, position)
    now_s = int(vwr.clock.now) + vwr.settings.vwr_tokens.ttl_s + 1
    stored = store.record_admission(place, token="fresh", token_exp=now_s + 600, now_s=now_s)
    assert stored is not None
    assert stored.spent_at is not None
    assert stored.token == place.token


def test_coming_back_means_a_new_place_at_the_back(vwr: Any) -> None:
    vwr.open_event("evt-1")
    auth = {"Authorization": f"Bearer {vwr.user_token('u-1')}"}
    request_id, position = admitted_place(vwr, **auth)
    waiting = [vwr.assign("evt-1").body["position"] for _ in range(3)]
    assert mark_spent(vwr, "evt-1", request_id, position)
    # The user's claim names the spent place: a new tab gets a new place, behind the others.
    again = vwr.assign("evt-1", str(uuid.uuid4()), **auth)
    assert again.status == 201, again.body
    assert again.body["requestId"] != request_id
    assert again.body["position"] > max(waiting)
    assert vwr.check("evt-1", again.body["requestId"]).body["admitted"] is False


def test_a_mark_for_another_number_or_no_row_changes_nothing(vwr: Any) -> None:
    vwr.open_event("evt-1")
    request_id, position = admitted_place(vwr)
    assert not mark_spent(vwr, "evt-1", request_id, position + 1)
    assert not mark_spent(vwr, "evt-1", str(uuid.uuid4()), 1)
    answer = vwr.check("evt-1", request_id)
    assert answer.status == 200
    assert answer.body["admitted"] is True
