"""The waiting page's receipt (issue 19), in headless Chromium: while waiting the page says how
the line is ordered; once admitted it shows the buyer's receipt from the public admission log
and offers it for download, and the downloaded file verifies with ``urr-verify receipt``
against the log's published keys. In Korean and English; axe-core finds nothing serious.

The log is the real admission log application on real PostgreSQL (tree heads signed by its
own code); the page and its files are the ticket service's own. The login and the queue are
a small stand-in answering as the services do (same paths and fields): the queue's side
(``queue_number`` is the number its admission is logged under) is tested against real Redis
in ``services/queue/tests/test_queue_order_seed.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from axe_playwright_python.async_playwright import Axe  # type: ignore[import-untyped]

from urr_admission_log import heads, store
from urr_admission_log.app import create_app
from urr_admission_log.leaves import admission_of
from urr_admission_log.settings import AdmissionLogSettings
from urr_common.fairness import order_key
from urr_common.tokens import KeySet, SigningKey
from urr_devstack.testing import CHROMIUM
from urr_ticket.site import add_site_routes
from urr_verify.__main__ import main as verify_main

SHOTS = Path(__file__).resolve().parents[3] / "artifacts" / "ux"
EVENT = "demo"
SEED = bytes(range(32))
MY_TICKET = 5

pytestmark = [pytest.mark.integration]


@pytest.fixture(autouse=True)
def _chromium_is_installed() -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"


def _admitted(i: int, ticket: int) -> dict[str, Any]:
    user = f"user-{ticket}"
    return {
        "id": f"rec-{i}",
        "type": "admitted",
        "eventId": EVENT,
        "userId": user,
        "queueNumber": ticket,
        "at": 1_000 + i,
        "orderKey": order_key(SEED, user),
    }


class Journey:
    """The stand-in login and queue: one poll waiting, then admitted."""

    def __init__(self) -> None:
        self.polls = 0

    def add_routes(self, app: web.Application) -> None:
        add_site_routes(app)
        app.router.add_get("/api/v1/events/{event_id}", self.event)
        app.router.add_post("/api/v1/auth/login", self.login)
        app.router.add_post("/api/v1/queue/{event_id}/enter", self.queue)
        app.router.add_get("/api/v1/queue/{event_id}/status", self.queue)
        app.router.add_get("/api/v1/seats/{event_id}", self.seats)

    async def event(self, request: web.Request) -> web.Response:
        return web.json_response({"eventId": EVENT, "name": "URR demo concert"})

    async def login(self, request: web.Request) -> web.Response:
        return web.json_response({"userId": "u1"})

    async def queue(self, request: web.Request) -> web.Response:
        self.polls += 1
        if self.polls <= 2:
            return web.json_response(
                {
                    "status": "waiting",
                    "event_id": EVENT,
                    "position": 2,
                    "ahead": 1,
                    "queue_size": 3,
                    "poll_after_seconds": 1,
                    "mode": "queue",
                    "queue_method": "random",
                    "queue_number": MY_TICKET,
                }
            )
        return web.json_response({"status": "admitted", "event_id": EVENT, "entry_token": "t"})

    async def seats(self, request: web.Request) -> web.Response:
        return web.json_response({"eventId": EVENT, "seats": [{"seatId": "A1", "state": "free"}]})


@pytest.fixture
async def site(postgres_dsn: str) -> AsyncIterator[dict[str, Any]]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    assert pool is not None
    await store.migrate(pool)
    key = SigningKey.generate("log-1")
    app = create_app(AdmissionLogSettings(), pool, KeySet([key.verification_key()]))
    Journey().add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    try:
        yield {"pool": pool, "key": key, "base": f"http://127.0.0.1:{runner.addresses[0][1]}"}
    finally:
        await runner.cleanup()
        await pool.close()


async def _log_admissions(site: dict[str, Any], tickets: list[int]) -> None:
    async with site["pool"].acquire() as conn:
        size = await store.size_of(conn, EVENT)
        admissions = [
            admission_of(_admitted(size + i, t), b"h" * 32) for i, t in enumerate(tickets)
        ]
        records = [a.record() for a in admissions if a is not None]
        await store.append(conn, EVENT, records)
        await heads.sign_grown(conn, site["key"], "urr-admission-log")


WORDS = {
    "en": {"method": "a fair draw", "summary": "entry 3 (counting from 0)", "size": "of 4 entries"},
    "ko": {"method": "공정한 추첨", "summary": "3번 항목", "size": "4개 항목"},
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("locale", ["ko-KR", "en-US"])
async def test_the_admitted_page_hands_out_a_receipt_that_verifies(
    site: dict[str, Any], browser: Any, locale: str, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    short = locale[:2]
    words = WORDS[short]
    base = site["base"]
    # Three admissions before this buyer's; the buyer's own is logged once the page waits.
    await _log_admissions(site, [2, 1, 3])
    context = await browser.new_context(locale=locale, accept_downloads=True)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{base}/events/{EVENT}")
    await page.fill("#email", "fan1@demo.urr.test")
    await page.fill("#password", "correct horse")
    await page.click("#login-button")
    await page.click("#join")
    await expect(page.locator("#queue-method")).to_contain_text(words["method"])
    await page.screenshot(path=str(_shot(f"event-waiting-method-{short}.png")), full_page=True)

    await expect(page.locator("#receipt")).to_be_visible(timeout=15_000)
    await asyncio.sleep(0.5)  # the page asks before the log has it: "not logged" for now
    assert await page.is_hidden("#receipt-download")
    await _log_admissions(site, [MY_TICKET])
    await expect(page.locator("#receipt-summary")).to_contain_text(words["summary"], timeout=20_000)
    await expect(page.locator("#receipt-summary")).to_contain_text(words["size"])
    command = page.locator("#receipt-command")
    await expect(command).to_contain_text(f"urr-verify receipt receipt-{EVENT}-3.json --jwks")
    await expect(command).to_contain_text(f"{base}/v1/log/jwks.json")
    axe = Axe()
    results = await axe.run(page)
    serious = [
        v["id"] for v in results.response["violations"] if v["impact"] in ("serious", "critical")
    ]
    assert serious == []
    await page.screenshot(path=str(_shot(f"event-receipt-{short}.png")), full_page=True)

    async with page.expect_download() as waiting:
        await page.click("#receipt-download")
    download = await waiting.value
    assert download.suggested_filename == f"receipt-{EVENT}-3.json"
    saved = tmp_path / download.suggested_filename
    await download.save_as(str(saved))
    receipt = json.loads(saved.read_text())
    assert (receipt["leafIndex"], receipt["leaf"]["ticket"]) == (3, MY_TICKET)
    jwks = tmp_path / "jwks.json"
    answer = await page.request.get(f"{base}/v1/log/jwks.json")
    jwks.write_text(await answer.text())
    assert _verify("receipt", str(saved), "--jwks", str(jwks)) == 0
    # The same file altered no longer verifies.
    receipt["leaf"]["ticket"] = 1
    saved.write_text(json.dumps(receipt))
    assert _verify("receipt", str(saved), "--jwks", str(jwks)) == 1
    # Reloaded after the admission (the queue no longer says the number): the tab kept it.
    await page.reload()
    await page.fill("#email", "fan1@demo.urr.test")
    await page.fill("#password", "correct horse")
    await page.click("#login-button")
    await page.click("#join")
    await expect(page.locator("#receipt-summary")).to_contain_text(words["summary"], timeout=10_000)
    assert errors == [], errors
    await context.close()


def _shot(name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS / name


def _verify(*argv: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return verify_main(list(argv))
