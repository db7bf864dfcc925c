"""The service as deployed: its own admission loop admits a waiter who keeps polling."""

from __future__ import annotations

import asyncio
import time

from urr_common.service import metrics_text
from urr_queue.settings import AdmissionSettings


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
