"""The operator console against the real Tier-1 function: switching a waiting room on from the
console (through the Tier-1 admin API, with the operator's own token), and Tier-1 answers held
to the OpenAPI document the console's service publishes.

Here rather than in the queue's tests because the Tier-1 harness (DynamoDB tables, access keys,
the API Gateway emulator) lives in this folder's fixtures.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from openapi_schema_validator import OAS31Validator
from prometheus_client import CollectorRegistry

from urr_common.identity_testing import act_as, as_gateway, identity_settings
from urr_common.settings import AwsSettings
from urr_devstack.testing import patient_redis
from urr_queue.apidocs import DOCUMENTS
from urr_queue.app import create_app as create_queue
from urr_queue.console.settings import ConsoleSettings
from urr_queue.settings import (
    AdmissionSettings,
    EntryTokenSettings,
    QueueEventsSettings,
    QueueSettings,
    ReservationEventsSettings,
    Tier1PlacesSettings,
    VwrTrustSettings,
)
from urr_queue.tier1_marks import open_dynamodb
from urr_vwr_lambda.local import apigw

pytestmark = [pytest.mark.integration]

EVENT = "cc-1"
ADMIN = act_as("ops-1", "admin")


async def _serve(app: web.Application, runners: list[web.AppRunner]) -> str:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    runners.append(runner)
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def queue_url(
    vwr: Any, redis_url: str, aws_endpoint: str, dynamodb_endpoint: str, tmp_path: Path
) -> AsyncIterator[str]:
    """The queue service with its console pointed at this test's Tier-1 tables and API."""
    runners: list[web.AppRunner] = []
    try:
        api_url = await _serve(apigw.create_app(vwr.settings, runtime=vwr.runtime), runners)
        aws = AwsSettings(
            endpoint_url=aws_endpoint,
            dynamodb_endpoint_url=dynamodb_endpoint,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
        )
        settings = QueueSettings(
            environment="test",
            redis=patient_redis(redis_url),
            entry_tokens=EntryTokenSettings(private_key_file=tmp_path / "entry" / "k.pem"),
            vwr_trust=VwrTrustSettings(public_key_files=[tmp_path / "none" / "*.pem"]),
            admission=AdmissionSettings(enabled=False),
            queue_events=QueueEventsSettings(enabled=False),
            reservation_events=ReservationEventsSettings(enabled=False),
            tier1_places=Tier1PlacesSettings(enabled=False),
            identity=identity_settings(),
            console=ConsoleSettings(
                tier1_counters_table=vwr.settings.tables.counters,
                tier1_admin_url=api_url,
                sample_interval_s=60,
                cache_s=0.0,  # every read fresh: the test changes Tier 1 between reads
            ),
        )
        app = create_queue(
            settings, registry=CollectorRegistry(), dynamodb_factory=lambda: open_dynamodb(aws)
        )
        yield await _serve(app, runners)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def test_the_console_switches_a_waiting_room_on_and_records_it(
    vwr: Any, queue_url: str
) -> None:
    vwr.open_event(EVENT, active=False)
    change = f"{queue_url}/api/v1/admin/console/events/{EVENT}/changes"
    async with ClientSession(middlewares=(as_gateway("queue"),)) as http:
        created = await http.put(
            f"{queue_url}/api/v1/admin/queue/{EVENT}", json={"capacity": 2}, headers=ADMIN
        )
        assert created.status == 201
        # A caller whose own token Tier 1 refuses changes nothing (not even the Tier-2 part
        # of the same change), and nothing is recorded.
        refused = await http.post(
            change,
            json={"waiting_room_active": True, "mode": "paused"},
            headers={**ADMIN, "Authorization": f"Bearer {vwr.admin_token(role='user')}"},
        )
        assert refused.status == 502
        assert (await refused.json())["code"] == "tier1_admin_refused"
        assert vwr.status(EVENT).body["isActive"] is False
        admin = await http.get(f"{queue_url}/api/v1/admin/queue/{EVENT}", headers=ADMIN)
        assert (await admin.json())["config"]["mode"] == "queue"

        answer = await http.post(
            change,
            json={"waiting_room_active": True},
            headers={**ADMIN, "Authorization": f"Bearer {vwr.admin_token()}"},
        )
        assert answer.status == 200, await answer.text()
        record = await answer.json()
        assert (record["before"], record["after"]) == (
            {"waiting_room_active": False},
            {"waiting_room_active": True},
        )
        assert vwr.status(EVENT).body["isActive"] is True

        view = await (
            await http.get(f"{queue_url}/api/v1/admin/console/figures", headers=ADMIN)
        ).json()
        [event] = [e for e in view["events"] if e["event_id"] == EVENT]
        assert event["tier1"]["is_active"] is True
        assert event["tier2"]["mode"] == "queue"
        assert view["controls"]["waiting_room"] is True
        trail = await (
            await http.get(f"{queue_url}/api/v1/admin/console/audit", headers=ADMIN)
        ).json()
        assert [r["actor"] for r in trail["records"]] == ["ops-1"]

        missing = await http.post(
            f"{queue_url}/api/v1/admin/console/events/no-room/changes",
            json={"waiting_room_active": True},
            headers={**ADMIN, "Authorization": f"Bearer {vwr.admin_token()}"},
        )
        assert missing.status == 404
        vwr.open_event("room-only", active=False)
        view = await (
            await http.get(f"{queue_url}/api/v1/admin/console/figures", headers=ADMIN)
        ).json()
        [room] = [e for e in view["events"] if e["event_id"] == "room-only"]
        assert room["tier2"] is None  # a room without a Tier-2 queue is still listed


def _check(doc: dict[str, Any], path: str, method: str, answer: Any) -> None:
    """The answer's status is documented, with its media type and schema."""

    def resolved(schema: Any) -> Any:
        if isinstance(schema, dict):
            if "$ref" in schema:
                return resolved(doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
            return {key: resolved(value) for key, value in schema.items()}
        if isinstance(schema, list):
            return [resolved(value) for value in schema]
        return schema

    documented = doc["paths"][path][method]["responses"][str(answer.status)]
    media = answer.headers.get("content-type", "").split(";")[0]
    OAS31Validator(resolved(documented["content"][media]["schema"])).validate(answer.body)


def test_tier1_answers_match_the_document(vwr: Any) -> None:
    doc = DOCUMENTS["tier1.json"][1]()
    vwr.open_event(EVENT, batch_size=1)
    rid = str(uuid.uuid4())
    _check(doc, "/vwr/assign/{eventId}", "post", vwr.assign(EVENT, rid))
    _check(doc, "/vwr/assign/{eventId}", "post", vwr.assign(EVENT, rid))  # the same place
    _check(doc, "/vwr/check/{eventId}/{requestId}", "get", vwr.check(EVENT, rid))
    _check(doc, "/vwr/status/{eventId}", "get", vwr.status(EVENT))
    _check(doc, "/vwr/status/{eventId}", "get", vwr.status("nowhere"))
    _check(doc, "/vwr/challenge/{eventId}", "get", vwr.request("GET", f"/vwr/challenge/{EVENT}"))
    _check(doc, "/vwr/check/{eventId}/{requestId}", "get", vwr.check(EVENT, str(uuid.uuid4())))
    vwr.admin("POST", f"{EVENT}/advance", {"by": 1})
    admitted = vwr.check(EVENT, rid)
    assert admitted.body["admitted"] is True
    _check(doc, "/vwr/check/{eventId}/{requestId}", "get", admitted)
