"""The service as deployed: its own admission loop admits a waiter who keeps polling."""

from __future__ import annotations

import asyncio
import math
import time

from urr_common.service import metrics_text
from urr_queue.config import EventConfig, Mode
from urr_queue.metrics import EventFigures
from urr_queue.settings import AdmissionSettings, FiguresSettings
from urr_queue.store import Figures


async def test_the_running_loop_admits_a_polling_waiter(
    single_redis, queue_client, as_user, admin_headers
):
    client = await queue_client(
        single_redis, admission=AdmissionSettings(enabled=True, tick_interval_s=0.1)
    )
    await client.put(
        "/api/v1/admin/queue/live",
        json={"capacity": 1, "admit_per_second": 50},
        headers=admin_headers,
    )
    await client.post("/api/v1/queue/live/enter", headers=as_user("first"))
    await client.post("/api/v1/queue/live/enter", headers=as_user("second"))
    deadline = time.monotonic() + 5
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        body = await (
            await client.get("/api/v1/queue/live/status", headers=as_user("first"))
        ).json()
        if body["status"] == "admitted":
            break
        await asyncio.sleep(0.1)
    assert body["status"] == "admitted"
    second = await (await client.get("/api/v1/queue/live/status", headers=as_user("second"))).json()
    assert second["status"] == "waiting"
    assert second["position"] == 1
    # The loop shows up in the metrics, and the service reports itself ready.
    metrics = metrics_text(client.app)
    assert "urr_queue_admitted_total" in metrics
    assert "urr_queue_tick_seconds_count" in metrics
    assert (await client.get("/health/ready")).status == 200


async def test_passthrough_reports_each_step_once(
    single_redis, queue_client, as_user, admin_headers, monkeypatch
):
    from urr_queue.context import QUEUE_CONTEXT

    client = await queue_client(single_redis)
    records: list[dict[str, object]] = []
    monkeypatch.setattr(client.app[QUEUE_CONTEXT].publisher, "publish", records.append)
    path = "/api/v1/admin/queue/pt"
    await client.put(path, json={"mode": "paused"}, headers=admin_headers)
    await client.post("/api/v1/queue/pt/enter", headers=as_user("early"))
    await client.patch(path, json={"mode": "passthrough"}, headers=admin_headers)
    await client.post("/api/v1/queue/pt/enter", headers=as_user("early"))  # was waiting
    await client.post("/api/v1/queue/pt/enter", headers=as_user("new"))  # enters and passes
    await client.post("/api/v1/queue/pt/enter", headers=as_user("new"))  # already admitted
    assert [(r["type"], r["userId"]) for r in records] == [
        ("entered", "early"),
        ("admitted", "early"),
        ("entered", "new"),
        ("admitted", "new"),
    ]


def _gauge(app, name: str, event_id: str) -> float | None:
    from urr_common.service import REGISTRY_KEY

    value: float | None = app[REGISTRY_KEY].get_sample_value(name, {"event_id": event_id})
    return value


async def test_per_event_gauges_follow_the_live_figures_and_leave_with_the_event(
    single_redis, queue_client, as_user, admin_headers
):
    client = await queue_client(single_redis, figures=FiguresSettings(interval_s=0.05))
    path = "/api/v1/admin/queue/gauged"
    # capacity / session = 0.5/s is below admit_per_second: the steady rate is 0.5/s.
    await client.put(
        path, json={"capacity": 30, "admit_per_second": 5, "session_seconds": 60},
        headers=admin_headers,
    )  # fmt: skip
    for user in ("a", "b", "c"):
        await client.post("/api/v1/queue/gauged/enter", headers=as_user(user))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _gauge(client.app, "urr_queue_waiting", "gauged") == 3:
            break
        await asyncio.sleep(0.05)
    live = (await (await client.get(path, headers=admin_headers)).json())["live"]
    assert _gauge(client.app, "urr_queue_waiting", "gauged") == live["waiting"] == 3
    assert _gauge(client.app, "urr_queue_active_sessions", "gauged") == live["admitted"] == 0
    assert _gauge(client.app, "urr_queue_capacity", "gauged") == 30
    assert _gauge(client.app, "urr_queue_admission_rate", "gauged") == 0.5
    assert _gauge(client.app, "urr_queue_eta_seconds", "gauged") == live["eta_back_seconds"] == 6
    oldest = _gauge(client.app, "urr_queue_oldest_waiter_seconds", "gauged")
    assert oldest is not None
    assert 0 <= oldest < 5
    text = metrics_text(client.app)
    assert 'urr_queue_waiting{event_id="gauged"} 3.0' in text

    assert (await client.delete(path, headers=admin_headers)).status == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _gauge(client.app, "urr_queue_waiting", "gauged") is None:
            break
        await asyncio.sleep(0.05)
    for name in ("urr_queue_waiting", "urr_queue_eta_seconds", "urr_queue_capacity"):
        assert _gauge(client.app, name, "gauged") is None


def test_a_paused_event_has_no_rate_and_an_unknown_wait():
    config = EventConfig(mode=Mode.PAUSED, capacity=10)
    figures = Figures(
        config=config, waiting=4, admitted=2, admitted_last_minute=0, oldest_wait_ms=1500,
        measured_rate=None, now_ms=0,
    )  # fmt: skip
    values = EventFigures.of(figures)
    assert (values.waiting, values.active_sessions, values.capacity) == (4, 2, 10)
    assert values.admission_rate == 0
    assert math.isnan(values.eta_seconds)
    assert values.oldest_waiter_seconds == 1.5
    empty = EventFigures.of(
        Figures(config, 0, 0, 0, oldest_wait_ms=None, measured_rate=None, now_ms=0)
    )
    assert (empty.eta_seconds, empty.oldest_waiter_seconds) == (0, 0)
