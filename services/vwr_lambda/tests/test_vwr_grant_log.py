"""Tier 1's random draw, end to end: the real advancer (on dynalite) publishes its grants and
waivers to Kafka (Tansu), ``python -m urr_admission_log`` (PostgreSQL) makes them leaves,
and ``urr-verify audit`` reads them from the public log API, as a stranger would, against the
seed revealed there. An honest draw passes; a draw that did not follow the keys fails, naming
the reason; so does an honest log whose grants a forger reordered."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from urr_common.fairness import seed_commitment
from urr_common.settings import KafkaSettings
from urr_devstack.procs import free_port
from urr_devstack.testing import admission_log_env
from urr_verify.__main__ import main as verify
from urr_vwr_lambda import queueing
from urr_vwr_lambda.grant_log import GrantLogPublisher
from urr_vwr_lambda.settings import GrantLogSettings, VwrSettings

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SEED = "5a" * 32
PLACES = 12
QUIET = 3  # places whose checks stop: given up one per cycle, never drawn while quiet


@pytest.fixture
def log_service(
    postgres_dsn: str, kafka_bootstrap: str, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """The admission log as its own process on a private topic: ``base`` URL and ``topic``."""
    port, topic = free_port(), f"queue-events-{uuid.uuid4().hex[:6]}"
    env = admission_log_env(port, postgres_dsn, kafka_bootstrap, topic, tmp_path, sign_every_s=0.2)
    with (tmp_path / "log.out").open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "urr_admission_log"], env=env, stdout=sink, stderr=sink
        )
    try:
        yield {"base": f"http://127.0.0.1:{port}", "topic": topic, "bootstrap": kafka_bootstrap}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - a local test URL
        return json.load(answer)


def signed_size(base: str, event_id: str, want: int) -> int:
    """Wait until a signed tree head of the event covers ``want`` leaves."""
    deadline = time.monotonic() + 30
    size = 0
    while time.monotonic() < deadline:
        try:
            size = get_json(f"{base}/v1/log/{event_id}/sth")["size"]
            if size >= want:
                return int(size)
        except OSError:
            pass  # starting, or no head signed yet (404)
        time.sleep(0.2)
    raise AssertionError(f"the log of {event_id} has {size} signed leaves, not {want}")


def publish_reveal(log: dict[str, str], event_id: str) -> None:
    """The queue's order-seed records (its reveal route, once the line is over)."""
    commitment = seed_commitment(bytes.fromhex(SEED))
    records = [
        {"type": "order_seed_committed", "eventId": event_id, "commitment": commitment},
        {
            "type": "order_seed_revealed",
            "eventId": event_id,
            "commitment": commitment,
            "seed": SEED,
        },
    ]

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=log["bootstrap"], acks="all")
        await producer.start()
        try:
            for record in records:
                await producer.send_and_wait(
                    log["topic"], orjson.dumps(record), key=event_id.encode()
                )
        finally:
            await producer.stop()

    asyncio.run(send())


def with_grant_log(
    vwr_settings: VwrSettings, log: dict[str, str], *, timeout_s: float = 20.0
) -> VwrSettings:
    return vwr_settings.model_copy(
        update={
            "grant_log": GrantLogSettings(
                enabled=True,
                topic=log["topic"],
                kafka=KafkaSettings(bootstrap_servers=log["bootstrap"]),
                timeout_s=timeout_s,
            )
        }
    )


def record_sent(publisher: Any) -> tuple[list[dict[str, Any]], Callable[..., int]]:
    """Every record the publisher hands to Kafka from now on (really sent), and its own
    ``publish`` to stop recording with."""
    sent: list[dict[str, Any]] = []
    publish = publisher.publish

    def counted(records: list[dict[str, Any]]) -> int:
        sent.extend(records)
        return int(publish(records))

    publisher.publish = counted
    return sent, publish


def run_random_line(
    make_vwr: Callable[[VwrSettings], Any], vwr_settings: VwrSettings, log: dict[str, str]
) -> tuple[str, list[dict[str, Any]]]:
    """A random-method room of ``PLACES``, ``QUIET`` of them going quiet, drawn to the end;
    the event and every record its advancer handed to Kafka."""
    settings = vwr_settings.model_copy(
        update={
            "grant_log": GrantLogSettings(
                enabled=True,
                topic=log["topic"],
                kafka=KafkaSettings(bootstrap_servers=log["bootstrap"]),
                timeout_s=20.0,
            ),
            "advancer": vwr_settings.advancer.model_copy(update={"max_skips_per_step": 1}),
        }
    )
    vwr = make_vwr(settings)
    event_id = f"t1{uuid.uuid4().hex[:8]}"
    opened = vwr.admin(
        "PUT",
        event_id,
        {"isActive": True, "batchSize": 100, "queueMethod": "random", "orderSeed": SEED},
    )
    assert opened.status == 201, opened.body
    ids = [str(uuid.uuid4()) for _ in range(PLACES)]
    for request_id in ids:
        assert vwr.assign(event_id, request_id).status == 201
    vwr.clock.advance(settings.advancer.abandon_after_s + 5)
    live = ids[QUIET:]
    publisher = vwr.runtime.grant_log
    sent, publish = record_sent(publisher)
    try:
        for _ in range(10):
            for request_id in live:
                assert vwr.check(event_id, request_id).status == 200
            moved = vwr.admin("POST", f"{event_id}/advance", {"by": 3})
            assert moved.status == 200, moved.body
            if moved.body["servingCounter"] == len(live):
                break
        assert vwr.status(event_id).body["servingCounter"] == len(live)
        assert vwr.runtime.grant_log.pending == []
        publisher.publish = publish  # the reveal's record is no leaf
        assert reveal_tier1(vwr, event_id) == SEED
    finally:
        vwr.runtime.grant_log.close()
    return event_id, sent


def reveal_tier1(vwr: Any, event_id: str) -> str:
    """The line is over: close the room and reveal Tier 1's seed through its admin route."""
    closed = vwr.admin("PUT", event_id, {"isActive": False})
    assert closed.status == 200, closed.body
    revealed = vwr.admin("POST", f"{event_id}/order-seed/reveal")
    assert revealed.status == 200, revealed.body
    assert revealed.body["published"] is True
    return str(revealed.body["orderSeed"])


def audit(entries: str, seed: str) -> int:
    return verify(["audit", entries, "--seed", seed])


def test_an_honest_draw_is_logged_and_audits_clean_and_a_reordered_copy_fails(
    make_vwr: Callable[[VwrSettings], Any],
    vwr_settings: VwrSettings,
    log_service: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    event_id, sent = run_random_line(make_vwr, vwr_settings, log_service)
    publish_reveal(log_service, event_id)
    base = f"{log_service['base']}/v1/log/{event_id}"
    size = signed_size(log_service["base"], event_id, len(sent))
    assert size == len(sent)  # every record once, in the order sent
    entries_url = f"{base}/entries?start=0&end={size}"
    leaves = get_json(entries_url)["entries"]
    kinds = [leaf["kind"] for leaf in leaves]
    assert kinds.count("tier1-grant") == PLACES - QUIET
    assert kinds.count("tier1-waive") == QUIET
    # Quiet places the skip limit kept, when a draw passed them with a smaller key.
    assert kinds.count("tier1-pass") == size - PLACES
    assert [leaf["place"] for leaf in leaves] == [record["place"] for record in sent]
    assert all("arrival" in leaf and "key" in leaf for leaf in leaves)
    assert audit(entries_url, f"{base}/order-seed") == 0
    out = capsys.readouterr().out
    assert f"Tier 1's draw: granted {PLACES - QUIET}, waived {QUIET}" in out
    assert "exceptions 0" in out
    # A forger reorders the log's grants: the first and the last trade holders (each key
    # still matches its alias; only who went first changed).
    grants = [leaf for leaf in leaves if leaf["kind"] == "tier1-grant"]
    for name in ("place", "arrival", "key"):
        grants[0][name], grants[-1][name] = grants[-1][name], grants[0][name]
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({"entries": leaves}))
    assert audit(str(forged), f"{base}/order-seed") == 1
    assert "exception (passed_over)" in capsys.readouterr().err


def test_a_draw_that_does_not_follow_the_keys_fails_the_audit(
    make_vwr: Callable[[VwrSettings], Any],
    vwr_settings: VwrSettings,
    log_service: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A dishonest advancer grants the largest keys first and logs the truth about each key:
    the log shows the order it really granted in, and the audit names the reason."""
    honest = queueing.draw_key
    monkeypatch.setattr(
        queueing, "draw_key", lambda seed, request_id: (-honest(seed, request_id)[0], "")
    )
    event_id, sent = run_random_line(make_vwr, vwr_settings, log_service)
    publish_reveal(log_service, event_id)
    base = f"{log_service['base']}/v1/log/{event_id}"
    size = signed_size(log_service["base"], event_id, len(sent))
    assert audit(f"{base}/entries?start=0&end={size}", f"{base}/order-seed") == 1
    err = capsys.readouterr().err
    assert "exception (grant_order)" in err or "exception (passed_over)" in err
    assert "key_mismatch" not in err


def test_a_broker_outage_keeps_the_records_pending_and_never_stops_the_line(
    make_vwr: Callable[[VwrSettings], Any],
    vwr_settings: VwrSettings,
    log_service: dict[str, str],
) -> None:
    """Kafka down once the seed's commitment is out: the draw goes on, its records wait in
    order in the publisher and go out first once the broker answers (here: handed to a
    publisher on the live broker)."""
    vwr = make_vwr(with_grant_log(vwr_settings, log_service, timeout_s=5.0))
    event_id = f"t1{uuid.uuid4().hex[:8]}"
    body = {"isActive": True, "batchSize": 100, "queueMethod": "random", "orderSeed": SEED}
    assert vwr.admin("PUT", event_id, body).status == 201  # the commitment is acknowledged
    for _ in range(4):
        assert vwr.assign(event_id).status == 201
    stuck = vwr.runtime.grant_log
    # The broker goes away (the publisher's next connection goes to a dead address).
    stuck._kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    stuck._timeout_s = 1.0
    stuck._loop.run_until_complete(stuck._drop_producer())
    try:
        for _ in range(2):
            moved = vwr.admin("POST", f"{event_id}/advance", {"by": 2})
            assert moved.status == 200, moved.body
        assert vwr.status(event_id).body["servingCounter"] == 4
        pending = list(stuck.pending)
    finally:
        stuck.close()
    assert [record["seq"] for record in pending] == [1, 2, 3, 4]
    live = GrantLogPublisher(
        KafkaSettings(bootstrap_servers=log_service["bootstrap"]),
        log_service["topic"],
        timeout_s=20,
    )
    try:
        live.pending.extend(pending)
        assert live.publish([]) == 4
        assert live.pending == []
    finally:
        live.close()
    publish_reveal(log_service, event_id)
    revealer = make_vwr(with_grant_log(vwr_settings, log_service))
    try:
        assert reveal_tier1(revealer, event_id) == SEED
    finally:
        revealer.runtime.grant_log.close()
    base = f"{log_service['base']}/v1/log/{event_id}"
    assert signed_size(log_service["base"], event_id, 4) == 4
    assert audit(f"{base}/entries?start=0&end=4", f"{base}/order-seed") == 0


def test_tier1s_seed_is_committed_before_its_draw_and_revealed_only_after_the_line(
    make_vwr: Callable[[VwrSettings], Any],
    vwr_settings: VwrSettings,
    log_service: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Tier 1 draws its own seed (the operator passes none): its commitment is the first
    record of the event, the reveal is refused while the line is open, to non-admins and
    before anyone's turn came, and a stranger audits the draw from the log alone."""
    vwr = make_vwr(with_grant_log(vwr_settings, log_service))
    publisher = vwr.runtime.grant_log
    sent, _ = record_sent(publisher)
    event_id = f"t1{uuid.uuid4().hex[:8]}"
    reveal = f"/vwr/admin/events/{event_id}/order-seed/reveal"
    try:
        opened = vwr.admin("PUT", event_id, {"isActive": True, "queueMethod": "random"})
        assert opened.status == 201, opened.body
        commitment = vwr.status(event_id).body["orderSeedCommitment"]
        assert [(r["type"], r["commitment"]) for r in sent] == [
            ("tier1_order_seed_committed", commitment)
        ]
        ids = [str(uuid.uuid4()) for _ in range(3)]
        for request_id in ids:
            assert vwr.assign(event_id, request_id).status == 201
        # Nobody but an admin reveals; an admin not while the room takes people.
        assert vwr.request("POST", reveal).status == 401
        user = {"Authorization": f"Bearer {vwr.user_token('u-1')}"}
        assert vwr.request("POST", reveal, headers=user).status == 403
        early = vwr.admin("POST", f"{event_id}/order-seed/reveal")
        assert (early.status, early.body["code"]) == (409, "seed_reveal_too_early")
        assert early.headers["content-type"].startswith("application/problem+json")
        # Closed, but three still wait: still too early.
        assert vwr.admin("PUT", event_id, {"isActive": False}).status == 200
        waiting = vwr.admin("POST", f"{event_id}/order-seed/reveal")
        assert (waiting.status, waiting.body["waiting"]) == (409, 3)
        assert vwr.admin("POST", f"{event_id}/advance", {"by": 3}).status == 200
        assert vwr.admin("POST", "bad id!/order-seed/reveal").status in (400, 404)
        first = vwr.admin("POST", f"{event_id}/order-seed/reveal")
        assert first.status == 200, first.body
        again = vwr.admin("POST", f"{event_id}/order-seed/reveal")
        assert again.body == first.body  # idempotent: the same seed, republished
        seed = first.body["orderSeed"]
        assert seed_commitment(bytes.fromhex(seed)) == commitment
        reopened = vwr.admin("PUT", event_id, {"isActive": True})
        assert (reopened.status, reopened.body["code"]) == (409, "order_seed_revealed")
    finally:
        publisher.close()
    kinds = [record["type"] for record in sent]
    assert kinds[0] == "tier1_order_seed_committed"
    assert kinds.count("tier1_granted") == 3
    assert kinds[-2:] == ["tier1_order_seed_revealed"] * 2
    base = f"{log_service['base']}/v1/log/{event_id}"
    size = signed_size(log_service["base"], event_id, 3)
    deadline = time.monotonic() + 20
    document: dict[str, Any] = {}
    while time.monotonic() < deadline and not document.get("revealed"):
        try:
            document = get_json(f"{base}/order-seed")
        except OSError:
            time.sleep(0.2)  # not stored yet (404)
    assert document["tier1"] | {"committedAt": "", "revealedAt": ""} == {
        "method": "random",
        "commitment": commitment,
        "seed": seed,
        "revealed": True,
        "committedAt": "",
        "revealedAt": "",
    }
    assert "commitment" not in document  # the queue published nothing for this event
    entries = f"{base}/entries?start=0&end={size}"
    assert audit(entries, f"{base}/order-seed") == 0
    assert "Tier 1's revealed seed matches its own commitment" in capsys.readouterr().out
    # A forger serves another seed (the draw's keys would then not match) under the same
    # commitment: the verifier names the reason.
    forged = tmp_path / "forged-seed.json"
    document["tier1"]["seed"] = "00" * 32
    forged.write_text(json.dumps(document))
    assert audit(entries, str(forged)) == 1
    assert "Tier 1's seed: the revealed seed does not hash to the commitment" in (
        capsys.readouterr().err
    )


def test_no_draw_runs_before_its_commitment_is_out(
    make_vwr: Callable[[VwrSettings], Any], vwr_settings: VwrSettings
) -> None:
    """The broker is down from the start: the room opens, but no draw runs (503, nothing
    granted) until the commitment reached the broker."""
    dead = vwr_settings.model_copy(
        update={
            "grant_log": GrantLogSettings(
                enabled=True,
                topic="queue-events",
                kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}"),
                timeout_s=1.0,
            )
        }
    )
    vwr = make_vwr(dead)
    event_id = f"t1{uuid.uuid4().hex[:8]}"
    try:
        body = {"isActive": True, "queueMethod": "random"}
        assert vwr.admin("PUT", event_id, body).status == 201
        for _ in range(2):
            assert vwr.assign(event_id).status == 201
        for _ in range(2):
            refused = vwr.admin("POST", f"{event_id}/advance", {"by": 2})
            assert (refused.status, refused.body["code"]) == (503, "seed_not_committed")
        assert vwr.status(event_id).body["servingCounter"] == 0
        # Kept once, to go first when the broker answers.
        assert [r["type"] for r in vwr.runtime.grant_log.pending] == ["tier1_order_seed_committed"]
    finally:
        vwr.runtime.grant_log.close()
