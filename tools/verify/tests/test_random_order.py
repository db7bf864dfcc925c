"""The random method's audit: the revealed seed against its commitment, admissions by key."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from urr_verify.__main__ import main
from urr_verify.random_order import (
    SeedError,
    audit_random,
    check_own_key,
    order_key,
    revealed_seed,
)

SEED = bytes(range(32))
EVENT = "lottery-1"


def _document(seed: bytes = SEED, *, commitment_of: bytes = SEED) -> dict[str, Any]:
    return {
        "eventId": EVENT,
        "method": "random",
        "commitment": hashlib.sha256(commitment_of).hexdigest(),
        "revealed": True,
        "seed": seed.hex(),
    }


def _simulate(arrivals: int, *, per_tick: int, rng: random.Random) -> list[dict[str, Any]]:
    """A line ordered by key: arrivals come in between ticks, each tick admits the smallest keys."""
    waiting: list[tuple[int, str, int]] = []  # (key, id, ticket)
    leaves: list[dict[str, Any]] = []
    ticket = 0
    while ticket < arrivals or waiting:
        for _ in range(rng.randint(0, 2 * per_tick)):
            if ticket < arrivals:
                ticket += 1
                user = f"user-{ticket}"
                waiting.append((order_key(SEED, user), user, ticket))
        waiting.sort()
        for key, _, number in waiting[:per_tick]:
            leaves.append({"kind": "admit", "event": EVENT, "ticket": number, "key": key})
        del waiting[:per_tick]
    return leaves


def test_the_key_is_the_hmacs_first_13_hex_digits() -> None:
    digest = hmac.new(SEED, b"user-7", hashlib.sha1).hexdigest()
    assert order_key(SEED, "user-7") == int(digest[:13], 16)


def test_the_seed_must_hash_to_the_commitment() -> None:
    assert revealed_seed(_document()) == SEED
    with pytest.raises(SeedError, match="does not hash to the commitment"):
        revealed_seed(_document(b"another seed", commitment_of=SEED))
    with pytest.raises(SeedError, match="not been revealed"):
        revealed_seed({"commitment": "ab" * 32, "revealed": False})


def test_a_line_drawn_by_key_audits_clean_and_a_swap_is_reported() -> None:
    leaves = _simulate(400, per_tick=7, rng=random.Random(4))
    assert [leaf["ticket"] for leaf in leaves] != sorted(leaf["ticket"] for leaf in leaves)
    report = audit_random(leaves)
    assert (report.admitted, report.exceptions) == (400, [])
    # The operator lets a later, larger-key arrival in ahead of one who had waited.
    tampered = list(leaves)
    i = next(
        i
        for i in range(len(leaves) - 1, 0, -1)
        if leaves[i - 1]["key"] < leaves[i]["key"] and leaves[i - 1]["ticket"] < leaves[i]["ticket"]
    )
    tampered[i - 1], tampered[i] = tampered[i], tampered[i - 1]
    found = audit_random(tampered).exceptions
    assert [(e.seq, e.ticket) for e in found] == [(i, leaves[i - 1]["ticket"])]
    # A waiver for that number logged before explains it.
    waiver = {"kind": "waive", "event": EVENT, "ticket": leaves[i - 1]["ticket"]}
    explained = audit_random([waiver, *tampered])
    assert (explained.explained, explained.exceptions) == (1, [])


def test_a_smaller_key_arriving_after_the_admission_is_no_exception() -> None:
    late_small = {"kind": "admit", "event": EVENT, "ticket": 3, "key": 1}
    leaves = [
        {"kind": "admit", "event": EVENT, "ticket": 1, "key": 50},
        {"kind": "admit", "event": EVENT, "ticket": 2, "key": 60},
        late_small,
    ]
    assert audit_random(leaves).exceptions == []
    # But one that had arrived before a later number was admitted had waited: an exception.
    assert len(audit_random([leaves[1], leaves[0]]).exceptions) == 1


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


def test_the_command_checks_the_seed_and_the_order(tmp_path: Path) -> None:
    leaves = _simulate(120, per_tick=5, rng=random.Random(9))
    entries = tmp_path / "entries.json"
    entries.write_text(json.dumps({"entries": leaves}))
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(_document()))
    code, said = _run(["audit", str(entries), "--seed", str(seed)])
    assert code == 0, said
    assert "the revealed seed matches its commitment" in said
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**_document(), "seed": ("ff" * 32)}))
    code, said = _run(["audit", str(entries), "--seed", str(wrong)])
    assert code == 1
    assert "does not hash to the commitment" in said
    code, said = _run(["audit", str(entries)])
    assert code == 1
    assert "random method" in said


def test_a_buyer_checks_their_own_key() -> None:
    leaf = {"kind": "admit", "ticket": 4, "key": order_key(SEED, "me")}
    assert check_own_key(leaf, SEED, "me") == leaf["key"]
    with pytest.raises(SeedError, match="not the one the seed gives"):
        check_own_key(leaf, SEED, "someone else")


def test_the_seed_command_compares_both_tiers(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(_document()))
    same = tmp_path / "tier1.json"
    same.write_text(json.dumps({"orderSeedCommitment": _document()["commitment"]}))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"orderSeedCommitment": "ab" * 32}))
    code, said = _run(["seed", str(seed), "--tier1-status", str(same)])
    assert code == 0, said
    assert "Tier 1 publishes the commitment the log holds for it" in said
    code, said = _run(["seed", str(seed), "--tier1-status", str(other)])
    assert code == 1
    assert "cannot be audited with the logged seed" in said
    pending = tmp_path / "pending.json"
    pending.write_text(json.dumps({**_document(), "revealed": False, "seed": None}))
    code, said = _run(["seed", str(pending)])
    assert code == 0
    assert "not revealed yet" in said


def test_the_seed_command_holds_tier_1_to_its_own_part(tmp_path: Path) -> None:
    """With a ``tier1`` part (Tier 1 committed to a seed of its own), Tier 1's status must
    match that part, not the queue's commitment, and its reveal must hash to it."""
    tier1_seed = bytes.fromhex("5a" * 32)
    part = {
        "commitment": hashlib.sha256(tier1_seed).hexdigest(),
        "seed": tier1_seed.hex(),
        "revealed": True,
    }
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({**_document(), "tier1": part}))
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"orderSeedCommitment": part["commitment"]}))
    queues = tmp_path / "queues.json"
    queues.write_text(json.dumps({"orderSeedCommitment": _document()["commitment"]}))
    code, said = _run(["seed", str(seed), "--tier1-status", str(own)])
    assert code == 0, said
    assert "Tier 1's revealed seed hashes to the commitment" in said
    code, said = _run(["seed", str(seed), "--tier1-status", str(queues)])
    assert code == 1
    assert "cannot be audited with the logged seed" in said
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**_document(), "tier1": {**part, "seed": "ff" * 32}}))
    code, said = _run(["seed", str(forged)])
    assert code == 1
    assert "Tier 1's seed: the revealed seed does not hash" in said
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**_document(), "tier1": ["not", "an", "object"]}))
    code, said = _run(["seed", str(broken)])
    assert code == 2, said


def test_the_count_matches_its_definition_on_shuffled_logs() -> None:
    """Overtaken by j < i with key_j > key_i, where i provably waited: some admission at or
    before j holds a higher ticket than i's. Checked against that definition, O(n^2)."""
    rng = random.Random(11)
    for _ in range(50):
        n = rng.randint(1, 60)
        tickets = rng.sample(range(1, 200), n)
        keys = [rng.randint(0, 30) for _ in range(n)]  # small: many equal keys
        leaves = [
            {"kind": "admit", "event": EVENT, "ticket": t, "key": k}
            for t, k in zip(tickets, keys, strict=True)
        ]
        expected = []
        for i in range(n):
            count = sum(
                1 for j in range(i) if keys[j] > keys[i] and max(tickets[: j + 1]) > tickets[i]
            )
            if count:
                expected.append((i, tickets[i], count))
        found = [(e.seq, e.ticket, e.overtaken_by) for e in audit_random(leaves).exceptions]
        assert found == expected
