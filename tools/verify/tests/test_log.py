"""Receipts, tree heads and the whole-event audit, from published documents only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from urr_verify.__main__ import main
from urr_verify.log import ReceiptError, audit_order, canonical, verify_receipt
from urr_verify.merkle import leaf_hash
from urr_verify.reference import mth, path, proof

EVENT = "concert-1"


def _key(kid: str) -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    private = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    return private, {**public, "kid": kid, "alg": "ES256", "use": "sig"}


def _admissions(n: int) -> list[dict[str, Any]]:
    return [
        {
            "kind": "admit",
            "event": EVENT,
            "seq": i,
            "ticket": i + 1,
            "at": 1000 + i,
            "who": f"{i:064x}",
        }
        for i in range(n)
    ]


def _sth(private: ec.EllipticCurvePrivateKey, kid: str, size: int, root: bytes) -> str:
    claims = {
        "iss": "urr-log",
        "sub": EVENT,
        "size": size,
        "root": root.hex(),
        "iat": int(time.time()),
    }
    return jwt.encode(claims, private, algorithm="ES256", headers={"kid": kid})


@pytest.fixture
def log() -> dict[str, Any]:
    private, jwk = _key("log-1")
    leaves = _admissions(7)
    data = [canonical(leaf) for leaf in leaves]
    sth = _sth(private, "log-1", 7, mth(data))
    receipt = {
        "eventId": EVENT,
        "leafIndex": 3,
        "leaf": leaves[3],
        "inclusionProof": [h.hex() for h in path(3, data)],
        "sth": sth,
    }
    return {"private": private, "jwks": {"keys": [jwk]}, "data": data, "receipt": receipt}


def test_a_buyers_receipt_verifies(log: dict[str, Any]) -> None:
    head = verify_receipt(log["receipt"], log["jwks"])
    assert (head.event_id, head.size) == (EVENT, 7)
    assert leaf_hash(log["data"][3]) == leaf_hash(canonical(log["receipt"]["leaf"]))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r["leaf"].update(ticket=1), "not in the signed tree"),
        (lambda r: r.update(leafIndex=2), "not in the signed tree"),
        (lambda r: r.update(leafIndex=7), "outside"),
        (lambda r: r["inclusionProof"].pop(), "not in the signed tree"),
        (lambda r: r.update(eventId="other"), "not an entry of its event"),
        (lambda r: r.update(sth=r["sth"][:-4] + "AAAA"), "signature"),
        (lambda r: r.pop("sth"), "malformed"),
        (lambda r: r.update(inclusionProof=["zz"]), "malformed"),
    ],
)
def test_a_tampered_receipt_fails_and_says_why(
    log: dict[str, Any], change: Any, reason: str
) -> None:
    receipt = json.loads(json.dumps(log["receipt"]))
    change(receipt)
    with pytest.raises(ReceiptError, match=reason):
        verify_receipt(receipt, log["jwks"])


def test_a_tree_head_signed_by_a_key_the_log_does_not_publish_fails(log: dict[str, Any]) -> None:
    forger, _ = _key("log-1")
    receipt = {**log["receipt"], "sth": _sth(forger, "log-1", 7, mth(log["data"]))}
    with pytest.raises(ReceiptError, match="signature"):
        verify_receipt(receipt, log["jwks"])
    unknown = {**log["receipt"], "sth": _sth(forger, "log-9", 7, mth(log["data"]))}
    with pytest.raises(ReceiptError, match="does not hold"):
        verify_receipt(unknown, log["jwks"])


def test_admissions_in_ticket_order_audit_clean() -> None:
    report = audit_order(_admissions(50))
    assert (report.admitted, report.exceptions) == (50, [])


def test_numbers_never_presented_are_no_exception() -> None:
    entries = [e for e in _admissions(10) if e["ticket"] not in (3, 7)]
    assert audit_order(entries).exceptions == []


def test_an_overtaken_ticket_is_an_exception_unless_a_waiver_came_first() -> None:
    entries = _admissions(5)
    late = entries.pop(1)  # ticket 2 admitted last, behind 3, 4 and 5
    report = audit_order([*entries, {**late, "seq": 9}])
    assert [(e.ticket, e.overtaken_by) for e in report.exceptions] == [(2, 3)]
    waiver = {
        "kind": "waive",
        "event": EVENT,
        "seq": 5,
        "ticket": 2,
        "at": 0,
        "reason": "order_hold",
    }
    report = audit_order([*entries, waiver, {**late, "seq": 9}])
    assert (report.exceptions, report.explained, report.waived) == ([], 1, 1)


def test_a_prequeue_order_is_audited_by_rank_then_arrivals_behind_it() -> None:
    shuffled = [3, 1, 2]
    entries = [
        {"kind": "admit", "event": EVENT, "seq": i, "ticket": t}
        for i, t in enumerate([3, 1, 2, 4, 5])
    ]
    assert audit_order(entries, shuffled).exceptions == []
    wrong = [{"kind": "admit", "event": EVENT, "ticket": t} for t in [1, 3, 2]]
    assert [e.ticket for e in audit_order(wrong, shuffled).exceptions] == [3]


def _write(tmp_path: Path, name: str, document: Any) -> str:
    target = tmp_path / name
    target.write_text(json.dumps(document), encoding="utf-8")
    return str(target)


def test_the_command_verifies_a_receipt_and_a_consistency_proof(
    log: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jwks = _write(tmp_path, "jwks.json", log["jwks"])
    assert main(["receipt", _write(tmp_path, "r.json", log["receipt"]), "--jwks", jwks]) == 0
    assert "is in concert-1's log of 7 entries" in capsys.readouterr().out
    data = log["data"]
    old = _write(tmp_path, "old.json", {"sth": _sth(log["private"], "log-1", 4, mth(data[:4]))})
    new = _write(tmp_path, "new.json", {"sth": log["receipt"]["sth"]})
    good = _write(tmp_path, "p.json", {"proof": [h.hex() for h in proof(4, data)]})
    args = ["consistency", "--event", EVENT, "--jwks", jwks, "--old", old, "--new", new]
    assert main([*args, "--proof", good]) == 0
    # The log rewrites entry 2 and signs a head over the result: no proof links it to the old.
    rewritten = [*data[:2], b"rewritten", *data[3:]]
    forged_head = _write(
        tmp_path, "f.json", {"sth": _sth(log["private"], "log-1", 7, mth(rewritten))}
    )
    bad = _write(tmp_path, "b.json", {"proof": [h.hex() for h in proof(4, rewritten)]})
    args[-1] = forged_head
    assert main([*args, "--proof", bad]) == 1
    assert main([*args, "--proof", good]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_the_command_audits_and_reports_each_exception(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = _admissions(4)
    entries.append(entries.pop(0))
    assert main(["audit", _write(tmp_path, "e.json", {"entries": entries})]) == 1
    assert "exception: admission 3 (ticket 1) came after 3 tickets" in capsys.readouterr().err
    assert main(["audit", _write(tmp_path, "bad.json", [{"kind": "admit"}])]) == 2
    assert main(["audit", str(tmp_path / "missing.json")]) == 2
