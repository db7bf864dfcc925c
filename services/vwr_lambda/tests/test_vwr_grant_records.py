"""The draw's records, built from one random cycle (pure: no DynamoDB, no Kafka)."""

from __future__ import annotations

import hashlib

from urr_common.fairness import order_key
from urr_vwr_lambda.grant_log import (
    Draw,
    grant_records,
    passed_records,
    waiver_records,
)
from urr_vwr_lambda.queueing import PositionRow, arrival_alias, draw_key, pick_random

SEED = bytes(range(32))
DRAW = Draw("ev", 3, first_seq=7, floor=0, top=6, cutoff_ms=50_000, at_ms=170_000)


def rows(count: int, quiet: set[int]) -> list[PositionRow]:
    return [
        PositionRow(f"request-{n}", n, last_seen=10 if n in quiet else 100) for n in range(1, count)
    ]


def test_the_alias_is_the_request_ids_sha256_and_keys_come_from_it() -> None:
    alias = arrival_alias("0f8e6c1e-3b0e-4c7e-9a55-1d2a4b6c8e00")
    assert alias == hashlib.sha256(b"0f8e6c1e-3b0e-4c7e-9a55-1d2a4b6c8e00").hexdigest()
    assert draw_key(SEED, "r") == (order_key(SEED, arrival_alias("r")), arrival_alias("r"))


def test_quiet_places_beyond_the_skip_limit_are_passed_and_named_when_their_key_is_smaller() -> (
    None
):
    line = rows(7, quiet={1, 2, 3})
    marked: list[int] = []

    def mark(row: PositionRow) -> bool:
        marked.append(row.position)
        return True

    pick = pick_random(
        line,
        seed=SEED,
        line_floor=0,
        budget=2,
        cutoff=50,
        max_skips=1,
        mark_abandoned=mark,
    )
    assert marked == [1]
    assert [row.position for row in pick.quiet] == [2, 3]
    assert pick.line_floor == 1  # place 2 still holds its number
    records = passed_records(DRAW, SEED, pick.quiet, pick.granted)
    largest = max(draw_key(SEED, row.request_id) for row in pick.granted)
    expected = [row.position for row in pick.quiet if draw_key(SEED, row.request_id) < largest]
    assert [record["place"] for record in records] == expected
    for record in records:
        assert record["type"] == "tier1_passed"
        assert record["lastSeen"] == 10_000 < record["cutoff"]
        assert "request" not in str(record)  # the request id (a credential) is never published


def test_grants_waivers_and_lost_grants_are_explicit_and_in_grant_order() -> None:
    line = rows(4, quiet=set())
    waived = waiver_records(DRAW, SEED, [line[0]])
    assert waived[0]["reason"] == "abandoned"
    assert waived[0]["lastSeen"] == 100_000
    records = grant_records(DRAW, SEED, [(7, line[1], True), (8, line[2], False)])
    assert [(r["type"], r["seq"]) for r in records] == [("tier1_granted", 7), ("tier1_waived", 8)]
    assert records[1]["reason"] == "grant_lost"
    assert records[0]["id"] == "tier1:3:grant:7"
    assert records[0]["draw"] == 7
    assert records[0]["orderKey"] == order_key(SEED, arrival_alias("request-2"))
