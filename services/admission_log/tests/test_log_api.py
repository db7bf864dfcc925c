"""The public log API on real PostgreSQL, checked with urr-verify as a stranger would."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from urr_admission_log import heads, store
from urr_admission_log.app import IMMUTABLE, etag_matches
from urr_admission_log.leaves import admission_of
from urr_admission_log.settings import AdmissionLogSettings
from urr_verify.log import canonical, read_tree_head, verify_receipt
from urr_verify.merkle import leaf_hash, verify_consistency, verify_inclusion

pytestmark = pytest.mark.integration
EVENT = "concert-1"
SECRET = b"holder-secret-for-tests"


def _admitted(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "id": f"rec-{i}",
            "type": "admitted",
            "eventId": EVENT,
            "userId": f"user-{i}",
            "queueNumber": i + 1,
            "at": 1_000 + i,
        }
        for i in range(start, start + n)
    ]


async def _append(conn: store.Connection, records: list[dict[str, Any]]) -> None:
    admissions = [a for a in (admission_of(r, SECRET) for r in records) if a is not None]
    await store.append(conn, EVENT, [store.Record(a.record_id, a.encoded()) for a in admissions])


async def _sign(log: dict[str, Any], records: list[dict[str, Any]]) -> None:
    async with log["pool"].acquire() as conn:
        await _append(conn, records)
        await heads.sign_grown(conn, log["key"], "urr-admission-log")


async def _get(client: TestClient[Any, Any], path: str, status: int = 200, **headers: str) -> Any:
    response = await client.get(path, headers=headers)
    assert response.status == status, await response.text()
    return response


async def test_a_receipt_from_the_api_verifies_with_the_published_keys(log: dict[str, Any]) -> None:
    client = log["client"]
    await _sign(log, _admitted(10))
    jwks = await (await _get(client, "/v1/log/jwks.json")).json()
    receipt = await (await _get(client, f"/v1/log/{EVENT}/receipt?leaf=6")).json()
    head = verify_receipt(receipt, jwks)
    assert (head.size, receipt["leaf"]["ticket"]) == (10, 7)
    assert receipt["leaf"]["who"] != "user-6"


async def test_heads_grow_consistently_and_old_answers_stay_cacheable(log: dict[str, Any]) -> None:
    client = log["client"]
    await _sign(log, _admitted(5))
    jwks = await (await _get(client, "/v1/log/jwks.json")).json()
    old = read_tree_head(
        (await (await _get(client, f"/v1/log/{EVENT}/sth")).json())["sth"], jwks, EVENT
    )
    await _sign(log, _admitted(8, start=5))
    sth = await _get(client, f"/v1/log/{EVENT}/sth")
    assert sth.headers["Cache-Control"] == "public, max-age=2"
    new = read_tree_head((await sth.json())["sth"], jwks, EVENT)
    assert (old.size, new.size) == (5, 13)
    answer = await _get(client, f"/v1/log/{EVENT}/proof/consistency?from=5&to=13")
    proof = [bytes.fromhex(h) for h in (await answer.json())["proof"]]
    verify_consistency(5, 13, proof, old.root, new.root)
    assert answer.headers["Cache-Control"] == IMMUTABLE
    inclusion = await (await _get(client, f"/v1/log/{EVENT}/proof/inclusion?leaf=2&size=5")).json()
    leaf = leaf_hash(canonical(inclusion["leaf"]))
    verify_inclusion(leaf, 2, 5, [bytes.fromhex(h) for h in inclusion["proof"]], old.root)


async def test_entry_ranges_are_immutable_with_a_strong_etag(log: dict[str, Any]) -> None:
    client = log["client"]
    await _sign(log, _admitted(20))
    first = await _get(client, f"/v1/log/{EVENT}/entries?start=3&end=9")
    assert first.headers["Cache-Control"] == IMMUTABLE
    etag = first.headers["ETag"]
    assert etag.startswith('"')  # strong: a weak one starts W/
    body = await first.json()
    assert [e["ticket"] for e in body["entries"]] == [4, 5, 6, 7, 8, 9]
    again = await _get(
        client, f"/v1/log/{EVENT}/entries?start=3&end=9", 304, **{"If-None-Match": etag}
    )
    assert again.headers["ETag"] == etag


async def test_answers_about_a_signed_tree_never_change_and_revalidate_with_304(
    log: dict[str, Any],
) -> None:
    """Entries inside a signed tree and proofs for signed sizes: immutable, strong ETag, and the
    same bytes and ETag after the log has grown (what lets a CDN keep them for a year)."""
    client = log["client"]
    await _sign(log, _admitted(4))
    await _sign(log, _admitted(6, start=4))
    paths = [
        f"/v1/log/{EVENT}/entries?start=0&end=10",
        f"/v1/log/{EVENT}/entries?start=2&end=3",
        f"/v1/log/{EVENT}/proof/inclusion?leaf=3&size=10",
        f"/v1/log/{EVENT}/proof/inclusion?leaf=0&size=4",
        f"/v1/log/{EVENT}/proof/consistency?from=4&to=10",
        f"/v1/log/{EVENT}/proof/consistency?from=0&to=4",
    ]
    first = {}
    for path in paths:
        answer = await _get(client, path)
        assert answer.headers["Cache-Control"] == IMMUTABLE, path
        etag = answer.headers["ETag"]
        # Strong (a weak one starts W/), and long enough not to collide.
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag), (path, etag)
        first[path] = (etag, await answer.read())
    await _sign(log, _admitted(20, start=10))
    for path, (etag, body) in first.items():
        again = await _get(client, path)
        assert (again.headers["ETag"], await again.read()) == (etag, body), path
        for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
            revalidated = await _get(client, path, 304, **{"If-None-Match": header})
            assert revalidated.headers["ETag"] == etag
            assert revalidated.headers["Cache-Control"] == IMMUTABLE
            assert await revalidated.read() == b""
        other = await _get(client, path, 200, **{"If-None-Match": '"0123456789abcdef"'})
        assert await other.read() == body


async def test_the_latest_head_receipts_and_keys_are_short_lived(log: dict[str, Any]) -> None:
    """What names the latest head changes as the log grows: a short max-age, a new ETag."""
    client = log["client"]
    short = f"public, max-age={AdmissionLogSettings().admission_log.head_max_age_s}"
    await _sign(log, _admitted(3))
    sth = await _get(client, f"/v1/log/{EVENT}/sth")
    receipt = await _get(client, f"/v1/log/{EVENT}/receipt?leaf=1")
    for answer in (sth, receipt):
        assert answer.headers["Cache-Control"] == short
        assert "immutable" not in answer.headers["Cache-Control"]
    unchanged = await _get(
        client, f"/v1/log/{EVENT}/sth", 304, **{"If-None-Match": sth.headers["ETag"]}
    )
    assert unchanged.headers["Cache-Control"] == short
    await _sign(log, _admitted(2, start=3))
    grown = await _get(
        client, f"/v1/log/{EVENT}/sth", 200, **{"If-None-Match": sth.headers["ETag"]}
    )
    assert grown.headers["ETag"] != sth.headers["ETag"]
    assert (await grown.json())["size"] == 5
    newer = await _get(client, f"/v1/log/{EVENT}/receipt?leaf=1")
    assert newer.headers["ETag"] != receipt.headers["ETag"]
    jwks = await _get(client, "/v1/log/jwks.json")
    assert jwks.headers["Cache-Control"] == "public, max-age=300"


def test_if_none_match_compares_weakly_and_accepts_any() -> None:
    assert etag_matches('"a"', '"a"')
    assert etag_matches('W/"a"', '"a"')
    assert etag_matches(' "b" , W/"a"', '"a"')
    assert etag_matches("*", '"a"')
    assert not etag_matches("", '"a"')
    assert not etag_matches('"ab"', '"a"')
    assert not etag_matches('"a', '"a"')


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/log/concert-1/entries?start=5&end=25", 422, "range_beyond_tree"),
        ("/v1/log/concert-1/entries?start=5&end=5", 422, "invalid_range"),
        ("/v1/log/concert-1/entries?start=0&end=5000", 422, "invalid_range"),
        ("/v1/log/concert-1/entries?start=-1&end=5", 400, "invalid_parameter"),
        ("/v1/log/concert-1/entries?start=0&end=99999999999999999999999", 400, "invalid_parameter"),
        ("/v1/log/concert-1/entries?start=0", 400, "missing_parameter"),
        ("/v1/log/concert-1/proof/inclusion?leaf=3&size=7", 422, "size_not_signed"),
        ("/v1/log/concert-1/proof/inclusion?leaf=20&size=20", 422, "leaf_beyond_tree"),
        ("/v1/log/concert-1/proof/consistency?from=9&to=4", 422, "invalid_range"),
        ("/v1/log/concert-1/proof/consistency?from=4&to=20", 422, "size_not_signed"),
        ("/v1/log/concert-1/receipt?leaf=20", 422, "leaf_beyond_tree"),
        ("/v1/log/nobody/sth", 404, "log_not_found"),
        ("/v1/log/b%20d/sth", 400, "invalid_event_id"),
    ],
)
async def test_bad_requests_get_a_problem_naming_why(
    log: dict[str, Any], path: str, status: int, code: str
) -> None:
    await _sign(log, _admitted(20))
    response = await _get(log["client"], path, status)
    assert response.content_type == "application/problem+json"
    assert (await response.json())["code"] == code
    # True only now (the tree grows, the log gets signed): no cache may keep the refusal.
    assert response.headers["Cache-Control"] == "no-store"
    assert "ETag" not in response.headers


def test_only_well_formed_admissions_become_leaves() -> None:
    good = _admitted(1)[0]
    assert admission_of(good, SECRET) is not None
    for bad in (
        {**good, "type": "left"},
        {**good, "queueNumber": 0},
        {**good, "queueNumber": True},
        {**good, "queueNumber": "3"},
        {**good, "at": -1},
        {**good, "userId": ""},
        {**good, "eventId": "x" * 200},
        {**good, "id": None},
        ["not", "a", "record"],
    ):
        assert admission_of(bad, SECRET) is None
