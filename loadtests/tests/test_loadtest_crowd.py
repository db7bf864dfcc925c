"""The flash crowd, short, against a whole private stack; then the journey in Chromium.

One ``urr-devstack up`` on free ports (its Redis, PostgreSQL database, Kafka and moto are
this session's fixtures, so nothing touches a running ``make up``) serves both tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from urr_devstack.procs import RedisServer, free_port
from urr_devstack.services import SERVICES
from urr_devstack.testing import CHROMIUM, CHROMIUM_ARGS
from urr_loadtests.stack import READY_BANNER, parse_banner

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "loadtests" / "tests"


@dataclass
class PrivateStack:
    env: dict[str, str]
    urls: dict[str, str]
    admin_password: str
    described: Path


@pytest.fixture(scope="module")
def private_stack(
    redis_server: RedisServer, postgres_admin_dsn: str, kafka_bootstrap: str, moto_endpoint: str
) -> Iterator[PrivateStack]:
    state = Path(tempfile.mkdtemp(prefix="urr-loadtest-"))
    state.chmod(0o755)
    pg = urlsplit(postgres_admin_dsn)
    database = f"urr_lt_{uuid.uuid4().hex[:12]}"
    ports = {
        name: free_port()
        for spec in SERVICES
        for name, port in spec.listeners().items()
        if port is not None
    }
    env = {key: value for key, value in os.environ.items() if not key.startswith("URR_")}
    env.update(
        {
            "URR_DEVSTACK__STATE_DIR": str(state / ".urr"),
            "URR_DEVSTACK__PORTS__REDIS": str(redis_server.port),
            "URR_DEVSTACK__PORTS__POSTGRES": str(pg.port),
            "URR_DEVSTACK__PORTS__KAFKA": kafka_bootstrap.rsplit(":", 1)[1],
            "URR_DEVSTACK__PORTS__MOTO": moto_endpoint.rsplit(":", 1)[1],
            # A dynalite of its own (it starts in a second): its tables die with it.
            "URR_DEVSTACK__PORTS__DYNALITE": str(free_port()),
            "URR_DEVSTACK__POSTGRES_DATABASE": database,
            "URR_DEVSTACK__SERVICE_PORTS": json.dumps(ports),
            "URR_DEVSTACK__READY_TIMEOUT_S": "90",
        }
    )
    script = Path(sys.executable).parent / "urr-devstack"
    process = subprocess.Popen(
        [str(script), "up"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("admin login:" in line for line in lines):
            assert process.poll() is None, "".join(lines[-40:])
            assert time.monotonic() < deadline, "".join(lines[-40:])
            time.sleep(0.2)
        banner = lines[next(i for i, line in enumerate(lines) if READY_BANNER in line) :]
        urls, email, password = parse_banner(banner)
        urls["gateway-internal"] = f"http://127.0.0.1:{ports['gateway-internal']}"
        urls["queue-internal"] = f"http://127.0.0.1:{ports['queue-internal']}"
        described = state / "stack.json"
        described.write_text(
            json.dumps(
                {
                    "urls": urls,
                    "admin_email": email,
                    "admin_password": password,
                    "state_dir": env["URR_DEVSTACK__STATE_DIR"],
                }
            )
        )
        yield PrivateStack(env, urls, password, described)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()
        asyncio.run(_drop_database(postgres_admin_dsn, database))
        # The session's moto is shared: leave it empty for the tests after this module.
        reset = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")  # noqa: S310
        with urllib.request.urlopen(reset, timeout=10):  # noqa: S310
            pass


async def _drop_database(admin_dsn: str, name: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


# The run stops once every arrival has its outcome (30 s on an idle machine); its 100 s
# bound gives each arrival 85 s, room for a CI machine running other tests beside it.
@pytest.mark.timeout(190)
@pytest.mark.parametrize("bot_challenge", ["none", "pow"])
def test_loadtest_short_flash_crowd_keeps_every_promise(
    private_stack: PrivateStack, bot_challenge: str
):
    """Arrivals > seats > capacity: bookings stop at the seats, admissions at the capacity.

    With ``pow`` every assign asks for a 16-bit proof of work (issue 15), which each arrival
    solves before it gets its place; every promise still holds.

    Without, a warm-up crowd of 8 arrivals on an event of its own runs first: the crowd's
    figures, checks and log audit hold only the crowd's 40 arrivals.
    """
    warm = ["--warmup", "always", "--warmup-seconds", "4", "--warmup-rate", "2"]
    out = ARTIFACTS / f"flash_crowd-{bot_challenge}"
    env = {
        **private_stack.env,
        "URR_LT_STACK": str(private_stack.described),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "urr_loadtests",
            "flash_crowd",
            "--users",
            "40",
            "--spawn-rate",
            "20",
            "--run-time",
            "100",
            "--capacity",
            "10",
            "--admit-per-second",
            "20",
            "--bot-challenge",
            bot_challenge,
            "--pow-bits",
            "16",
            "--out",
            str(out),
            *(warm if bot_challenge == "none" else ["--warmup", "never"]),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    runs = sorted(out.glob("flash_crowd-*"))
    assert runs, done.stdout + done.stderr
    summary = json.loads((runs[-1] / "summary.json").read_text())
    crowd = summary["crowd"]
    assert crowd["arrivals"] == 40, summary
    assert crowd["seats_sold_twice"] == []
    assert crowd["server_errors_5xx"] == 0, summary
    # Read from the queue itself (0 would mean the sampler never got an answer).
    assert 0 < crowd["max_admitted_sampled"] <= 10, summary.get("sampler_errors")
    assert crowd["max_concurrent_entry_token_holders_seen_by_ticket"] <= 10
    assert "unanswered" not in crowd["outcomes"], summary
    # The queue holds free slots for lower Tier-1 numbers still on their way.
    assert crowd["kendall_tau_arrival_vs_admission"] >= 0.99, summary
    confirmed = crowd["reservations_by_status"].get("confirmed", 0)
    assert 0 < confirmed <= 100
    assert all(400 <= probe["status"] < 500 for probe in summary["token_probes"]), summary
    # Issue 19: the admissions, read back through the public log API, pass urr-verify audit
    # (run as its own process) and the first and last receipts verify.
    log = summary["log_audit"]
    assert log["audit"]["unexplained"] == 0, log
    assert log["logged"] >= log["expected"] > 0, log
    assert log["audit"]["admitted"] == log["logged"], log
    assert [r["exit_code"] for r in log["receipts"]] == [0, 0], log
    assert not [m for m in summary["targets_missed"] if m.startswith("log audit")], summary
    assert len(summary["token_probes"]) == 6
    if bot_challenge == "pow":
        pow_figures = summary["proof_of_work"]
        assert pow_figures["arrivals_placed"] == pow_figures["placed_with_a_solution"] == 40
    for name in ("report.html", "latency_and_throughput.png", "waiting_admitted_served.png"):
        assert (runs[-1] / name).stat().st_size > 0
    if bot_challenge == "none":
        _assert_the_warm_up_stayed_apart(runs[-1], summary)
    else:
        assert "warmup" not in summary


def _assert_the_warm_up_stayed_apart(run: Path, summary: dict[str, Any]) -> None:
    """The warm-up ran to its end on its own event, and none of its requests is the crowd's."""
    warmed = summary["warmup"]
    assert warmed["event_id"] != summary["event_id"], warmed
    assert warmed["arrivals_finished"] == warmed["arrivals_planned"] == 8, warmed
    assert "unanswered" not in warmed["outcomes"], warmed
    assert warmed["requests"] > 0
    assert (run / "warmup" / "flash_crowd_stats.csv").stat().st_size > 0
    # One edge page per arrival: the crowd's 40, not 48.
    routes = {route["route"]: route["requests"] for route in summary["routes"]}
    assert routes["GET /events/{id}"] == 40, routes
    # The crowd's admissions alone are read back and audited.
    assert 0 < summary["log_audit"]["expected"] <= 40, summary["log_audit"]


@pytest.mark.timeout(150)
def test_loadtest_journey_in_chromium(private_stack: PrivateStack):
    """A visitor in a real browser, by clicking: the edge sends them to the waiting page,
    which lets them through to the event page; there they register, join the queue, pick a
    seat, reserve it and see the outcome. Screenshots go to artifacts/loadtests/tests/browser.
    """
    # Fail, never skip: `make test` installs Debian's chromium before the tests run.
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    from playwright.sync_api import expect, sync_playwright

    from urr_loadtests import setup
    from urr_loadtests.stack import Stack

    stack = Stack(
        private_stack.urls,
        "admin@urr.local",
        private_stack.admin_password,
        state_dir=Path(private_stack.env["URR_DEVSTACK__STATE_DIR"]),
    )
    event_id = f"br{uuid.uuid4().hex[:10]}"
    setup.seed_event(stack, event_id, capacity=5, admit_per_second=5)
    setup.activate_room(stack, setup.admin_token(stack), event_id)
    shots = ARTIFACTS / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    edge = private_stack.urls["vwr-edge"]
    email = f"browser-{uuid.uuid4().hex[:8]}@example.com"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # The edge turns a visitor with no pass away to the waiting page...
            page.goto(f"{edge}/events/{event_id}")
            assert f"/vwr/{event_id}" in page.url
            page.wait_for_selector("#position")
            page.screenshot(path=str(shots / "1-waiting-room.png"))
            # ... whose script takes a place, polls, and sends them back once admitted.
            page.wait_for_url(f"{edge}/events/{event_id}", timeout=60_000)
            assert "urr-vwr-token" in {c["name"] for c in page.context.cookies()}
            expect(page.locator("#event-name")).to_have_text(f"Load test {event_id}")
            page.screenshot(path=str(shots / "2-event-page.png"))
            page.fill("#email", email)
            page.fill("#password", "browser password 1")
            page.click("#register-button")
            expect(page.locator("#join")).to_be_visible(timeout=20_000)
            page.click("#join")
            expect(page.locator("#seats")).to_be_visible(timeout=30_000)
            free = page.locator(".seat:not([disabled])").first
            expect(free).to_be_visible(timeout=10_000)
            seat_id = free.get_attribute("data-seat")
            page.screenshot(path=str(shots / "3-seat-map.png"))
            free.click()
            expect(free).to_have_attribute("aria-pressed", "true", timeout=10_000)
            page.click("#reserve")
            expect(page.locator("#result")).to_be_visible(timeout=10_000)
            outcome = page.locator("#outcome")
            # The words are the page's language; the status itself is in data-status.
            expect(outcome).to_have_attribute(
                "data-status", re.compile("^(confirmed|declined)$"), timeout=60_000
            )
            shown = outcome.get_attribute("data-status")
            reservation_id = page.locator("#reservation-id").inner_text()
            page.screenshot(path=str(shots / "4-outcome.png"), full_page=True)
            assert errors == [], errors
        finally:
            browser.close()
    # What the page showed is what PostgreSQL holds, for this visitor's chosen seat.
    row = asyncio.run(_reservation(private_stack, reservation_id))
    assert row is not None
    assert row["status"] == shown
    assert list(row["seat_ids"]) == [seat_id]


async def _reservation(stack: PrivateStack, reservation_id: str) -> asyncpg.Record | None:
    connection = await asyncpg.connect(stack.urls["postgres"])
    try:
        return await connection.fetchrow(
            "SELECT status, seat_ids FROM reservations WHERE reservation_id = $1",
            uuid.UUID(reservation_id),
        )
    finally:
        await connection.close()
