"""Whoever reaches the ticket service directly cannot act as a user.

Before issue 16 the ticket service believed ``X-User-Id`` from anyone who reached it: with the
victim's id (and an entry token it reads without verifying, as the gateway had checked it) a
direct caller held seats, reserved and cancelled in the victim's name. Now only the gateway's
signed assertion names the user; the catalog stays public.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from urr_common.identity import ASSERTION_HEADER
from urr_common.identity_testing import act_as, mint
from urr_common.settings import SettingsError, load_settings
from urr_common.tokens import SigningKey
from urr_ticket.settings import TicketSettings

FORGER = SigningKey.generate("entry-1")


def forged_entry_token(user_id: str) -> str:
    now = int(time.time())
    claims = {"sub": user_id, "evt": "demo", "iat": now, "exp": now + 600, "jti": "f"}
    return jwt.encode(claims, FORGER.private_key, algorithm="ES256", headers={"kid": "entry-1"})


async def test_x_user_id_holds_no_seat_and_reads_no_reservation(client: Any) -> None:
    liar = {"X-User-Id": "victim", "X-User-Role": "user"}
    session = {**liar, "x-queue-entry-token": forged_entry_token("victim")}
    for method, path in (
        ("POST", "/api/v1/seats/demo/A1/hold"),
        ("DELETE", "/api/v1/seats/demo/A1/hold"),
        ("POST", "/api/v1/reservations/demo"),
        ("GET", "/api/v1/reservations/demo/00000000-0000-4000-8000-000000000000"),
    ):
        answer = await client.request(method, path, headers=session, json={"seatIds": ["A1"]})
        assert answer.status == 401, (method, path, await answer.text())
        assert answer.content_type == "application/problem+json"
        assert (await answer.json())["code"] == "identity_required"
    seats = await (await client.get("/api/v1/seats/demo")).json()
    assert all(seat.get("heldByYou") is not True for seat in seats["seats"])
    # The catalog is public by design: no assertion needed.
    assert (await client.get("/api/v1/events/demo")).status == 200


async def test_an_assertion_for_the_queue_or_another_path_is_refused(client: Any) -> None:
    path = "/api/v1/seats/demo/A2/hold"
    for token in (
        mint("victim", "user", audience="queue", method="POST", path=path),
        mint("victim", "user", audience="ticket", method="POST", path="/api/v1/seats/demo/A3/hold"),
    ):
        answer = await client.post(path, headers={ASSERTION_HEADER: token})
        assert answer.status == 401
        assert (await answer.json())["code"] == "invalid_identity"
    seats = await (await client.get("/api/v1/seats/demo", headers=act_as("victim"))).json()
    assert [seat["state"] for seat in seats["seats"] if seat["seatId"] == "A2"] == ["free"]


def test_the_new_settings_are_validated() -> None:
    with pytest.raises(SettingsError, match="URR_QUEUE_CREDENTIAL"):
        load_settings(TicketSettings, queue_credential={"name": "ticket"})
    with pytest.raises(SettingsError, match="URR_QUEUE_CREDENTIAL"):
        load_settings(TicketSettings, queue_credential={"name": "ticket", "secret": "short"})
    with pytest.raises(SettingsError, match="URR_IDENTITY__PUBLIC_KEY_FILES"):
        load_settings(TicketSettings, identity={"public_key_files": ["/nonexistent/gw.pem"]})
    settings = load_settings(TicketSettings)
    assert settings.queue_credential.headers() == {}
    assert settings.queue_completion.base_url == "http://127.0.0.1:5007"
