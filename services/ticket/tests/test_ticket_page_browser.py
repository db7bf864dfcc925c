"""The event page as a buyer meets it (issue 21 item 3), in headless Chromium: a declined card
is said in words and paid again while the seat is held, to a confirmation; an expired hold
says so and returns to the seat map; refusals are words, in Korean and English; axe-core finds
nothing serious. Screenshots go to ``artifacts/ux/``.

The page and its files are the ticket service's own (``site.add_site_routes``); the APIs
behind it are a small stand-in that answers as the services do (the same paths, fields and
problem codes), so the payment's verdicts can be chosen: the services' side of a retry (the
hold and the session kept on ``card_declined``, attempt n+1 of the same hold, at most 5) is
tested against real PostgreSQL and Redis in ``test_ticket_api.py`` and
``test_ticket_outcomes.py``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from axe_playwright_python.async_playwright import Axe  # type: ignore[import-untyped]

from urr_devstack.testing import CHROMIUM
from urr_ticket.site import add_site_routes

SHOTS = Path(__file__).resolve().parents[3] / "artifacts" / "ux"

pytestmark = [pytest.mark.integration]


@pytest.fixture(autouse=True)
def _chromium_is_installed() -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"


def _problem(status: int, code: str, detail: str) -> web.Response:
    return web.json_response(
        {"type": "about:blank", "title": code, "status": status, "detail": detail, "code": code},
        status=status,
        content_type="application/problem+json",
    )


@dataclass
class Booking:
    """The APIs' state for one buyer; ``verdicts`` are the payment answers, in order."""

    verdicts: list[tuple[str, str | None]]
    hold_seconds: float = 300.0
    holds: dict[str, float] = field(default_factory=dict)
    reservations: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: list[int] = field(default_factory=list)
    reserve_refusal: str | None = None

    def app(self) -> web.Application:
        app = web.Application()
        add_site_routes(app)
        app.router.add_get("/api/v1/events/{event_id}", self.event)
        app.router.add_post("/api/v1/auth/login", self.login)
        app.router.add_post("/api/v1/queue/{event_id}/enter", self.admit)
        app.router.add_get("/api/v1/queue/{event_id}/status", self.admit)
        app.router.add_get("/api/v1/seats/{event_id}", self.seats)
        app.router.add_post("/api/v1/seats/{event_id}/{seat}/hold", self.hold)
        app.router.add_delete("/api/v1/seats/{event_id}/{seat}/hold", self.release)
        app.router.add_post("/api/v1/reservations/{event_id}", self.reserve)
        app.router.add_get("/api/v1/events/{event_id}/reservations/{rid}", self.reservation)
        return app

    async def event(self, request: web.Request) -> web.Response:
        if request.match_info["event_id"] != "demo":
            return _problem(404, "event_not_found", "no such event")
        return web.json_response({"eventId": "demo", "name": "URR demo concert"})

    async def login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("password") != "correct horse":
            return _problem(401, "invalid_credentials", "wrong email or password")
        return web.json_response({"userId": "u1"})

    async def admit(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "admitted", "entry_token": "t", "position": None})

    async def seats(self, request: web.Request) -> web.Response:
        assert request.headers.get("X-Queue-Entry-Token") == "t"
        now = time.time()
        seats = [
            # A3 looks free but someone takes it first (its hold is refused); A8 is sold.
            {"seatId": f"{row}{n}", "state": "sold" if (row, n) == ("A", 8) else "free"}
            for row in "AB"
            for n in range(1, 9)
        ]
        for seat in seats:
            if self.holds.get(seat["seatId"], 0) > now:
                seat["state"] = "held"
        return web.json_response({"eventId": "demo", "seats": seats})

    async def hold(self, request: web.Request) -> web.Response:
        seat = request.match_info["seat"]
        if seat == "A3":
            return _problem(409, "seat_held", "someone else holds this seat")
        until = time.time() + self.hold_seconds
        self.holds[seat] = until
        return web.json_response({"seatId": seat, "expiresAtMs": int(until * 1000)})

    async def release(self, request: web.Request) -> web.Response:
        self.holds.pop(request.match_info["seat"], None)
        return web.Response(status=204)

    async def reserve(self, request: web.Request) -> web.Response:
        body = await request.json()
        [seat] = body["seatIds"]
        if self.holds.get(seat, 0) <= time.time():
            return _problem(409, "seat_not_held", "hold every seat before reserving it")
        if self.reserve_refusal:
            return _problem(503, self.reserve_refusal, "try again")
        self.attempts.append(int(body.get("attempt", 1)))
        rid = str(uuid.uuid4())
        status, reason = self.verdicts.pop(0)
        self.reservations[rid] = {"status": status, "reason": reason, "polls": 0}
        return web.json_response(
            {"reservationId": rid, "eventId": "demo", "status": "pending"}, status=202
        )

    async def reservation(self, request: web.Request) -> web.Response:
        found = self.reservations[request.match_info["rid"]]
        found["polls"] += 1
        status = found["status"] if found["polls"] > 1 else "awaiting_payment"
        return web.json_response(
            {
                "reservationId": request.match_info["rid"],
                "status": status,
                "reason": found["reason"],
            }
        )


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _serious(axe: Axe, page: Any) -> list[str]:
    results = await axe.run(page)
    assert results.response["testEngine"]["name"] == "axe-core"
    return [
        f"{v['id']} ({v['impact']}): {v['help']}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


WORDS = {
    "en": {
        "wrong": "the email or password is wrong",
        "taken": "someone else is holding that seat right now",
        "declined": "Your card was declined by the card issuer",
        "retry": "Pay again for seat B2",
        "confirmed": "Your booking of seat B2 is confirmed",
        "expired": "has expired",
    },
    "ko": {
        "wrong": "이메일 또는 비밀번호가 올바르지 않습니다",
        "taken": "다른 분이 지금 이 좌석을 잡고 있습니다",
        "declined": "카드사에서 결제를 거절했습니다",
        "retry": "B2 좌석 다시 결제하기",
        "confirmed": "B2 좌석 예매가 완료되었습니다",
        "expired": "선점 시간이 끝나",
    },
}


async def _to_seat_map(
    page: Any, base: str, words: dict[str, str], shot: Path | None = None
) -> None:
    from playwright.async_api import expect

    await page.goto(f"{base}/events/demo")
    await expect(page.locator("#event-name")).to_have_text("URR demo concert")
    await page.fill("#email", "fan1@demo.urr.test")
    await page.fill("#password", "wrong password")
    await page.click("#login-button")
    await expect(page.locator("#status")).to_contain_text(words["wrong"])
    if shot is not None:
        await page.screenshot(path=str(shot), full_page=True)
    await page.fill("#password", "correct horse")
    await page.click("#login-button")
    await page.click("#join")
    await expect(page.locator("#seats")).to_be_visible()
    await page.click("[data-seat=A3]")  # someone else holds it: said in words
    await expect(page.locator("#status")).to_contain_text(words["taken"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("locale", ["ko-KR", "en-US"])
async def test_a_declined_card_is_paid_again_to_a_confirmation(browser: Any, locale: str) -> None:
    from playwright.async_api import expect

    short = locale[:2]
    words = WORDS[short]
    booking = Booking(verdicts=[("declined", "card_declined"), ("confirmed", None)])
    runner, base = await _serve(booking.app())
    axe = Axe()
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        context = await browser.new_context(locale=locale)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await _to_seat_map(page, base, words, SHOTS / f"event-login-refused-{short}.png")
        assert await page.get_attribute("html", "lang") == short
        await page.click("[data-seat=B2]")
        await expect(page.locator("[data-seat=B2]")).to_have_attribute("aria-pressed", "true")
        assert await _serious(axe, page) == []
        await page.screenshot(path=str(SHOTS / f"event-seats-{short}.png"), full_page=True)

        await page.click("#reserve")
        await expect(page.locator("#outcome")).to_have_attribute("data-status", "declined")
        await expect(page.locator("#reason")).to_contain_text(words["declined"])
        retry = page.locator("#retry")
        await expect(retry).to_be_visible()
        await expect(retry).to_have_text(words["retry"])
        await expect(retry).to_be_focused()  # a keyboard user is on the way forward
        assert await _serious(axe, page) == []
        await page.screenshot(path=str(SHOTS / f"event-declined-{short}.png"), full_page=True)
        await page.set_viewport_size({"width": 320, "height": 800})
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, "the page scrolls sideways at 320 px"
        await page.screenshot(path=str(SHOTS / f"event-declined-{short}-320px.png"), full_page=True)
        await page.set_viewport_size({"width": 1280, "height": 800})

        await page.keyboard.press("Enter")  # pay again, by keyboard
        await expect(page.locator("#outcome")).to_have_attribute("data-status", "confirmed")
        await expect(page.locator("#status")).to_contain_text(words["confirmed"])
        assert await page.is_hidden("#retry")
        assert booking.attempts == [1, 2]  # the retry was attempt 2 of the same hold
        await page.screenshot(path=str(SHOTS / f"event-confirmed-{short}.png"), full_page=True)
        assert errors == [], errors
    finally:
        await runner.cleanup()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("locale", ["ko-KR", "en-US"])
async def test_an_expired_hold_says_so_and_returns_to_the_seat_map(
    browser: Any, locale: str
) -> None:
    from playwright.async_api import expect

    short = locale[:2]
    words = WORDS[short]
    booking = Booking(verdicts=[("expired", "payment_timeout")], hold_seconds=3)
    runner, base = await _serve(booking.app())
    try:
        page = await (await browser.new_context(locale=locale)).new_page()
        await _to_seat_map(page, base, words)
        # The hold runs out before the buyer reserves: the page says so, the map is back.
        await page.click("[data-seat=B5]")
        await expect(page.locator("[data-seat=B5]")).to_have_attribute("aria-pressed", "true")
        await expect(page.locator("#status")).to_contain_text(words["expired"], timeout=10_000)
        await expect(page.locator("#seats")).to_be_visible()
        await expect(page.locator("#reserve")).to_be_disabled()
        await expect(page.locator("[data-seat=B5]")).to_have_attribute("aria-pressed", "false")
        await page.screenshot(path=str(SHOTS / f"event-hold-expired-{short}.png"), full_page=True)
        # A booking that expires on the server side also returns to the seat map.
        booking.hold_seconds = 300
        await page.click("[data-seat=B6]")
        await expect(page.locator("[data-seat=B6]")).to_have_attribute("aria-pressed", "true")
        await page.click("#reserve")
        await expect(page.locator("#outcome")).to_have_attribute("data-status", "expired")
        await expect(page.locator("#seats")).to_be_visible()
        reason = await page.inner_text("#reason")
        assert reason
        assert words["declined"] not in reason
        # Any refusal is words, never a silent stop (a code the page does not know too).
        booking.reserve_refusal = "something_new"
        await page.click("[data-seat=B7]")
        await expect(page.locator("[data-seat=B7]")).to_have_attribute("aria-pressed", "true")
        await page.click("#reserve")
        await expect(page.locator("#status")).to_contain_text("something_new")
    finally:
        await runner.cleanup()
