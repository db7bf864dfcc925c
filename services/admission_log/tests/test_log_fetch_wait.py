"""The admission log's consumer lets the broker hold an empty fetch as long as its settings
say (it was fixed at 200 ms in the code): auditors read the log, no visitor waits on it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from urr_admission_log.consumer import LogMetrics, consume
from urr_admission_log.settings import AdmissionLogSettings, LogOptions
from urr_common import clients


def test_the_default_wait_is_a_second() -> None:
    assert LogOptions().fetch_max_wait_ms == 1_000


@pytest.mark.parametrize("wait", [0, 10_001])
def test_the_wait_is_bounded(wait: int) -> None:
    with pytest.raises(ValidationError):
        LogOptions(fetch_max_wait_ms=wait)


async def test_the_consumer_asks_for_the_configured_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: dict[str, Any] = {}
    stop = asyncio.Event()

    class Consumer:
        async def start(self) -> None:
            stop.set()  # one round is enough
            raise ConnectionError("no broker in this test")

        async def stop(self) -> None:
            pass

    def kafka_consumer(_settings: Any, *topics: str, **options: Any) -> Consumer:
        asked.update(options, topics=topics)
        return Consumer()

    monkeypatch.setattr(clients, "kafka_consumer", kafka_consumer)
    settings = AdmissionLogSettings(admission_log={"fetch_max_wait_ms": 1_500})
    await consume(settings, None, LogMetrics(CollectorRegistry()), stop)  # type: ignore[arg-type]
    assert asked["fetch_max_wait_ms"] == 1_500
    assert asked["topics"] == ("queue-events",)
