"""End to end in headless Chromium through the edge emulator (Debian's chromium + Playwright).

A visitor opens a protected page, is sent to the waiting page, sees the number, keeps it across
a reload, is admitted when the counter advances and lands back on the page.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from urr_common.settings import load_settings
from urr_devstack.testing import CHROMIUM, CHROMIUM_ARGS
from urr_vwr_lambda import advancer
from urr_vwr_lambda.keys import ensure_local_keys
from urr_vwr_lambda.local import apigw
from urr_vwr_lambda.local import edge as edge_emulator
from urr_vwr_lambda.settings import EdgeEmulatorSettings

pytestmark = [pytest.mark.integration]


@pytest.fixture(autouse=True)
def _chromium_is_installed() -> None:
    # Fail, never skip: `make test` installs Debian's chromium before the tests run.
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def protected_page(request: web.Request) -> web.Response:
    event_id = request.match_info["event_id"]
    return web.Response(
        text=f"<!doctype html><title>Event</title><h1 id='protected'>Seats for {event_id}</h1>",
        content_type="text/html",
    )


@pytest.fixture
async def stack(vwr: Any) -> AsyncIterator[tuple[Any, str]]:
    """Upstream stand-in, API Gateway emulator and edge emulator on free ports."""
    vwr.runtime.clock = time.time
    ensure_local_keys(vwr.settings.vwr_tokens)
    upstream = web.Application()
    upstream.router.add_get("/events/{event_id}", protected_page)
    runners = []
    try:
        runner, upstream_url = await start(upstream)
        runners.append(runner)
        runner, api_url = await start(apigw.create_app(vwr.settings, runtime=vwr.runtime))
        runners.append(runner)
        edge_settings = load_settings(
            EdgeEmulatorSettings,
            gateway_url=upstream_url,
            api_url=api_url,
            edge_config={"target": vwr.settings.edge_config.target},
        )
        runner, edge_url = await start(edge_emulator.create_app(edge_settings))
        runners.append(runner)
        yield vwr, edge_url
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


@pytest.mark.timeout(120)
async def test_a_visitor_waits_is_admitted_and_returns(stack: tuple[Any, str]) -> None:
    from playwright.async_api import async_playwright

    vwr, edge_url = stack
    await asyncio.to_thread(vwr.open_event, "evt-1", batch_size=10)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            await page.goto(f"{edge_url}/events/evt-1?seat=A1")
            assert urlsplit(page.url).path == "/vwr/evt-1"
            await page.wait_for_function("document.getElementById('position').textContent === '1'")
            assert await page.get_attribute("#status", "aria-live") == "polite"
            assert await page.get_attribute("#progress", "aria-valuenow") is not None

            await page.reload()  # the place survives a reload (requestId in localStorage)
            await page.wait_for_function("document.getElementById('position').textContent === '1'")
            status = await asyncio.to_thread(vwr.status, "evt-1")
            assert status.body["nextPosition"] == 1

            cycle = {"steps": 1, "intervalSeconds": 10}
            outcome = await asyncio.to_thread(advancer.run, vwr.runtime, cycle, None)
            assert outcome["cycles"][0][0]["servingCounter"] == 1

            await page.wait_for_selector("#protected", timeout=30_000)
            landed = urlsplit(page.url)
            assert (landed.path, landed.query) == ("/events/evt-1", "seat=A1")
            cookies = await page.context.cookies()
            [token_cookie] = [c for c in cookies if c["name"] == "urr-vwr-token"]
            assert token_cookie["httpOnly"] is True
            assert token_cookie["sameSite"] == "Lax"

            # A forged "return" never leaves the site: the page falls back to the event.
            await page.goto(f"{edge_url}/vwr/evt-1?return=%2F%2Fevil.example%2Fx")
            await page.wait_for_selector("#protected", timeout=30_000)
            forged = urlsplit(page.url)
            assert (forged.netloc, forged.path) == (urlsplit(edge_url).netloc, "/events/evt-1")
        finally:
            await browser.close()


@pytest.mark.timeout(120)
async def test_a_spent_place_sends_the_visitor_to_the_back(stack: tuple[Any, str]) -> None:
    """Admitted once, the visit over (Tier 2 marks the place spent), back on the waiting page:
    no pass, a new place behind everyone who took one meanwhile, and the page says why."""
    from playwright.async_api import async_playwright

    from urr_common.settings import AwsSettings
    from urr_queue.tier1_marks import SpentPlaceTable, open_dynamodb

    vwr, edge_url = stack
    await asyncio.to_thread(vwr.open_event, "evt-1", batch_size=10)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            await page.goto(f"{edge_url}/events/evt-1")
            await page.wait_for_function("document.getElementById('position').textContent === '1'")
            assert "lets you in once" in await page.inner_text("main")
            [request_id] = await page.evaluate("Object.values(Object.assign({}, localStorage))")
            await asyncio.to_thread(vwr.admin, "POST", "evt-1/advance", {"by": 1})
            await page.wait_for_selector("#protected", timeout=30_000)
            await asyncio.to_thread(vwr.assign, "evt-1")  # a fan takes number 2 meanwhile

            # Tier 2 reports the visit over: the place is marked spent.
            aws = vwr.settings.aws
            async with (
                open_dynamodb(
                    AwsSettings(
                        endpoint_url=aws.endpoint_url,
                        dynamodb_endpoint_url=aws.dynamodb_endpoint_url,
                        region=aws.region,
                        access_key_id=aws.access_key_id,
                        secret_access_key=aws.secret_access_key,
                    )
                ) as dynamodb,
                SpentPlaceTable(dynamodb, vwr.settings.tables.positions) as table,
            ):
                assert await table.mark_spent("evt-1", request_id, 1, spent_at_s=1)

            await page.goto(f"{edge_url}/vwr/evt-1")
            await page.wait_for_function("document.getElementById('position').textContent === '3'")
            assert urlsplit(page.url).path == "/vwr/evt-1"
            stored = await page.evaluate("Object.values(Object.assign({}, localStorage))")
            assert request_id not in stored
        finally:
            await browser.close()


# The page's own clock: ticks of a 20 ms timer while the proof-of-work box is shown (a page
# blocked by the solver would tick none) and the progress values it showed.
_POW_PROBE = """
window.__pow = {shown: false, hidden: false, ticks: 0, values: []};
setInterval(function () {
  if (window.__pow.shown && !window.__pow.hidden) window.__pow.ticks++;
}, 20);
document.addEventListener("DOMContentLoaded", function () {
  new MutationObserver(function () {
    var box = document.getElementById("pow");
    if (!box) return;
    if (!box.hidden) window.__pow.shown = true;
    else if (window.__pow.shown) window.__pow.hidden = true;
    var value = document.getElementById("pow-progress").getAttribute("aria-valuenow");
    window.__pow.values.push(Number(value));
  }).observe(document.body, {subtree: true, attributes: true});
});
"""


@pytest.mark.timeout(120)
async def test_a_visitor_solves_the_proof_of_work_and_gets_a_place(stack: tuple[Any, str]) -> None:
    from playwright.async_api import async_playwright

    vwr, edge_url = stack
    body = {"isActive": True, "batchSize": 10, "botChallenge": "pow", "powBits": 18}
    answer = await asyncio.to_thread(vwr.admin, "PUT", "evt-pow", body)
    assert answer.status == 201, answer.body
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.add_init_script(_POW_PROBE)
            await page.goto(f"{edge_url}/events/evt-pow")
            assert urlsplit(page.url).path == "/vwr/evt-pow"
            await page.wait_for_function(
                "document.getElementById('position').textContent === '1'", timeout=60_000
            )
            probe = await page.evaluate("window.__pow")
            request_id = await page.evaluate("localStorage.getItem('urr-vwr:evt-pow')")
        finally:
            await browser.close()
    assert errors == []
    # The box showed and filled, and the page kept running while the worker solved (a solver
    # on the page's own thread would leave its timer no tick in between).
    assert probe["shown"], probe
    assert probe["hidden"], probe
    assert probe["values"][-1] == 100, probe
    assert probe["ticks"] > 0, probe
    # The server took the solution once, for this visitor's request id, and gave one place.
    rows = await asyncio.to_thread(
        vwr.runtime.dynamodb.query,
        TableName=vwr.settings.tables.positions,
        KeyConditionExpression="eventId = :e",
        ExpressionAttributeValues={":e": {"S": "evt-pow"}},
    )
    used = [r for r in rows["Items"] if r["requestId"]["S"].startswith("pow#")]
    assert [r["ownerRequestId"]["S"] for r in used] == [request_id]
    status = await asyncio.to_thread(vwr.status, "evt-pow")
    assert status.body["nextPosition"] == 1


@pytest.mark.timeout(120)
async def test_a_presale_asks_for_a_code_says_why_one_is_refused_and_places_a_holder(
    stack: tuple[Any, str],
) -> None:
    """Issue 15, 5: without a code the visitor is told why; with one they get a place."""
    from playwright.async_api import async_playwright

    vwr, edge_url = stack
    await asyncio.to_thread(vwr.open_event, "pre-1", batch_size=10)
    await asyncio.to_thread(
        vwr.admin, "PUT", "pre-1", {"isActive": True, "accessCodeRequired": True}
    )
    batch = await asyncio.to_thread(vwr.admin, "POST", "pre-1/access-codes", {"count": 1})
    code = batch.body["codes"][0]["code"]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            without = await browser.new_page()
            await without.goto(f"{edge_url}/vwr/pre-1")
            await without.wait_for_selector("#access-code:not([hidden])")
            why = await without.text_content("#access-code-why")
            assert why is not None
            assert "access code" in why
            await without.fill("#access-code-input", "WRNG-WRNG-WRNG")
            await without.click("#access-code button")
            await without.wait_for_function(
                "document.getElementById('access-code-why').textContent.includes('not valid')"
            )
            assert await without.text_content("#position") == "…"
            status = await asyncio.to_thread(vwr.status, "pre-1")
            assert status.body["nextPosition"] == 0

            holder = await browser.new_page()
            await holder.goto(f"{edge_url}/vwr/pre-1")
            await holder.wait_for_selector("#access-code:not([hidden])")
            await holder.fill("#access-code-input", code.lower())
            await holder.click("#access-code button")
            await holder.wait_for_function(
                "document.getElementById('position').textContent === '1'"
            )
            assert await holder.is_hidden("#access-code")

            # The code was for one use: a third visitor with it is told so.
            third = await browser.new_page()
            await third.goto(f"{edge_url}/vwr/pre-1")
            await third.wait_for_selector("#access-code:not([hidden])")
            await third.fill("#access-code-input", code)
            await third.click("#access-code button")
            await third.wait_for_function(
                "document.getElementById('access-code-why').textContent.includes('used as many')"
            )
        finally:
            await browser.close()
