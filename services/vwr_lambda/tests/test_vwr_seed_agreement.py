"""One seed for both tiers (issue 19), checked from what each publishes: Tier 1's public status
(``orderSeedCommitment``, the real handlers on dynalite) against the admission log's
``/v1/log/{e}/order-seed`` (the queue's own ``order_seed_committed`` / ``_revealed`` records
through the log's consumer code on real PostgreSQL), with ``urr-verify seed --tier1-status``.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient

from urr_admission_log import store
from urr_admission_log.app import create_app
from urr_admission_log.consumer import LogMetrics, order_seed_records, store_order_seeds
from urr_admission_log.settings import AdmissionLogSettings
from urr_common.tokens import KeySet
from urr_queue.order_seed import committed_record, revealed_record
from urr_verify.__main__ import main as verify_main

pytestmark = pytest.mark.integration
SEED = "6b" * 32


@pytest.fixture
async def log(postgres_dsn: str, aiohttp_client: AiohttpClient) -> AsyncIterator[Any]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    assert pool is not None
    await store.migrate(pool)
    client = await aiohttp_client(create_app(AdmissionLogSettings(), pool, KeySet([])))
    try:
        yield {"client": client, "pool": pool}
    finally:
        await pool.close()


async def _publish(log: Any, records: list[dict[str, Any]]) -> None:
    values = [orjson.dumps(record) for record in records]
    metrics = LogMetrics(CollectorRegistry())
    await store_order_seeds(log["pool"], order_seed_records(values), metrics)


def _verify(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = verify_main(list(argv))
    return code, out.getvalue() + err.getvalue()


async def test_both_tiers_publish_one_commitment(vwr: Any, log: Any, tmp_path: Path) -> None:
    same, other = "agree-1", "differ-1"
    for event, seed in ((same, SEED), (other, "7c" * 32)):
        opened = vwr.admin(
            "PUT", event, {"isActive": True, "queueMethod": "random", "orderSeed": seed}
        )
        assert opened.status == 201, opened.body
        (tmp_path / f"tier1-{event}.json").write_text(json.dumps(vwr.status(event).body))
        # Tier 2 was given SEED for both: the second operator slipped.
        await _publish(log, [committed_record(event, SEED)])
        document = await (await log["client"].get(f"/v1/log/{event}/order-seed")).json()
        (tmp_path / f"seed-{event}.json").write_text(json.dumps(document))

    code, said = _verify(
        "seed",
        str(tmp_path / f"seed-{same}.json"),
        "--tier1-status",
        str(tmp_path / f"tier1-{same}.json"),
    )
    assert code == 0, said
    assert "not revealed yet" in said
    code, said = _verify(
        "seed",
        str(tmp_path / f"seed-{other}.json"),
        "--tier1-status",
        str(tmp_path / f"tier1-{other}.json"),
    )
    assert code == 1
    assert "cannot be audited with the logged seed" in said

    # After the line: the revealed seed explains Tier 1's commitment too.
    await _publish(log, [revealed_record(same, SEED)])
    revealed = await (await log["client"].get(f"/v1/log/{same}/order-seed")).json()
    (tmp_path / "revealed.json").write_text(json.dumps(revealed))
    code, said = _verify(
        "seed",
        str(tmp_path / "revealed.json"),
        "--tier1-status",
        str(tmp_path / f"tier1-{same}.json"),
    )
    assert code == 0, said
    assert "hashes to the commitment" in said
