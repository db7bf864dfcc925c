"""Tier 1's random draw audited from its leaves: an honest line is clean, each tampering is
named by its reason (the leaves here are built from the format's description, not by the
service's code; the end-to-end test in services/admission_log runs the real advancer)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from urr_verify.__main__ import main
from urr_verify.tier1 import audit_tier1

SEED = bytes(range(32))
EVENT = "ev-t1"


def alias(request: int) -> str:
    return hashlib.sha256(f"request-{request}".encode()).hexdigest()


def key(arrival: str) -> int:
    return int(hmac.new(SEED, arrival.encode(), hashlib.sha1).hexdigest()[:13], 16)


def honest_line(
    places: int = 30,
    per_draw: int = 4,
    quiet: frozenset[int] = frozenset(),
    returning: frozenset[int] = frozenset(),
) -> list[dict[str, Any]]:
    """Draws of ``per_draw`` over the whole line; ``quiet`` places stopped checking before the
    first draw and are given up by the second draw (the first one could not mark them);
    ``returning`` places were quiet at the first draw only (passed, then checked again)."""
    waiting = set(range(1, places + 1))
    leaves: list[dict[str, Any]] = []
    seq, draw = 0, 0
    while waiting:
        draw += 1
        at = 1_000_000 + draw * 2_000
        cutoff = at - 120_000
        common = {"event": EVENT, "epoch": 1}
        if draw == 2:
            for place in sorted(quiet & waiting):
                waiting.discard(place)
                leaves.append(
                    {
                        **common,
                        "kind": "tier1-waive",
                        "reason": "abandoned",
                        "place": place,
                        "arrival": alias(place),
                        "key": key(alias(place)),
                        "lastSeen": cutoff - 5_000,
                        "at": at,
                    }
                )
        floor = min(waiting) - 1
        away = quiet | (returning if draw == 1 else frozenset())
        drawable = sorted(waiting - away, key=lambda p: (key(alias(p)), alias(p)))
        if not drawable:
            continue
        largest = max((key(alias(p)), alias(p)) for p in drawable[:per_draw])
        for place in sorted(returning & waiting if draw == 1 else ()):
            if (key(alias(place)), alias(place)) < largest:
                leaves.append(
                    {
                        **common,
                        "kind": "tier1-pass",
                        "place": place,
                        "arrival": alias(place),
                        "key": key(alias(place)),
                        "lastSeen": cutoff - 1,
                        "draw": seq + 1,
                        "floor": floor,
                        "top": places,
                        "cutoff": cutoff,
                        "at": at,
                    }
                )
        first = seq + 1
        for place in drawable[:per_draw]:
            seq += 1
            waiting.discard(place)
            leaves.append(
                {
                    **common,
                    "kind": "tier1-grant",
                    "seq": seq,
                    "place": place,
                    "arrival": alias(place),
                    "key": key(alias(place)),
                    "draw": first,
                    "floor": floor,
                    "top": places,
                    "cutoff": cutoff,
                    "at": at,
                }
            )
    return leaves


def audit(leaves: list[dict[str, Any]]) -> Any:
    return audit_tier1(list(enumerate(leaves)), SEED)


def reasons(leaves: list[dict[str, Any]]) -> set[str]:
    return {exception.reason for exception in audit(leaves).exceptions}


def test_an_honest_draw_audits_clean() -> None:
    report = audit(honest_line())
    assert (report.granted, report.waived, report.exceptions) == (30, 0, [])


def test_places_that_stopped_checking_are_explained_not_exceptions() -> None:
    report = audit(honest_line(quiet=frozenset({1, 2, 3})))
    assert report.exceptions == []
    assert (report.granted, report.waived) == (27, 3)
    # Each of the three was passed over by the first draw only if its key was smaller.
    assert 0 <= report.explained <= 3


def grants(leaves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [leaf for leaf in leaves if leaf["kind"] == "tier1-grant"]


def test_two_grants_of_different_draws_swapped_fail_as_passed_over() -> None:
    leaves = honest_line()
    first, last = grants(leaves)[0], grants(leaves)[-1]
    # The holders trade places in the log: every field of the place moves with it, so each
    # key still matches its arrival; only the order is wrong.
    for name in ("place", "arrival", "key"):
        first[name], last[name] = last[name], first[name]
    assert "passed_over" in reasons(leaves)


def test_grants_within_a_draw_out_of_key_order_fail_as_grant_order() -> None:
    leaves = honest_line()
    a, b = grants(leaves)[0], grants(leaves)[1]
    for name in ("place", "arrival", "key"):
        a[name], b[name] = b[name], a[name]
    assert reasons(leaves) == {"grant_order"}


def test_a_key_not_from_the_seed_fails_as_key_mismatch() -> None:
    leaves = honest_line()
    grants(leaves)[5]["key"] = 0  # the smallest key there is: a forged front place
    assert "key_mismatch" in reasons(leaves)


def test_a_grant_dropped_from_the_log_fails_as_missing_seq() -> None:
    leaves = honest_line()
    leaves.remove(grants(leaves)[3])
    assert reasons(leaves) == {"missing_seq"}


def test_a_place_granted_twice_and_reordered_sequences_fail() -> None:
    leaves = honest_line()
    again = copy.deepcopy(grants(leaves)[2])
    again["seq"] = 31
    assert "duplicate_place" in reasons([*leaves, again])
    swapped = honest_line()
    a, b = grants(swapped)[0], grants(swapped)[9]
    a["seq"], b["seq"] = b["seq"], a["seq"]
    assert "seq_out_of_order" in reasons(swapped)


def test_a_live_place_passed_over_and_waived_later_is_an_exception() -> None:
    leaves = honest_line(places=8, per_draw=2)
    # The operator drops the smallest key's grant and claims it was abandoned at the end,
    # but its last check was recent (after the draws' cutoff): it was live, so passed over.
    victim = grants(leaves)[0]
    leaves.remove(victim)
    for leaf in grants(leaves):
        leaf["seq"] -= 1
    leaves.append(
        {
            **{n: victim[n] for n in ("event", "epoch", "place", "arrival", "key", "at")},
            "kind": "tier1-waive",
            "reason": "abandoned",
            "lastSeen": victim["cutoff"] + 1,
        }
    )
    assert reasons(leaves) == {"passed_over"}


def run_audit(tmp_path: Path, leaves: list[dict[str, Any]], *extra: str) -> int:
    entries, seed = tmp_path / "entries.json", tmp_path / "seed.json"
    entries.write_text(json.dumps({"entries": leaves}))
    commitment = hashlib.sha256(SEED).hexdigest()
    seed.write_text(json.dumps({"commitment": commitment, "seed": SEED.hex(), "revealed": True}))
    return main(["audit", str(entries), *extra, "--seed", str(seed)])


def test_the_command_audits_tier1_leaves_and_names_each_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaves = honest_line()
    assert run_audit(tmp_path, leaves) == 0
    assert "Tier 1's draw: granted 30, waived 0" in capsys.readouterr().out
    grants(leaves)[5]["key"] = 0
    assert run_audit(tmp_path, leaves) == 1
    assert "exception (key_mismatch): leaf 5" in capsys.readouterr().err


def test_the_command_refuses_tier1_leaves_without_the_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = tmp_path / "entries.json"
    entries.write_text(json.dumps(honest_line()))
    assert main(["audit", str(entries)]) == 1
    assert "--seed" in capsys.readouterr().err


def test_a_draw_from_another_seed_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaves = honest_line(places=5)
    for leaf in leaves:  # every key from another seed
        leaf["key"] = int(hmac.new(b"other", leaf["arrival"].encode(), "sha1").hexdigest()[:13], 16)
    assert run_audit(tmp_path, leaves) == 1
    assert "Tier 1 drew from another seed" in capsys.readouterr().err


def smallest_key_place(places: int) -> int:
    return min(range(1, places + 1), key=lambda p: (key(alias(p)), alias(p)))


def test_a_place_passed_while_quiet_and_drawn_later_is_explained_by_its_pass() -> None:
    first = smallest_key_place(30)
    leaves = honest_line(returning=frozenset({first}))
    assert [leaf["kind"] for leaf in leaves].count("tier1-pass") == 1
    report = audit(leaves)
    assert report.exceptions == []
    assert (report.granted, report.explained) == (30, 1)
    # Without its pass leaf the same log shows a live place passed over.
    without = [leaf for leaf in leaves if leaf["kind"] != "tier1-pass"]
    assert reasons(without) == {"passed_over"}
    # A pass for a place that was still checking is itself the exception.
    lying = copy.deepcopy(leaves)
    passed = next(leaf for leaf in lying if leaf["kind"] == "tier1-pass")
    passed["lastSeen"] = passed["cutoff"]
    assert reasons(lying) == {"pass_while_checking"}


def _tier1_document(tmp_path: Path, tier1: dict[str, Any], **queue: Any) -> Path:
    """An order-seed document as the log serves it, Tier 1's seed as its ``tier1`` part."""
    path = tmp_path / "order-seed.json"
    path.write_text(json.dumps({"eventId": EVENT, **queue, "tier1": tier1}))
    return path


def test_tier1s_own_revealed_seed_audits_its_draw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = tmp_path / "entries.json"
    entries.write_text(json.dumps({"entries": honest_line()}))
    part = {"commitment": hashlib.sha256(SEED).hexdigest(), "seed": SEED.hex(), "revealed": True}
    # The queue's seed (another one, still secret) is not needed for Tier-1 leaves.
    other = hashlib.sha256(b"q" * 32).hexdigest()
    document = _tier1_document(tmp_path, part, commitment=other, revealed=False)
    assert main(["audit", str(entries), "--seed", str(document)]) == 0
    out = capsys.readouterr().out
    assert "Tier 1's revealed seed matches its own commitment" in out
    assert "Tier 1's draw: granted 30, waived 0" in out


def test_a_tier1_seed_not_matching_its_commitment_fails_naming_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = tmp_path / "entries.json"
    entries.write_text(json.dumps({"entries": honest_line(places=5)}))
    # The operator reveals the seed the draw used, but had committed to another one.
    forged = {"commitment": hashlib.sha256(b"x" * 32).hexdigest(), "seed": SEED.hex()}
    assert main(["audit", str(entries), "--seed", str(_tier1_document(tmp_path, forged))]) == 1
    err = capsys.readouterr().err
    assert "Tier 1's seed: the revealed seed does not hash to the commitment" in err
    unrevealed = {"commitment": hashlib.sha256(SEED).hexdigest(), "revealed": False}
    assert main(["audit", str(entries), "--seed", str(_tier1_document(tmp_path, unrevealed))]) == 1
    assert "Tier 1's seed: the seed has not been revealed yet" in capsys.readouterr().err
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"tier1": "nope"}))
    assert main(["audit", str(entries), "--seed", str(path)]) == 2
