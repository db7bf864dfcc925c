"""Issue 19 "Bad input": every write path that could rewrite a logged entry, attacked.

The log is append-only: a redelivered ``queue-events`` record with other content, a second
append at an index already taken, a second head for a signed size, or a size bumped past the
stored leaves must leave every published answer as it was, and the next consistency proof must
still verify with urr-verify (the command-line tool, as an outsider runs it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from urr_admission_log import heads, store
from urr_admission_log.consumer import LogMetrics, admissions_by_event, append_batch

pytestmark = pytest.mark.integration
EVENT = "concert-1"
SECRET = b"holder-secret-for-tests"
ISSUER = "urr-admission-log"


def _record(i: int, **changes: Any) -> bytes:
    record = {
        "id": f"rec-{i}",
        "type": "admitted",
        "eventId": EVENT,
        "userId": f"user-{i}",
        "queueNumber": i + 1,
        "at": 1_000 + i,
        **changes,
    }
    return orjson.dumps(record)


@pytest.fixture
def log(log: dict[str, Any]) -> dict[str, Any]:
    """The conftest's log (pool, key, client) and the consumer's metrics."""
    return {**log, "metrics": LogMetrics(CollectorRegistry())}


async def _consume(log: dict[str, Any], values: list[bytes]) -> None:
    """What the consumer does with one fetched batch, then one signer round."""
    metrics = log["metrics"]
    await append_batch(log["pool"], admissions_by_event(values, SECRET, metrics), metrics)
    async with log["pool"].acquire() as conn:
        await heads.sign_grown(conn, log["key"], ISSUER)


async def _json(client: TestClient[Any, Any], path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


def _urr_verify(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "urr-verify"), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


async def _published(log: dict[str, Any], tmp_path: Path, name: str) -> dict[str, Any]:
    """The latest head and all entries, as the public API answers them (saved for urr-verify)."""
    client = log["client"]
    sth = await _json(client, f"/v1/log/{EVENT}/sth")
    entries = await _json(client, f"/v1/log/{EVENT}/entries?start=0&end={sth['size']}")
    (tmp_path / f"{name}.json").write_text(json.dumps(sth))
    return {"sth": sth, "entries": entries["entries"]}


async def _consistent(log: dict[str, Any], tmp_path: Path, old: str, new: str) -> None:
    """urr-verify accepts the API's consistency proof between two saved heads."""
    client = log["client"]
    (tmp_path / "jwks.json").write_text(json.dumps(await _json(client, "/v1/log/jwks.json")))
    before = json.loads((tmp_path / f"{old}.json").read_text())
    after = json.loads((tmp_path / f"{new}.json").read_text())
    proof = await _json(
        client, f"/v1/log/{EVENT}/proof/consistency?from={before['size']}&to={after['size']}"
    )
    (tmp_path / "proof.json").write_text(json.dumps(proof))
    checked = _urr_verify(
        "consistency",
        "--event",
        EVENT,
        "--jwks",
        str(tmp_path / "jwks.json"),
        "--old",
        str(tmp_path / f"{old}.json"),
        "--new",
        str(tmp_path / f"{new}.json"),
        "--proof",
        str(tmp_path / "proof.json"),
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_a_redelivered_record_with_other_content_changes_nothing_logged(
    log: dict[str, Any], tmp_path: Path
) -> None:
    await _consume(log, [_record(i) for i in range(5)])
    before = await _published(log, tmp_path, "old")
    # The same record ids again, claiming other holders, numbers and times (a replayed or
    # forged record on the topic), with two new admissions behind them.
    await _consume(
        log,
        [
            _record(2, userId="mallory", queueNumber=1, at=1),
            _record(0, queueNumber=99),
            _record(5),
            _record(6),
        ],
    )
    after = await _published(log, tmp_path, "new")
    assert after["entries"][:5] == before["entries"]
    assert [entry["ticket"] for entry in after["entries"]] == [1, 2, 3, 4, 5, 6, 7]
    records = log["metrics"].records
    assert records.labels("duplicate")._value.get() == 2
    assert after["sth"]["size"] == 7
    await _consistent(log, tmp_path, "old", "new")


async def test_a_second_write_at_a_taken_index_is_refused(
    log: dict[str, Any], tmp_path: Path
) -> None:
    await _consume(log, [_record(i) for i in range(4)])
    before = await _published(log, tmp_path, "old")
    async with log["pool"].acquire() as conn:
        root = await store.root(conn, EVENT, 4)
        for insert, args in (
            (
                "INSERT INTO admission_log_entries (event_id, idx, leaf, record_id)"
                " VALUES ($1, 2, $2, 'forged-2')",
                [EVENT, b'{"kind":"admit","ticket":1}'],
            ),
            (
                "INSERT INTO admission_log_nodes (event_id, level, idx, hash)"
                " VALUES ($1, 0, 2, $2)",
                [EVENT, bytes(32)],
            ),
            (
                "INSERT INTO admission_log_heads (event_id, size, root, sth)"
                " VALUES ($1, 4, $2, 'forged')",
                [EVENT, bytes(32)],
            ),
        ):
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(insert, *args)
        # A signer round with nothing new signs nothing, and never a second head for a size.
        assert await heads.sign_grown(conn, log["key"], ISSUER) == []
        assert await store.root(conn, EVENT, 4) == root
    assert await _published(log, tmp_path, "same") == before
    await _consume(log, [_record(4)])
    await _published(log, tmp_path, "new")
    await _consistent(log, tmp_path, "old", "new")


async def test_a_size_bumped_past_the_stored_leaves_stops_appends_and_signing(
    log: dict[str, Any], tmp_path: Path
) -> None:
    """The size may only grow (trigger), so an operator could raise it by hand: the log then
    refuses to append or sign over leaves it does not hold, loudly, instead of publishing a
    tree with holes."""
    await _consume(log, [_record(i) for i in range(3)])
    before = await _published(log, tmp_path, "old")
    async with log["pool"].acquire() as conn:
        await conn.execute("UPDATE admission_log_sizes SET size = 8 WHERE event_id = $1", EVENT)
        with pytest.raises(RuntimeError, match="lacks stored nodes"):
            await store.append(conn, EVENT, [store.Record("rec-3", b'{"x":1}')])
        with pytest.raises(RuntimeError, match="lacks stored nodes"):
            await heads.sign_grown(conn, log["key"], ISSUER)
    assert await _published(log, tmp_path, "same") == before
