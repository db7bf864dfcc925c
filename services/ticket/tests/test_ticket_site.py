"""The protected site: the event page, its files, and the owner's read of a reservation."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from urr_common.identity_testing import act_as

pytestmark = pytest.mark.integration


def user(user_id: str) -> dict[str, str]:
    return act_as(user_id)


async def test_the_event_page_is_served_with_a_strict_policy(client: Any) -> None:
    page = await client.get("/events/demo")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assert '<script src="/site/assets/event.js" defer></script>' in html
    assert "<script>" not in html, "no inline script: the policy allows only our files"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"] == "no-store"


async def test_the_page_files_are_served_and_nothing_else(client: Any) -> None:
    script = await client.get("/site/assets/event.js")
    assert script.status == 200
    assert script.content_type == "text/javascript"
    assert "/api/v1/queue/" in await script.text()
    style = await client.get("/site/assets/event.css")
    assert (style.status, style.content_type) == (200, "text/css")
    for name in ("event.html", "..%2Fsite.py", "nope.js", "%2e%2e"):
        missing = await client.get(f"/site/assets/{name}")
        assert missing.status == 404
        assert missing.content_type == "application/problem+json"


async def test_an_event_page_with_a_malformed_id_is_a_404_problem(client: Any) -> None:
    bad = await client.get("/events/" + "x" * 65)
    assert bad.status == 404
    assert (await bad.json())["code"] == "event_not_found"


async def test_the_owner_reads_a_reservation_without_an_entry_token(
    client: Any, db: asyncpg.Pool
) -> None:
    rid = uuid.uuid4()
    await db.execute(
        "INSERT INTO reservations (reservation_id, event_id, user_id, seat_ids, status)"
        " VALUES ($1, 'demo', 'owner', ARRAY['A1'], 'confirmed')",
        rid,
    )
    path = f"/api/v1/events/demo/reservations/{rid}"
    mine = await client.get(path, headers=user("owner"))
    assert mine.status == 200
    assert (await mine.json())["status"] == "confirmed"
    someone_else = await client.get(path, headers=user("intruder"))
    assert (someone_else.status, (await someone_else.json())["code"]) == (
        404,
        "reservation_not_found",
    )
    anonymous = await client.get(path)
    assert anonymous.status == 401
    wrong_event = await client.get(
        f"/api/v1/events/other/reservations/{rid}", headers=user("owner")
    )
    assert wrong_event.status == 404
    malformed = await client.get(
        "/api/v1/events/demo/reservations/not-a-uuid", headers=user("owner")
    )
    assert 400 <= malformed.status < 500


async def test_the_page_catalogue_is_served_and_complete_in_both_languages(client: Any) -> None:
    """Issue 21: every key the page uses exists in Korean and English, same placeholders."""
    import re
    from importlib import resources

    served = await client.get("/site/assets/messages.json")
    assert served.status == 200
    catalogue = await served.json()
    assert set(catalogue) == {"en", "ko"}
    assert set(catalogue["en"]) == set(catalogue["ko"])
    static = resources.files("urr_ticket") / "static"
    script = (static / "event.js").read_text()
    html = (static / "event.html").read_text()
    used = set(re.findall(r'data-msg="([^"]+)"', html))
    used |= set(re.findall(r'(?:\bt|say)\("([a-z]+\.[A-Za-z_.]+)"', script))
    assert used
    assert sorted(k for k in used if k not in catalogue["en"]) == []
    for key, text in catalogue["ko"].items():
        assert set(re.findall(r"\{(\w+)\}", text)) == set(
            re.findall(r"\{(\w+)\}", catalogue["en"][key])
        ), key
    # Every reason the booking side gives has words of its own.
    for reason in (
        "card_declined",
        "unknown_reservation",
        "seat_unavailable",
        "seat_limit_reached",
        "unknown_seat",
        "payment_timeout",
        "not_processed",
    ):
        assert f"reason.{reason}" in catalogue["en"]
