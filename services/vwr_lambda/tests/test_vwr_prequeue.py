"""A scheduled pre-queue for an event behind the Tier-1 room (issue 19): both tiers agree.

Tier 1 is the real Lambda handler on dynalite (its clock moved by hand, set to the wall clock
where Tier 2's Redis clock must agree); Tier 2 is the queue service's app on a private real
Redis, served on a real port so the Tier-1 advancer reads its real capacity feed. The order
Tier 2 admits is checked against ``urr-verify shuffle`` run on the published document only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from prometheus_client import CollectorRegistry

from urr_common.identity_testing import act_as, as_gateway, identity_settings
from urr_common.settings import AwsSettings
from urr_devstack.procs import RedisServer
from urr_devstack.testing import patient_redis
from urr_queue.app import ADMISSION_LOOP, AUDIENCE, create_app
from urr_queue.console.settings import ConsoleSettings
from urr_queue.context import QUEUE_CONTEXT
from urr_queue.metrics import QueueMetrics
from urr_queue.settings import (
    AdmissionSettings,
    EntryTokenSettings,
    FiguresSettings,
    QueueEventsSettings,
    QueueSettings,
    ReservationEventsSettings,
    Tier1PlacesSettings,
    VwrTrustSettings,
)
from urr_queue.tier1 import place_key
from urr_queue.tier1_marks import SpentPlaceMarker, SpentPlaceTable, open_dynamodb
from urr_verify.__main__ import main as verify_main
from urr_vwr_lambda import tier1
from urr_vwr_lambda.settings import VwrSettings

SECRET = bytes(range(7, 39))
COMMITMENT = hashlib.sha256(SECRET).hexdigest()
ADMIN = "/api/v1/admin/queue/"
ADMIN_HEADERS = act_as("admin-1", "admin")


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat()


async def _tier2(
    aiohttp_client: Any, redis_server: RedisServer, vwr_settings: VwrSettings, tmp_path: Path
) -> Any:
    redis_server.ensure_running()
    redis_server.flushall()
    settings = QueueSettings(
        environment="test",
        redis=patient_redis(redis_server.url),
        entry_tokens=EntryTokenSettings(private_key_file=tmp_path / "entry" / "local-1.pem"),
        vwr_trust=VwrTrustSettings(public_key_files=vwr_settings.vwr_trust.public_key_files),
        admission=AdmissionSettings(enabled=False),
        queue_events=QueueEventsSettings(enabled=False),
        reservation_events=ReservationEventsSettings(enabled=False),
        tier1_places=Tier1PlacesSettings(enabled=False),
        figures=FiguresSettings(enabled=False),
        console=ConsoleSettings(enabled=False),
        heartbeat_bucket_ms=500,
        identity=identity_settings(),
    )
    app = create_app(settings, registry=CollectorRegistry())
    return await aiohttp_client(app, middlewares=(as_gateway(AUDIENCE),))


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def _admit_all(client: Any, want: int) -> list[tuple[str, int]]:
    admitted: list[tuple[str, int]] = []
    for _ in range(50 * want):
        for result in await client.app[ADMISSION_LOOP].tick_all():
            admitted += result.admitted
        if len(admitted) >= want:
            return admitted
        await asyncio.sleep(0.005)
    return admitted


async def test_a_tier1_fronted_pre_queue_admits_the_shuffle_then_tier1_numbers(
    aiohttp_client: Any,
    redis_server: RedisServer,
    vwr_settings: VwrSettings,
    make_vwr: Callable[[VwrSettings], Any],
    tmp_path: Path,
) -> None:
    # The Tier-1 key exists (and its public half) before Tier 2 starts trusting the folder.
    probe = make_vwr(vwr_settings)
    assert probe.runtime.signer is not None
    client = await _tier2(aiohttp_client, redis_server, vwr_settings, tmp_path)
    feed = vwr_settings.queue.model_copy(update={"url": str(client.make_url("")).rstrip("/")})
    vwr = make_vwr(vwr_settings.model_copy(update={"queue": feed}))

    def at_wall_clock() -> None:
        vwr.clock.now = time.time()

    event = "pq-" + uuid.uuid4().hex[:8]
    now_ms = round(time.time() * 1000)
    opens, sale = now_ms - 500, now_ms + 9000
    room = vwr.admin(
        "PUT",
        event,
        {"isActive": True, "batchSize": 100, "prequeueStart": _iso(opens), "saleStart": _iso(sale)},
    )
    assert room.status == 201, room.body
    assert (room.body["prequeueStart"], room.body["saleStart"]) == (_iso(opens), _iso(sale))
    line = await client.put(
        f"{ADMIN}{event}",
        json={
            "require_tier1_token": True,
            "capacity": 1000,
            "admit_per_second": 100_000,
            "prequeue_start": _iso(opens),
            "sale_start": _iso(sale),
            "prequeue_commitment": COMMITMENT,
        },
        headers=ADMIN_HEADERS,
    )
    assert line.status == 201, await line.text()  # no longer refused with a Tier-1 room

    # Before the pre-queue opens (Tier 1's clock) nobody takes a place, and no number is used.
    vwr.clock.now = opens / 1000 - 5
    early = vwr.assign(event)
    assert (early.status, early.body["code"]) == (409, "prequeue_not_open")
    assert vwr.status(event).body["nextPosition"] == 0

    # The pre-queue: every place is let in at once with a pre-queue pass, which puts its
    # holder on Tier 2's roster; its number does not decide the order.
    fans = [f"fan-{index:02d}" for index in range(24)]
    member_of: dict[str, str] = {}
    number_of: dict[str, int] = {}
    passes: dict[str, str] = {}
    for fan in [*fans, "too-late"]:
        at_wall_clock()
        request_id = str(uuid.uuid4())
        assigned = vwr.assign(event, request_id)
        assert assigned.status == 201
        assert assigned.body["prequeue"] is True
        checked = vwr.check(event, request_id)
        assert checked.body["admitted"] is True, checked.body
        assert checked.body["prequeue"] is True
        claims = _claims(checked.body["token"])
        assert claims["pq"] == sale
        number_of[fan] = claims["pos"]
        passes[fan] = checked.body["token"]
    for fan in fans:
        entered = await client.post(
            f"/api/v1/queue/{event}/enter",
            headers={**act_as(fan, "user"), "X-Vwr-Token": passes[fan]},
        )
        assert entered.status == 201, await entered.text()
        body = await entered.json()
        assert body["status"] == "prequeue"
        member_of[fan] = body["member_id"]
    # Another holder's pass is bound to its first user, even on the roster.
    thief = await client.post(
        f"/api/v1/queue/{event}/enter",
        headers={**act_as("thief", "user"), "X-Vwr-Token": passes[fans[0]]},
    )
    assert (thief.status, (await thief.json())["code"]) == (403, "tier1_pass_bound")

    # Refused passes: signed before the pre-queue opened, or for another event.
    signer = vwr.runtime.signer
    stale = tier1.issue(
        signer,
        event_id=event,
        request_id=str(uuid.uuid4()),
        position=900,
        user_id=None,
        now=opens / 1000 - 60,
        prequeue_sale_ms=sale,
    )
    other = tier1.issue(
        signer,
        event_id="another-event",
        request_id=str(uuid.uuid4()),
        position=901,
        user_id=None,
        prequeue_sale_ms=sale,
    )
    for token, code, reason in (
        (stale, "tier1_pass_stale", None),
        (other, "vwr_token_required", "wrong_event"),
    ):
        refused = await client.post(
            f"/api/v1/queue/{event}/enter",
            headers={**act_as("sneaky", "user"), "X-Vwr-Token": token},
        )
        problem = await refused.json()
        assert (refused.status, problem["code"]) == (403, code), problem
        assert problem.get("reason") == reason
    # The roster waits outside the queue, and Tier 1 sees it as Tier 2's waiting line.
    capacity = await (await client.get(f"/api/v1/queue/{event}/capacity")).json()
    assert capacity["waiting"] == len(fans)
    # Numbered and pre-queue places do not mix: the Tier-1 requirement stays while it waits.
    toggled = await client.patch(
        f"{ADMIN}{event}", json={"require_tier1_token": False}, headers=ADMIN_HEADERS
    )
    assert (toggled.status, (await toggled.json())["code"]) == (409, "queue_not_empty")

    # Sale start (Redis's clock): the roster is frozen, a pre-queue pass is spent.
    await asyncio.sleep(max(0.0, sale / 1000 - time.time()) + 0.3)
    late = await client.post(
        f"/api/v1/queue/{event}/enter",
        headers={**act_as("too-late", "user"), "X-Vwr-Token": passes["too-late"]},
    )
    assert (late.status, (await late.json())["code"]) == (403, "prequeue_closed")
    store = client.app[QUEUE_CONTEXT].store
    spent = [place for place, _ in await store.unmarked_places(event, 10)]
    late_claims = _claims(passes["too-late"])
    assert spent == [place_key(late_claims["rid"], late_claims["pos"])]
    # Tier 1 is told (the queue's marker, on the same table): its check sends the holder to
    # take a new, numbered place.
    async with open_dynamodb(
        AwsSettings(
            endpoint_url=vwr_settings.aws.dynamodb_endpoint_url,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
        )
    ) as dynamodb:
        positions = vwr_settings.tables.positions
        async with SpentPlaceTable(dynamodb, positions) as table:
            marker = SpentPlaceMarker(
                store,
                table,
                QueueMetrics.register(CollectorRegistry()),
                Tier1PlacesSettings(table=positions),
            )
            assert await marker.mark_event(event) == 1
    at_wall_clock()
    gone = vwr.check(event, late_claims["rid"])
    assert (gone.status, gone.body["code"]) == (410, "place_spent")

    # After sale start Tier 1 numbers arrivals and the advancer releases them by number.
    after = [f"after-{index}" for index in range(5)]
    request_of: dict[str, str] = {}
    for fan in after:
        at_wall_clock()
        request_of[fan] = str(uuid.uuid4())
        assigned = vwr.assign(event, request_of[fan])
        assert assigned.status == 201
        assert "prequeue" not in assigned.body
    at_wall_clock()
    assert not vwr.check(event, request_of[after[0]]).body["admitted"]
    moved = await asyncio.to_thread(vwr.admin, "POST", f"{event}/advance", {"by": 100})
    assert moved.status == 200, moved.body
    # Pre-queue places are passed at no cost; the five numbered ones are let in.
    assert moved.body["admitted"] == len(after)
    numbered: dict[str, str] = {}
    for fan in after:
        checked = vwr.check(event, request_of[fan])
        assert checked.body["admitted"] is True
        assert "pq" not in _claims(checked.body["token"])
        numbered[fan] = checked.body["token"]
    # A numbered pass before sale start would have been refused; now they queue behind the
    # roster by Tier-1 number, whatever order they reach Tier 2 in.
    for fan in reversed(after):
        entered = await client.post(
            f"/api/v1/queue/{event}/enter",
            headers={**act_as(fan, "user"), "X-Vwr-Token": numbered[fan]},
        )
        assert entered.status == 201, await entered.text()
        assert (await entered.json())["status"] == "waiting"
    assert not any(result.admitted for result in await client.app[ADMISSION_LOOP].tick_all())

    revealed = await client.post(
        f"{ADMIN}{event}/prequeue/reveal", json={"secret": SECRET.hex()}, headers=ADMIN_HEADERS
    )
    assert revealed.status == 200, await revealed.text()
    document = await revealed.json()
    assert document["members"] == [member_of[fan] for fan in fans]
    published = {key: document[key] for key in ("members", "root", "commitment", "secret")}
    path = tmp_path / "roster.json"
    path.write_text(json.dumps(published))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert verify_main(["shuffle", str(path)]) == 0
    order = json.loads(out.getvalue())["order"]
    assert order != document["members"]

    admitted = await _admit_all(client, len(fans) + len(after))
    fan_of = {member: fan for fan, member in member_of.items()}
    by_number = sorted(after, key=lambda fan: _claims(numbered[fan])["pos"])
    assert [user for user, _ in admitted] == [fan_of[m] for m in order] + by_number
    assert by_number == after  # Tier-1 numbers follow arrival in Tier 1


def test_bad_pre_queue_settings_are_422_and_store_nothing(vwr: Any) -> None:
    opens = round(time.time() * 1000) + 60_000
    good = {"isActive": True, "prequeueStart": _iso(opens), "saleStart": _iso(opens + 60_000)}
    bad_bodies: list[tuple[dict[str, Any], str]] = [
        ({**good, "saleStart": _iso(opens - 1000)}, "validation_failed"),
        ({**good, "saleStart": good["prequeueStart"]}, "validation_failed"),
        ({"isActive": True, "prequeueStart": good["prequeueStart"]}, "validation_failed"),
        ({"isActive": True, "saleStart": good["saleStart"]}, "validation_failed"),
        ({**good, "prequeueStart": "tomorrow"}, "validation_failed"),
        ({**good, "prequeueStart": "2026-12-06T10:00:00"}, "validation_failed"),  # no offset
        ({**good, "saleStart": 1_800_000_000_000}, "validation_failed"),
        ({**good, "queueMethod": "random"}, "validation_failed"),
    ]
    for body, code in bad_bodies:
        answer = vwr.admin("PUT", "pq-bad", body)
        assert (answer.status, answer.body["code"]) == (422, code), body
        assert answer.headers["content-type"] == "application/problem+json"
        assert vwr.status("pq-bad").status == 404, body

    assert vwr.admin("PUT", "pq-bad", good).status == 201
    assert vwr.admin("PUT", "pq-bad", good).status == 200  # the same again
    assert vwr.admin("PUT", "pq-bad", {"isActive": False}).status == 200  # kept as it is
    for change, code in (
        ({**good, "saleStart": _iso(opens + 120_000)}, "prequeue_immutable"),
        ({"isActive": True, "queueMethod": "random"}, "validation_failed"),
    ):
        refused = vwr.admin("PUT", "pq-bad", change)
        assert (refused.status, refused.body["code"]) == (422, code), change
    status = vwr.status("pq-bad").body
    assert (status["prequeueStart"], status["saleStart"]) == (
        good["prequeueStart"],
        good["saleStart"],
    )
    assert status["queueMethod"] == "fifo"

    # A pre-queue is set before anyone holds a number of the run.
    vwr.open_event("pq-late")
    assert vwr.assign("pq-late").status == 201
    refused = vwr.admin("PUT", "pq-late", good)
    assert (refused.status, refused.body["code"]) == (409, "line_not_empty")
    assert "prequeueStart" not in vwr.status("pq-late").body
