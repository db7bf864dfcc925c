"""The seed command: idempotent catalog, and a tolerant call to the queue admin API."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from urr_common.settings import load_settings
from urr_devstack.procs import free_port
from urr_ticket.__main__ import main
from urr_ticket.seed import DemoEvent, QueueConfig, seed
from urr_ticket.settings import TicketSettings

pytestmark = pytest.mark.integration
SECRET = "seed-test-secret-0123456789abcdef"


def seed_settings(postgres_dsn: str, queue_url: str, attempts: int = 3) -> TicketSettings:
    return load_settings(
        TicketSettings,
        postgres={"dsn": postgres_dsn},
        queue_admin={"base_url": queue_url, "attempts": attempts, "retry_s": 0.05},
        queue_credential={"name": "ticket", "secret": SECRET},
    )


async def test_seeding_twice_adds_the_seats_once_and_configures_the_queue(
    postgres_dsn: str, aiohttp_server: Any
) -> None:
    calls: list[tuple[str, dict[str, str], Any]] = []
    failures = [503]  # the queue service answers 503 once (still starting), then 200

    async def put_queue(request: web.Request) -> web.Response:
        calls.append((request.path, dict(request.headers), await request.json()))
        if failures:
            return web.json_response({"status": failures.pop()}, status=503)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_put("/internal/v1/queue/{event_id}/config", put_queue)
    server = await aiohttp_server(app)
    settings = seed_settings(postgres_dsn, str(server.make_url("")))

    added, ok, message = await seed(settings, DemoEvent(), QueueConfig())
    assert (added, ok) == (100, True), message
    added, ok, _ = await seed(settings, DemoEvent(), QueueConfig())
    assert (added, ok) == (0, True)

    connection = await asyncpg.connect(postgres_dsn)
    try:
        seats = await connection.fetch("SELECT seat_id FROM seats WHERE event_id = 'demo'")
        assert len(seats) == 100
        assert {"A1", "J10", "E5"} <= {r["seat_id"] for r in seats}
    finally:
        await connection.close()

    path, headers, body = calls[-1]
    # The queue's internal listener, with the ticket service's credential (no user headers).
    assert path == "/internal/v1/queue/demo/config"
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert not [name for name in headers if name.lower().startswith("x-user-")]
    assert set(body) == {
        "capacity",
        "admit_per_second",
        "session_seconds",
        "idle_timeout_seconds",
        "require_tier1_token",
        "mode",
    }
    assert len(calls) == 3  # one retry after the 503


async def test_a_refused_queue_call_is_reported_not_retried(
    postgres_dsn: str, aiohttp_server: Any
) -> None:
    calls = []

    async def refuse(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"code": "forbidden"}, status=403)

    app = web.Application()
    app.router.add_put("/internal/v1/queue/{event_id}/config", refuse)
    server = await aiohttp_server(app)
    added, ok, message = await seed(
        seed_settings(postgres_dsn, str(server.make_url(""))), DemoEvent(), QueueConfig()
    )
    assert added == 100
    assert not ok
    assert "403" in message
    assert len(calls) == 1


def test_the_command_survives_an_unreachable_queue_service(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("URR_POSTGRES__DSN", postgres_dsn)
    monkeypatch.setenv("URR_QUEUE_ADMIN__BASE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("URR_QUEUE_ADMIN__ATTEMPTS", "2")
    monkeypatch.setenv("URR_QUEUE_ADMIN__RETRY_S", "0.05")
    monkeypatch.setenv("URR_LOG__LEVEL", "WARNING")
    with pytest.raises(SystemExit) as exited:
        main(["seed"])
    assert exited.value.code == 0
    out, err = capsys.readouterr()
    assert "seeded event 'demo': 100 seats added" in out
    assert "NOT configured" in err
    with pytest.raises(SystemExit) as again:
        main(["seed", "--no-queue"])
    assert again.value.code == 0
    assert "0 seats added" in capsys.readouterr().out


def test_the_command_fails_clearly_without_a_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("URR_POSTGRES__DSN", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    monkeypatch.setenv("URR_LOG__LEVEL", "WARNING")
    with pytest.raises(SystemExit) as exited:
        main(["seed", "--no-queue"])
    assert exited.value.code == 1
    assert "seed failed" in capsys.readouterr().err


def test_the_seed_sets_the_event_limits_and_keeps_them_unless_told(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("URR_POSTGRES__DSN", postgres_dsn)
    monkeypatch.setenv("URR_LOG__LEVEL", "WARNING")

    async def limits() -> tuple[int, int]:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            row = await conn.fetchrow(
                "SELECT max_seats_per_user, hold_seconds FROM booking_events"
                " WHERE event_id = 'demo'"
            )
        finally:
            await conn.close()
        assert row is not None
        return row["max_seats_per_user"], row["hold_seconds"]

    with pytest.raises(SystemExit):
        main(["seed", "--no-queue"])
    assert asyncio.run(limits()) == (4, 300)  # the schema's defaults
    with pytest.raises(SystemExit):
        main(["seed", "--no-queue", "--max-seats-per-user", "2", "--hold-seconds", "120"])
    assert asyncio.run(limits()) == (2, 120)
    with pytest.raises(SystemExit):
        main(["seed", "--no-queue"])
    assert asyncio.run(limits()) == (2, 120)  # kept
    capsys.readouterr()
    for bad in (["--max-seats-per-user", "0"], ["--hold-seconds", "4"]):
        with pytest.raises(SystemExit) as refused:
            main(["seed", "--no-queue", *bad])
        assert refused.value.code == 2
    assert asyncio.run(limits()) == (2, 120)
