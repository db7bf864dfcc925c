"""The loadtest's log audit: urr-verify's real verdicts parsed and decided, then the whole
check against a real admission log API on PostgreSQL (no stack, no crowd)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from urr_admission_log import heads, store
from urr_admission_log.app import create_app
from urr_admission_log.leaves import admission_of
from urr_admission_log.settings import AdmissionLogSettings
from urr_common.tokens import KeySet, SigningKey
from urr_devstack.procs import free_port
from urr_loadtests import log_audit

SECRET = b"holder-secret-for-tests"


def _leaf(ticket: int, kind: str = "admit") -> dict[str, Any]:
    leaf: dict[str, Any] = {"kind": kind, "event": "e1", "ticket": ticket, "at": 1_000 + ticket}
    if kind == "admit":
        leaf["who"] = "ab" * 32
    else:
        leaf["reason"] = "abandoned"
    return leaf


def _audit(tmp_path: Path, entries: Any) -> dict[str, Any]:
    path = tmp_path / "entries.json"
    path.write_text(entries if isinstance(entries, str) else json.dumps({"entries": entries}))
    done = subprocess.run(
        [*log_audit.verifier(), "audit", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return log_audit.parse_audit(done.returncode, done.stdout, done.stderr)


def _passed(audit: dict[str, Any], logged: int) -> dict[str, Any]:
    receipts = [{"leaf": 0, "exit_code": 0, "output": "ok"}]
    return {"logged": logged, "audit": audit, "receipts": receipts}


def test_urr_verify_s_verdicts_are_read_and_decided(tmp_path: Path) -> None:
    in_order = _audit(tmp_path, [_leaf(1), _leaf(2), _leaf(4)])
    assert in_order["exit_code"] == 0
    assert (in_order["admitted"], in_order["unexplained"], in_order["exceptions"]) == (3, 0, [])
    assert log_audit.decide(_passed(in_order, 3), expected=3) == []

    # Ticket 2 let in after 3 with no waiver: one exception, the loadtest fails.
    overtaken = _audit(tmp_path, [_leaf(1), _leaf(3), _leaf(2)])
    assert (overtaken["exit_code"], overtaken["unexplained"]) == (1, 1)
    assert overtaken["exceptions"] == [
        "exception: admission 2 (ticket 2) came after 1 tickets owed later, with no waiver logged"
    ]
    (missed,) = log_audit.decide(_passed(overtaken, 3), expected=3)
    assert "1 admissions out of owed order with no waiver logged" in missed

    # The same, explained by a waiver logged before: passes.
    waived = _audit(tmp_path, [_leaf(1), _leaf(2, "waive"), _leaf(3), _leaf(2)])
    assert (waived["exit_code"], waived["explained"], waived["unexplained"]) == (0, 1, 0)
    assert log_audit.decide(_passed(waived, 4), expected=3) == []

    unusable = _audit(tmp_path, "{not json")
    assert unusable["exit_code"] == 2
    (missed,) = log_audit.decide(_passed(unusable, 3), expected=3)
    assert "could not read the entries" in missed


def test_a_short_log_a_bad_receipt_or_no_log_fail_the_check(tmp_path: Path) -> None:
    ok = _audit(tmp_path, [_leaf(1), _leaf(2)])
    assert log_audit.decide(_passed(ok, 2), expected=5) == [
        "log audit: the signed log holds 2 of 5 admissions"
    ]
    bad_receipt = {**_passed(ok, 2), "receipts": [{"leaf": 1, "exit_code": 1, "output": "F"}]}
    assert log_audit.decide(bad_receipt, expected=2) == [
        "log audit: the receipt of leaf 1 does not verify: F"
    ]
    assert log_audit.decide({"no_log": "no signed tree head"}, expected=2) == [
        "log audit: no signed tree head"
    ]
    assert log_audit.decide({"logged": 2, "receipts": []}, expected=2) == [
        "log audit: urr-verify audit did not run"
    ]
    no_verdict = {**_passed({"exit_code": 1, "exceptions": []}, 2)}
    assert log_audit.decide(no_verdict, expected=2) == [
        "log audit: urr-verify audit gave no verdict (exit 1)"
    ]


# Against the real log API ---------------------------------------------------------------------


@pytest.fixture
async def log_api(postgres_dsn: str) -> AsyncIterator[dict[str, Any]]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    assert pool is not None
    await store.migrate(pool)
    key = SigningKey.generate("log-1")
    runner = web.AppRunner(
        create_app(AdmissionLogSettings(), pool, KeySet([key.verification_key()]))
    )
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield {"pool": pool, "key": key, "base": f"http://127.0.0.1:{port}"}
    finally:
        await runner.cleanup()
        await pool.close()


async def _admit(api: dict[str, Any], event_id: str, numbers: list[int]) -> None:
    records = [
        {
            "id": f"{event_id}-{number}",
            "type": "admitted",
            "eventId": event_id,
            "userId": f"user-{number}",
            "queueNumber": number,
            "at": 1_000 + index,
        }
        for index, number in enumerate(numbers)
    ]
    admissions = [a for a in (admission_of(r, SECRET) for r in records) if a is not None]
    async with api["pool"].acquire() as conn:
        await store.append(
            conn, event_id, [store.Record(a.record_id, a.encoded()) for a in admissions]
        )
        await heads.sign_grown(conn, api["key"], "urr-admission-log")


@pytest.mark.integration
async def test_the_check_reads_the_public_api_and_runs_urr_verify(
    log_api: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_audit, "PAGE", 4)  # several pages, in order
    monkeypatch.setattr(log_audit, "CATCH_UP_S", 1.5)
    await _admit(log_api, "fair", list(range(1, 11)))
    figures, missed = await asyncio.to_thread(
        log_audit.audit_event, log_api["base"], "fair", tmp_path / "fair", 10
    )
    assert missed == [], figures
    assert figures["logged"] == 10
    assert (figures["audit"]["admitted"], figures["audit"]["unexplained"]) == (10, 0)
    assert [r["leaf"] for r in figures["receipts"]] == [0, 9]
    assert all(r["exit_code"] == 0 for r in figures["receipts"]), figures["receipts"]
    saved = json.loads((tmp_path / "fair" / "entries.json").read_text())["entries"]
    assert [entry["ticket"] for entry in saved] == list(range(1, 11))

    # Number 3 overtaken by 4 and 5, and one admission the log never got.
    await _admit(log_api, "unfair", [1, 2, 4, 5, 3])
    figures, missed = await asyncio.to_thread(
        log_audit.audit_event, log_api["base"], "unfair", tmp_path / "unfair", 6
    )
    assert figures["audit"]["unexplained"] == 1
    assert missed == [
        "log audit: the signed log holds 5 of 6 admissions",
        "log audit: 1 admissions out of owed order with no waiver logged (urr-verify audit exit 1)",
    ]

    figures, missed = await asyncio.to_thread(
        log_audit.audit_event, log_api["base"], "nobody", tmp_path / "nobody", 3
    )
    assert len(missed) == 1
    assert missed[0].startswith("log audit: no signed tree head for the event (HTTP 404")
