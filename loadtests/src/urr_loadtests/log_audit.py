"""The crowd's admissions checked as a stranger would: the public log API and ``urr-verify``.

After the crowd, the event's admission log is read through the gateway's public ``/v1/log``
routes (the latest signed tree head, the log's JWKS, every entry in pages, the receipts of the
first and last entries) into files, and ``urr-verify`` is run on them as a process of its own:
the verifier is a separate tool a buyer installs alone, so nothing of it is imported here.
The crowd check passes when ``urr-verify audit`` finds no admission out of the owed order
without a logged waiver, both receipts verify under the signed head, and the signed log holds
every admission the queue published.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from urr_loadtests.setup import http

#: Most entries one ``/entries`` answer carries (the log's ``max_page`` default).
PAGE = 1000
#: How long the log gets to append and sign the last admissions (it signs every 2 s).
CATCH_UP_S = 45.0
_VERDICT = re.compile(
    r"admitted (\d+), waived (\d+), explained by a waiver (\d+), unexplained (\d+)"
)

Fetch = Callable[[str], tuple[int, Any]]


def _get(url: str) -> tuple[int, Any]:
    """GET with a few retries on 429/503 (the gateway may still be shedding the crowd)."""
    for attempt in range(5):
        status, body = http("GET", url, timeout=15)
        if status not in (429, 503):
            return status, body
        time.sleep(0.5 * (attempt + 1))
    return status, body


def verifier() -> list[str]:
    """The ``urr-verify`` command: the script next to this interpreter, else on PATH, else
    the module run by this interpreter (the same tool either way)."""
    beside = Path(sys.executable).parent / "urr-verify"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("urr-verify")
    return [found] if found else [sys.executable, "-m", "urr_verify"]


def parse_audit(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    """``urr-verify audit``'s verdict: its exit code, counts and the exceptions it listed."""
    text = f"{stdout}\n{stderr}"
    figures: dict[str, Any] = {"exit_code": returncode}
    match = _VERDICT.search(text)
    if match:
        admitted, waived, explained, unexplained = (int(group) for group in match.groups())
        figures.update(
            admitted=admitted, waived=waived, explained=explained, unexplained=unexplained
        )
    exceptions = [line.strip() for line in text.splitlines() if line.startswith("exception:")]
    figures["exceptions"] = exceptions[:10]
    if returncode == 2:
        figures["unusable"] = text.strip()[-500:]
    return figures


def decide(figures: dict[str, Any], expected: int) -> list[str]:
    """The crowd targets the log audit misses (empty: passed).

    ``expected``: admissions the queue published for the event (read back from Kafka).
    """
    missed: list[str] = []
    logged = int(figures.get("logged", 0))
    if figures.get("no_log"):
        missed.append(f"log audit: {figures['no_log']}")
        return missed
    if logged < expected:
        missed.append(f"log audit: the signed log holds {logged} of {expected} admissions")
    audit = figures.get("audit")
    if audit is None:
        missed.append("log audit: urr-verify audit did not run")
    elif "unusable" in audit:
        missed.append(
            f"log audit: urr-verify audit could not read the entries: {audit['unusable']}"
        )
    elif "unexplained" not in audit:
        missed.append(f"log audit: urr-verify audit gave no verdict (exit {audit['exit_code']})")
    elif audit["unexplained"] or audit["exit_code"] != 0:
        missed.append(
            f"log audit: {audit['unexplained']} admissions out of owed order with no waiver"
            f" logged (urr-verify audit exit {audit['exit_code']})"
        )
    elif audit["admitted"] + audit["waived"] != logged:
        missed.append(f"log audit: urr-verify audited {audit['admitted']} of {logged} entries")
    for receipt in figures.get("receipts", []):
        if receipt["exit_code"] != 0:
            missed.append(
                f"log audit: the receipt of leaf {receipt['leaf']} does not verify:"
                f" {receipt['output']}"
            )
    return missed


def fetch_log(
    base: str, event_id: str, folder: Path, expected: int, fetch: Fetch = _get
) -> dict[str, Any]:
    """Wait for a signed head covering ``expected`` admissions, then save the public documents.

    Writes ``sth.json``, ``jwks.json``, ``entries.json`` (``{"entries": [...]}``, log order)
    and ``receipt-<leaf>.json`` for the first and last leaf into ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    log = f"{base}/v1/log"
    deadline = time.monotonic() + CATCH_UP_S
    status, head = fetch(f"{log}/{event_id}/sth")
    while time.monotonic() < deadline and (status != 200 or int(head["size"]) < expected):
        time.sleep(1.0)
        status, head = fetch(f"{log}/{event_id}/sth")
    if status != 200:
        return {"no_log": f"no signed tree head for the event (HTTP {status}: {head})"}
    size = int(head["size"])
    status, jwks = fetch(f"{log}/jwks.json")
    if status != 200:
        return {"no_log": f"the log's keys are not published (HTTP {status})"}
    entries: list[Any] = []
    for start in range(0, size, PAGE):
        end = min(size, start + PAGE)
        status, page = fetch(f"{log}/{event_id}/entries?start={start}&end={end}")
        if status != 200:
            return {"no_log": f"entries {start}-{end} answered HTTP {status}: {page}"}
        entries += page["entries"]
    (folder / "sth.json").write_text(json.dumps(head))
    (folder / "jwks.json").write_text(json.dumps(jwks))
    (folder / "entries.json").write_text(json.dumps({"entries": entries}))
    receipts = []
    for leaf in sorted({0, size - 1}) if size else []:
        status, receipt = fetch(f"{log}/{event_id}/receipt?leaf={leaf}")
        path = folder / f"receipt-{leaf}.json"
        path.write_text(json.dumps(receipt))
        receipts.append({"leaf": leaf, "path": str(path), "status": status})
    return {"logged": size, "root": head.get("root"), "receipts": receipts}


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    # The verifier is a stranger's tool: none of the stack's settings reach it.
    env = {key: value for key, value in os.environ.items() if not key.startswith("URR_")}
    return subprocess.run(  # noqa: S603 - our own verifier, arguments are our files
        [*verifier(), *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def verify(folder: Path, figures: dict[str, Any]) -> dict[str, Any]:
    """Run ``urr-verify audit`` on the saved entries and ``receipt`` on the saved receipts."""
    if "no_log" in figures:
        return figures
    done = _run(["audit", str(folder / "entries.json")])
    figures["audit"] = parse_audit(done.returncode, done.stdout, done.stderr)
    for receipt in figures["receipts"]:
        checked = _run(["receipt", receipt["path"], "--jwks", str(folder / "jwks.json")])
        receipt["exit_code"] = checked.returncode
        receipt["output"] = (checked.stdout + checked.stderr).strip()[-300:]
    return figures


def audit_event(
    base: str, event_id: str, folder: Path, expected: int
) -> tuple[dict[str, Any], list[str]]:
    """The whole crowd check: fetch through ``base`` (the gateway), verify, decide."""
    figures = verify(folder, fetch_log(base, event_id, folder, expected))
    figures["expected"] = expected
    return figures, decide(figures, expected)
