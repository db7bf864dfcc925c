"""The series the admission-log alerts and canary gate read move when the log does.

``UrrAdmissionLogStalled`` reads ``urr_admission_log_records_total{outcome="appended"}``,
``UrrAdmissionLogHeadStale`` the gap between the last append and the last signed head, and the
canary analysis the failures and malformed records of the new pods.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
from prometheus_client import CollectorRegistry

from urr_admission_log import store
from urr_admission_log.consumer import LogMetrics, admissions_by_event, append_batch, sign_heads
from urr_admission_log.settings import AdmissionLogSettings
from urr_common.tokens import SigningKey

pytestmark = pytest.mark.integration
SECRET = b"holder-secret-for-tests"


@pytest.fixture
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    assert pool is not None
    await store.migrate(pool)
    try:
        yield pool
    finally:
        await pool.close()


def _values(n: int) -> list[bytes | None]:
    admitted = [
        orjson.dumps(
            {
                "id": f"rec-{i}",
                "type": "admitted",
                "eventId": "concert-1",
                "userId": f"user-{i}",
                "queueNumber": i + 1,
                "at": 1_000 + i,
            }
        )
        for i in range(n)
    ]
    return [*admitted, b"{not json", orjson.dumps({"type": "left", "eventId": "concert-1"})]


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_appends_and_signed_heads_move_the_series_the_alerts_read(
    pool: asyncpg.Pool,
) -> None:
    registry = CollectorRegistry()
    metrics = LogMetrics(registry)
    assert _sample(registry, "urr_admission_log_last_head_timestamp_seconds") == 0.0
    before = time.time()
    grouped = admissions_by_event(_values(5), SECRET, metrics)
    await append_batch(pool, grouped, metrics)
    await append_batch(pool, admissions_by_event(_values(5), SECRET, metrics), metrics)
    records = "urr_admission_log_records_total"
    assert _sample(registry, records, outcome="appended") == 5
    assert _sample(registry, records, outcome="duplicate") == 5
    assert _sample(registry, records, outcome="malformed") == 2
    assert _sample(registry, records, outcome="ignored") == 2
    appended_at = _sample(registry, "urr_admission_log_last_append_timestamp_seconds")
    assert appended_at >= int(before)

    # Appended but not yet signed: the gap UrrAdmissionLogHeadStale measures is open.
    assert _sample(registry, "urr_admission_log_last_head_timestamp_seconds") < appended_at
    settings = AdmissionLogSettings(admission_log={"sign_every_s": 0.05})
    stop = asyncio.Event()
    signer = asyncio.create_task(
        sign_heads(settings, pool, SigningKey.generate("log-1"), metrics, stop)
    )
    async with asyncio.timeout(10):
        # The signer's counter is all there is to wait on.
        while _sample(registry, "urr_admission_log_heads_signed_total") < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    signed_at = _sample(registry, "urr_admission_log_last_head_timestamp_seconds")
    assert signed_at >= appended_at
    # Nothing new to sign: the head time stays put (it dates the last head, not the loop).
    await asyncio.sleep(0.2)
    assert _sample(registry, "urr_admission_log_last_head_timestamp_seconds") == signed_at
    stop.set()
    await asyncio.wait_for(signer, 5)
    assert _sample(registry, "urr_admission_log_failures_total", loop="signer") == 0
