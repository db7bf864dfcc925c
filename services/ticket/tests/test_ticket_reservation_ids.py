"""Reservation ids (issue 15): the same request still gets the same id, but the id is an HMAC
under a server key, so a client cannot compute it (the old uuid5-of-public-parts recipe no
longer matches) and re-holding cannot steer anything derived from it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from urr_common.identity_testing import act_as, as_gateway
from urr_common.settings import SettingsError, load_settings
from urr_ticket.app import AUDIENCE, create_app
from urr_ticket.commands import ReservationIds, keyed_uuid
from urr_ticket.settings import OutcomeSettings, ReservationIdSettings, TicketSettings

pytestmark = pytest.mark.integration
KEY = "k" * 40
#: The namespace and recipe of the ids before issue 15, as an attacker would re-implement them.
OLD_NAMESPACE = uuid.UUID("5c0f3e2a-8d7b-4b8e-9a51-0d7c6a1e2f44")


def old_recipe(event_id: str, user_id: str, holds: list[tuple[str, str]]) -> uuid.UUID:
    basis = "\n".join([event_id, user_id, *sorted(f"{seat}:{hold}" for seat, hold in holds)])
    return uuid.uuid5(OLD_NAMESPACE, basis)


def keyed(settings: TicketSettings, key: str = KEY) -> TicketSettings:
    return settings.model_copy(
        update={"reservation_ids": ReservationIdSettings(key=SecretStr(key))}
    )


def user(user_id: str) -> dict[str, str]:
    return act_as(user_id)


async def reserve(client: Any, user_id: str, seats: list[str]) -> str:
    response = await client.post(
        "/api/v1/reservations/demo", json={"seatIds": seats}, headers=user(user_id)
    )
    assert response.status == 202, await response.text()
    return str((await response.json())["reservationId"])


async def test_a_client_cannot_predict_its_reservation_id(
    aiohttp_client: Any, settings: TicketSettings
) -> None:
    client = await aiohttp_client(
        create_app(keyed(settings), registry=CollectorRegistry()),
        middlewares=(as_gateway(AUDIENCE),),
    )
    held = await (await client.post("/api/v1/seats/demo/A1/hold", headers=user("u1"))).json()
    # Everything the old recipe needed is public to the client: event, user, seat, hold id.
    predicted = old_recipe("demo", "u1", [("A1", held["holdId"])])
    first = await reserve(client, "u1", ["A1"])
    assert first != str(predicted)
    assert uuid.UUID(first).version == 8
    # Repeating the request is still the same reservation.
    assert await reserve(client, "u1", ["A1"]) == first
    # Another replica with the same key agrees; one with another key does not.
    replica = await aiohttp_client(
        create_app(keyed(settings), registry=CollectorRegistry()),
        middlewares=(as_gateway(AUDIENCE),),
    )
    assert await reserve(replica, "u1", ["A1"]) == first
    stranger = await aiohttp_client(
        create_app(keyed(settings, "z" * 40), registry=CollectorRegistry()),
        middlewares=(as_gateway(AUDIENCE),),
    )
    assert await reserve(stranger, "u1", ["A1"]) != first


def test_keyed_ids_are_stable_per_key_and_request() -> None:
    ids = ReservationIds(KEY.encode())
    holds = [("A1", "h1"), ("A2", "h2")]
    assert ids.for_request("demo", "u1", holds) == ids.for_request("demo", "u1", holds[::-1])
    assert ids.for_request("demo", "u1", holds) != ids.for_request("demo", "u2", holds)
    assert ids.for_request("demo", "u1", holds) != ReservationIds(b"z" * 32).for_request(
        "demo", "u1", holds
    )
    made = keyed_uuid(b"0" * 32, "basis")
    assert made.version == 8
    assert made.variant == uuid.RFC_4122
    # Unset in local and test: a random key per process, so two processes differ.
    unset = ReservationIdSettings()
    assert ReservationIds.from_settings(unset).for_request(
        "demo", "u1", holds
    ) != ReservationIds.from_settings(unset).for_request("demo", "u1", holds)
    with pytest.raises(ValueError, match="16 bytes"):
        ReservationIds(b"short")


def test_the_reservation_key_is_validated_at_start_up(settings: TicketSettings) -> None:
    with pytest.raises(SettingsError, match="URR_RESERVATION_IDS__KEY"):
        load_settings(TicketSettings, reservation_ids={"key": "too-short"})
    # Missing outside local and test: the API refuses to start (the key comes from a Secret,
    # so it is checked where the process uses it).
    for environment in ("staging", "prod"):
        missing = settings.model_copy(update={"environment": environment})
        with pytest.raises(SettingsError, match="URR_RESERVATION_IDS__KEY"):
            create_app(missing, registry=CollectorRegistry())
        assert create_app(keyed(missing), registry=CollectorRegistry()) is not None
    assert load_settings(TicketSettings).reservation_ids.key is None  # local: generated
    assert create_app(settings, registry=CollectorRegistry()) is not None
    # The outcome consumer derives no ids and loads without a key anywhere.
    assert load_settings(OutcomeSettings, environment="prod").reservation_ids.key is None


def test_the_api_process_exits_with_the_message_when_the_key_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from urr_ticket.__main__ import main

    monkeypatch.setenv("URR_ENVIRONMENT", "prod")
    monkeypatch.delenv("URR_RESERVATION_IDS__KEY", raising=False)
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "URR_RESERVATION_IDS__KEY" in capsys.readouterr().err
