"""How long each booking consumer lets the broker hold an empty fetch: the stats consumer,
which no booking waits on, waits longer than the consumers on a booking's path."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from urr_ticket_worker import stats
from urr_ticket_worker.process import Heartbeat
from urr_ticket_worker.settings import ConsumerSettings, TicketWorkerSettings


def test_the_stats_consumer_waits_longer_than_the_booking_consumers() -> None:
    consumers = ConsumerSettings()
    assert consumers.fetch_max_wait_ms == 100
    assert consumers.stats_fetch_max_wait_ms == 1_000


@pytest.mark.parametrize("wait", [0, 10_001])
def test_the_stats_wait_is_bounded(wait: int) -> None:
    with pytest.raises(ValidationError):
        ConsumerSettings(stats_fetch_max_wait_ms=wait)


async def test_the_stats_loop_asks_for_its_own_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: dict[str, Any] = {}

    class Pool:
        async def close(self) -> None:
            pass

    async def connect(*_: Any) -> Pool:
        return Pool()

    async def consume(**options: Any) -> None:
        asked.update(options)

    monkeypatch.setattr(stats, "connect_postgres", connect)
    monkeypatch.setattr(stats, "consume", consume)
    settings = TicketWorkerSettings(
        consumers=ConsumerSettings(fetch_max_wait_ms=50, stats_fetch_max_wait_ms=2_500)
    )
    await stats.stats_loop(settings, CollectorRegistry())(asyncio.Event(), Heartbeat())
    assert asked["fetch_max_wait_ms"] == 2_500
    assert asked["group_id"] == settings.consumers.stats_group
