"""``urr-verify``: check URR's fairness data from public documents only.

Every input is a JSON document named by a path, ``-`` (standard input) or an http(s) URL
(e.g. the public log API's). Exit 0 when everything verifies, 1 when something does not (the
reason is printed), 2 on unusable input.

    urr-verify receipt RECEIPT --jwks JWKS [--seed ORDER_SEED --arrival-id ID]
    urr-verify consistency --jwks JWKS --old STH --new STH --proof PROOF
    urr-verify shuffle ROSTER                  # {"members", "root", "commitment", "secret"}
    urr-verify seed ORDER_SEED [--tier1-status STATUS]  # the random method's seed
    urr-verify audit ENTRIES [--order ORDER | --seed ORDER_SEED]  # the leaves, in log order
                                               # (with --seed, also Tier 1's random draw)
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections.abc import Sequence
from typing import Any

from urr_verify.log import (
    TIER1_KINDS,
    ReceiptError,
    audit_order,
    read_tree_head,
    verify_receipt,
)
from urr_verify.merkle import ProofError, verify_consistency
from urr_verify.random_order import SeedError, audit_random, check_own_key, revealed_seed
from urr_verify.shuffle import ShuffleError, verify_prequeue
from urr_verify.tier1 import Tier1Audit, audit_tier1

FETCH_TIMEOUT_S = 10.0


class InputError(ValueError):
    """An input could not be read as the JSON document it should be."""


def load(source: str) -> Any:
    try:
        if source == "-":
            return json.load(sys.stdin)
        if source.startswith(("http://", "https://")):
            with urllib.request.urlopen(source, timeout=FETCH_TIMEOUT_S) as answer:  # noqa: S310
                return json.load(answer)
        with open(source, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise InputError(f"{source}: {exc}") from exc


def _hex_list(value: Any, what: str) -> list[bytes]:
    items = value.get("proof") if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise InputError(f"{what} is not a list of hex hashes")
    try:
        return [bytes.fromhex(item) for item in items]
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} is not a list of hex hashes") from exc


def _hex(value: Any, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} is not hex") from exc


def _seed_document(source: str) -> Any:
    document = load(source)
    if not isinstance(document, dict):
        raise InputError("the order-seed document must be an object")
    return document


def cmd_receipt(args: argparse.Namespace) -> str:
    receipt = load(args.receipt)
    head = verify_receipt(receipt, load(args.jwks))
    done = (
        f"ok: the leaf is in {head.event_id}'s log of {head.size} entries (root {head.root.hex()})"
    )
    if (args.seed is None) != (args.arrival_id is None):
        raise InputError("--seed and --arrival-id go together")
    if args.seed is not None:
        seed = revealed_seed(_seed_document(args.seed))
        key = check_own_key(receipt["leaf"], seed, args.arrival_id)
        done += f"; its order key {key} is the one the revealed seed gives {args.arrival_id!r}"
    return done


def _sth(document: Any) -> str:
    token = document.get("sth") if isinstance(document, dict) else document
    if not isinstance(token, str):
        raise InputError("a tree head must be a JWT string or {'sth': JWT}")
    return token


def cmd_consistency(args: argparse.Namespace) -> str:
    jwks = load(args.jwks)
    old = read_tree_head(_sth(load(args.old)), jwks, args.event)
    new = read_tree_head(_sth(load(args.new)), jwks, args.event)
    verify_consistency(
        old.size, new.size, _hex_list(load(args.proof), "the proof"), old.root, new.root
    )
    return f"ok: the log of {new.size} entries extends the one of {old.size}"


def cmd_shuffle(args: argparse.Namespace) -> str:
    doc = load(args.roster)
    if not isinstance(doc, dict):
        raise InputError("the roster document must be an object")
    members = [_hex(member, "a roster member") for member in doc.get("members", [])]
    order = verify_prequeue(
        members,
        _hex(doc.get("root"), "root"),
        _hex(doc.get("commitment"), "commitment"),
        _hex(doc.get("secret"), "secret"),
    )
    return json.dumps({"order": [member.hex() for member in order]})


def cmd_seed(args: argparse.Namespace) -> str:
    """The random method's seed document: each revealed seed against its commitment, and the
    Tier-1 room's published commitment against the one the log holds for Tier 1 (its own
    ``tier1`` part when Tier 1 committed to a seed of its own, else the shared one)."""
    document = _seed_document(args.seed)
    part = document.get("tier1")
    if part is not None and not isinstance(part, dict):
        raise InputError("the order-seed document's tier1 part must be an object")
    said: list[str] = []
    if args.tier1_status:
        status = load(args.tier1_status)
        theirs = status.get("orderSeedCommitment") if isinstance(status, dict) else None
        if theirs is None:
            raise SeedError("the Tier-1 status publishes no orderSeedCommitment")
        logged = (part or document).get("commitment")
        if theirs != logged:
            raise SeedError(
                "Tier 1 publishes another seed commitment than the admission log holds for it: "
                "its draw cannot be audited with the logged seed"
            )
        said.append("Tier 1 publishes the commitment the log holds for it")
    parts = [("the", document)] if document.get("commitment") is not None else []
    if part is not None:
        parts.append(("Tier 1's", part))
    for name, seeded in parts:
        if seeded.get("revealed"):
            try:
                revealed_seed(seeded)
            except SeedError as exc:
                raise SeedError(f"{name} seed: {exc}") from exc
            said.append(f"{name} revealed seed hashes to the commitment published before")
        else:
            said.append(f"{name} seed is not revealed yet (it is once the line is over)")
    return "ok: " + "; ".join(said)


def _entries(source: str) -> list[dict[str, Any]]:
    entries = load(source)
    if isinstance(entries, dict):
        entries = entries.get("entries")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputError("entries must be a list of leaves (or {'entries': [...]})")
    return entries


def _revealed_seeds(
    document: dict[str, Any], *, keyed: bool, tier1: bool
) -> tuple[list[str], bytes]:
    """What was checked, and the seed Tier 1's draw is audited with.

    With a ``tier1`` part, Tier 1 committed to a seed of its own: its draw is audited with
    that seed, which must hash to Tier 1's own commitment; the queue's seed is then needed
    only for Tier 2's keyed admissions. Without one, both tiers share the top-level seed.
    """
    part = document.get("tier1")
    said = []
    seed = b""
    if keyed or part is None:
        seed = revealed_seed(document)
        said.append("the revealed seed matches its commitment")
    if part is None or not tier1:
        return said, seed
    if not isinstance(part, dict):
        raise InputError("the order-seed document's tier1 part must be an object")
    try:
        tier1_seed = revealed_seed(part)
    except SeedError as exc:
        raise SeedError(f"Tier 1's seed: {exc}") from exc
    said.append("Tier 1's revealed seed matches its own commitment")
    return said, tier1_seed


def cmd_audit(args: argparse.Namespace) -> str:
    entries = _entries(args.entries)
    if args.order and args.seed:
        raise InputError("--order (a pre-queue) and --seed (the random method) exclude each other")
    keyed = any(e.get("kind") == "admit" and "key" in e for e in entries)
    tier1 = [(index, e) for index, e in enumerate(entries) if e.get("kind") in TIER1_KINDS]
    if (keyed or tier1) and not args.seed:
        raise SeedError(
            "these admissions were ordered by the random method: audit them with --seed "
            "(the event's /order-seed document)"
        )
    order = load(args.order) if args.order else None
    seed_line = ""
    tier1_report = None
    try:
        if args.seed:
            said, tier1_seed = _revealed_seeds(
                _seed_document(args.seed), keyed=keyed, tier1=bool(tier1)
            )
            seed_line = "; ".join(said) + "; "
            if tier1:
                tier1_report = audit_tier1(tier1, tier1_seed)
            report = audit_random(entries) if keyed else audit_order(entries)
            if keyed:
                seed_line += "by order key: "
        else:
            report = audit_order(entries, order)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SeedError):
            raise
        raise InputError(f"an entry is malformed: {exc!r}") from exc
    lines = [
        f"{seed_line}admitted {report.admitted}, waived {report.waived}, "
        f"explained by a waiver {report.explained}, unexplained {len(report.exceptions)}"
    ]
    if tier1 and len(tier1) == len(entries):
        lines = [seed_line.removesuffix("; ")]  # no admissions to Tier 2 in these leaves
    owed = "tickets owed later"
    if keyed:
        owed = "admissions with larger order keys while it waited"
    lines += [
        f"exception: admission {e.seq} (ticket {e.ticket}) came after {e.overtaken_by} "
        f"{owed}, with no waiver logged"
        for e in report.exceptions
    ]
    if tier1_report is not None:
        lines += _tier1_lines(tier1_report)
    if report.exceptions or (tier1_report is not None and tier1_report.exceptions):
        raise ProofError("\n".join(lines))
    return "ok: " + "; ".join(line for line in lines)


def _tier1_lines(report: Tier1Audit) -> list[str]:
    lines = [
        f"Tier 1's draw: granted {report.granted}, waived {report.waived}, not drawn as they "
        f"had stopped checking {report.explained}, numbers no leaf mentions "
        f"{report.unaccounted}, exceptions {len(report.exceptions)}"
    ]
    mismatched = sum(1 for e in report.exceptions if e.reason == "key_mismatch")
    if mismatched and mismatched == report.granted + report.waived:
        lines.append(
            "no Tier-1 key is the one this seed gives: Tier 1 drew from another seed (check "
            "`urr-verify seed ORDER_SEED --tier1-status STATUS`)"
        )
    return lines + [
        f"exception ({e.reason}): leaf {e.index}: {e.detail}" for e in report.exceptions
    ]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="urr-verify", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)
    receipt = sub.add_parser("receipt", help="a buyer's admission receipt")
    receipt.add_argument("receipt")
    receipt.add_argument("--jwks", required=True, help="the log's published keys")
    receipt.add_argument("--seed", help="the random method's revealed order-seed document")
    receipt.add_argument("--arrival-id", help="your arrival id (the random method's key input)")
    receipt.set_defaults(run=cmd_receipt)
    consistency = sub.add_parser("consistency", help="a newer tree head extends an older one")
    consistency.add_argument("--event", required=True)
    consistency.add_argument("--jwks", required=True)
    consistency.add_argument("--old", required=True)
    consistency.add_argument("--new", required=True)
    consistency.add_argument("--proof", required=True)
    consistency.set_defaults(run=cmd_consistency)
    shuffle = sub.add_parser("shuffle", help="recompute a pre-queue's order")
    shuffle.add_argument("roster")
    shuffle.set_defaults(run=cmd_shuffle)
    seed = sub.add_parser("seed", help="the random method's seed against its commitment")
    seed.add_argument("seed", help="the event's order-seed document (/v1/log/{e}/order-seed)")
    seed.add_argument("--tier1-status", help="the Tier-1 room's /vwr/status/{e} document")
    seed.set_defaults(run=cmd_seed)
    audit = sub.add_parser("audit", help="admissions follow the owed order")
    audit.add_argument("entries")
    audit.add_argument("--order", help="tickets in owed order (a pre-queue's ranks)")
    audit.add_argument("--seed", help="the random method: the event's revealed order-seed document")
    audit.set_defaults(run=cmd_audit)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        print(args.run(args))
    except InputError as exc:
        print(f"unusable input: {exc}", file=sys.stderr)
        return 2
    except (ProofError, ReceiptError, ShuffleError, SeedError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
