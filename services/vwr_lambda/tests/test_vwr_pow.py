"""The proof-of-work gate (issue 15, deliverable 4): the puzzle, its verification, the challenge
route and every refusal of assign against moto, and one solution racing itself."""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from urr_common.settings import SettingsError, load_settings
from urr_common.tokens import SigningKey
from urr_vwr_lambda import proof_of_work
from urr_vwr_lambda.api import assign_place
from urr_vwr_lambda.pow_gate import check_assign, pow_key
from urr_vwr_lambda.problem import VwrProblem
from urr_vwr_lambda.settings import PowSettings, VwrSettings

KEY = b"k" * 32
NOW = 1_800_000_000


def solution(challenge: str, bits: int) -> dict[str, Any]:
    return {"challenge": challenge, "counter": proof_of_work.solve(challenge, bits)}


def refused_code(call: Any) -> str:
    with pytest.raises(proof_of_work.PowRefused) as refused:
        call()
    return refused.value.code


# -- the puzzle, pure ----------------------------------------------------------------------


def test_the_puzzle_is_the_documented_double_sha256() -> None:
    issued = proof_of_work.issue(KEY, event_id="e-1", bits=12, now_s=NOW, ttl_s=60)
    counter = proof_of_work.solve(issued.text, 12)
    seed = hashlib.sha256(issued.text.encode()).digest()
    digest = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
    assert int.from_bytes(digest[:2], "big") >> 4 == 0  # 12 leading zero bits
    # And it is the first counter that does so.
    for smaller in range(counter):
        earlier = hashlib.sha256(seed + smaller.to_bytes(8, "big")).digest()
        assert proof_of_work.leading_zero_bits(earlier) < 12


@given(st.binary(min_size=1, max_size=40))
def test_leading_zero_bits_counts_the_bits(data: bytes) -> None:
    text = "".join(f"{byte:08b}" for byte in data)
    assert proof_of_work.leading_zero_bits(data) == len(text) - len(text.lstrip("0"))


def test_a_solution_verifies_and_names_its_nonce() -> None:
    issued = proof_of_work.issue(KEY, event_id="e-1", bits=10, now_s=NOW, ttl_s=60)
    solved = proof_of_work.verify(
        solution(issued.text, 10), keys=(KEY,), event_id="e-1", required_bits=10, now_s=NOW
    )
    assert (solved.nonce, solved.expires_at) == (issued.nonce, NOW + 60)


def test_verify_refuses_each_fault_with_its_code() -> None:
    issued = proof_of_work.issue(KEY, event_id="e-1", bits=10, now_s=NOW, ttl_s=60)
    good = solution(issued.text, 10)

    def verify(sol: Any, **overrides: Any) -> Any:
        args: dict[str, Any] = {
            "keys": (KEY,),
            "event_id": "e-1",
            "required_bits": 10,
            "now_s": NOW,
        }
        args.update(overrides)
        return lambda: proof_of_work.verify(sol, **args)

    assert refused_code(verify(None)) == "pow_invalid"
    assert refused_code(verify({"challenge": issued.text})) == "pow_invalid"
    assert refused_code(verify({**good, "counter": True})) == "pow_invalid"
    assert refused_code(verify({**good, "counter": -1})) == "pow_invalid"
    assert refused_code(verify({**good, "counter": 2**53})) == "pow_invalid"
    assert refused_code(verify({**good, "challenge": "v1.e-1.1.2.x.y"})) == "pow_invalid"
    assert refused_code(verify({**good, "challenge": 7})) == "pow_invalid"
    assert refused_code(verify(good, keys=(b"o" * 32,))) == "pow_invalid"  # other key
    # A client that edits the bits, expiry or event invalidates the signature.
    parts = issued.text.split(".")
    for index, value in ((3, "8"), (2, str(NOW + 9999)), (1, "e-2")):
        edited = ".".join(value if i == index else p for i, p in enumerate(parts))
        assert refused_code(verify({**good, "challenge": edited})) == "pow_invalid"
    assert refused_code(verify(good, event_id="e-2")) == "pow_wrong_event"
    assert refused_code(verify(good, now_s=NOW + 60)) == "pow_expired"
    assert refused_code(verify(good, required_bits=11)) == "pow_invalid"
    # A wrong counter (the first one that fails the puzzle).
    seed = proof_of_work.seed(issued.text)
    wrong = next(
        c
        for c in range(10_000)
        if proof_of_work.leading_zero_bits(proof_of_work.attempt(seed, c)) < 10
    )
    assert refused_code(verify({**good, "counter": wrong})) == "pow_invalid"
    assert proof_of_work.verify(
        good, keys=(b"o" * 32, KEY), event_id="e-1", required_bits=10, now_s=NOW
    )


@settings(max_examples=200)
@given(st.text(max_size=300), st.integers(min_value=-5, max_value=2**60))
def test_verify_never_accepts_junk(challenge: str, counter: int) -> None:
    with pytest.raises(proof_of_work.PowRefused):
        proof_of_work.verify(
            {"challenge": challenge, "counter": counter},
            keys=(KEY,),
            event_id="e-1",
            required_bits=8,
            now_s=NOW,
        )


def test_the_key_is_derived_from_the_signing_key_unless_a_secret_is_set() -> None:
    first, other = SigningKey.generate("a"), SigningKey.generate("b")
    derived = pow_key(PowSettings(), lambda: first)
    assert derived == pow_key(PowSettings(), lambda: first)
    assert derived != pow_key(PowSettings(), lambda: other)
    assert len(derived) == 32
    secret = "s" * 40
    assert pow_key(PowSettings(secret=secret), lambda: first) == secret.encode()


@pytest.mark.parametrize(
    "pow_settings",
    [{"secret": "short"}, {"challenge_ttl_s": 5}, {"challenge_ttl_s": 99_999}],
)
def test_pow_settings_are_validated(pow_settings: dict[str, Any]) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(VwrSettings, pow=pow_settings)
    name = next(iter(pow_settings)).upper()
    assert f"URR_POW__{name}" in str(error.value)
    assert "short" not in str(error.value).replace("SECRET", "")  # the value is not echoed
    assert load_settings(VwrSettings, pow={"challenge_ttl_s": 120}).pow.challenge_ttl_s == 120


# -- against DynamoDB (dynalite: it applies a conditional write atomically, as DynamoDB does,
# and the replay race below meets exactly there) -------------------------------------------


def pow_event(vwr: Any, event_id: str, bits: int = 8) -> None:
    answer = vwr.admin("PUT", event_id, {"isActive": True, "botChallenge": "pow", "powBits": bits})
    assert answer.status in (200, 201), answer.body
    assert (answer.body["botChallenge"], answer.body["powBits"]) == ("pow", bits)


def challenge(vwr: Any, event_id: str) -> dict[str, Any]:
    answer = vwr.request("GET", f"/vwr/challenge/{event_id}")
    assert answer.status == 200, answer.body
    assert answer.headers["cache-control"] == "no-store"
    body: dict[str, Any] = answer.body
    return body


def assign_with(vwr: Any, event_id: str, pow_body: Any, request_id: str | None = None) -> Any:
    body = {"requestId": request_id or str(uuid.uuid4()), "pow": pow_body}
    return vwr.request("POST", f"/vwr/assign/{event_id}", body)


def written(vwr: Any, event_id: str) -> list[str]:
    """Every positions row of the event (sort keys), and the number taken so far."""
    rows = vwr.runtime.dynamodb.query(
        TableName=vwr.settings.tables.positions,
        KeyConditionExpression="eventId = :e",
        ExpressionAttributeValues={":e": {"S": event_id}},
    )["Items"]
    taken = vwr.status(event_id).body["nextPosition"]
    return [*sorted(r["requestId"]["S"] for r in rows), f"next={taken}"]


pytestmark_moto = pytest.mark.integration


@pytestmark_moto
def test_admin_sets_the_gate_and_validates_it(vwr: Any) -> None:
    vwr.open_event("evt-1")
    assert vwr.admin("PUT", "evt-1", {"isActive": True}).body["botChallenge"] == "none"
    for bad in (
        {"botChallenge": "captcha"},
        {"botChallenge": "pow", "powBits": 7},
        {"botChallenge": "pow", "powBits": 27},
        {"powBits": "16"},
    ):
        answer = vwr.admin("PUT", "evt-1", {"isActive": True, **bad})
        assert (answer.status, answer.body["code"]) == (422, "validation_failed"), bad
    on = vwr.admin("PUT", "evt-1", {"isActive": True, "botChallenge": "pow"})
    assert (on.body["botChallenge"], on.body["powBits"]) == ("pow", 16)  # the default
    kept = vwr.admin("PUT", "evt-1", {"isActive": True, "batchSize": 5})
    assert (kept.body["botChallenge"], kept.body["powBits"]) == ("pow", 16)
    assert vwr.admin("PUT", "evt-1", {"isActive": True, "powBits": 20}).body["powBits"] == 20
    off = vwr.admin("PUT", "evt-1", {"isActive": True, "botChallenge": "none"})
    assert off.body["botChallenge"] == "none"
    assert challenge(vwr, "evt-1") == {"eventId": "evt-1", "botChallenge": "none"}


@pytestmark_moto
def test_a_solved_challenge_takes_a_place_and_a_retry_keeps_it(vwr: Any) -> None:
    pow_event(vwr, "evt-1", bits=10)
    handed = challenge(vwr, "evt-1")
    assert handed["bits"] == 10
    assert handed["expiresAt"] == int(vwr.clock()) + vwr.settings.pow.challenge_ttl_s
    assert handed["challenge"].startswith("v1.evt-1.")
    solved = solution(handed["challenge"], handed["bits"])
    request_id = str(uuid.uuid4())
    first = assign_with(vwr, "evt-1", solved, request_id)
    assert (first.status, first.body["position"]) == (201, 1)
    # A retry after a lost answer: same request id, same solution, same place.
    again = assign_with(vwr, "evt-1", solved, request_id)
    assert (again.status, again.body["position"]) == (200, 1)


@pytestmark_moto
def test_every_refusal_is_a_problem_naming_why_and_writes_nothing(vwr: Any) -> None:
    pow_event(vwr, "evt-1", bits=8)
    pow_event(vwr, "evt-2", bits=8)
    before = written(vwr, "evt-1")
    assert before == ["next=0"]

    def refused(pow_body: Any, status: int, code: str) -> None:
        answer = assign_with(vwr, "evt-1", pow_body)
        assert answer.status == status, answer.body
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.body["code"] == code
        assert answer.body["challenge"] == "/vwr/challenge/evt-1"
        assert written(vwr, "evt-1") == before

    missing = vwr.assign("evt-1")  # no "pow" at all
    assert (missing.status, missing.body["code"]) == (403, "pow_required")
    handed = challenge(vwr, "evt-1")["challenge"]
    good = solution(handed, 8)
    refused(None, 403, "pow_required")
    refused({"challenge": handed}, 403, "pow_invalid")
    refused({"challenge": handed[:-2] + "AA", "counter": good["counter"]}, 403, "pow_invalid")
    seed = proof_of_work.seed(handed)
    wrong = next(
        c
        for c in range(10_000)
        if proof_of_work.leading_zero_bits(proof_of_work.attempt(seed, c)) < 8
    )
    refused({"challenge": handed, "counter": wrong}, 403, "pow_invalid")
    other = challenge(vwr, "evt-2")["challenge"]
    refused(solution(other, 8), 403, "pow_wrong_event")
    # Raising the difficulty refuses the easier challenges still out.
    pow_event(vwr, "evt-1", bits=9)
    refused(good, 403, "pow_invalid")
    pow_event(vwr, "evt-1", bits=8)
    vwr.clock.advance(vwr.settings.pow.challenge_ttl_s)
    refused(good, 403, "pow_expired")
    vwr.clock.advance(-vwr.settings.pow.challenge_ttl_s)
    # A forged challenge signed with another key (a guessed secret).
    forged = proof_of_work.issue(
        b"x" * 32, event_id="evt-1", bits=8, now_s=int(vwr.clock()), ttl_s=60
    )
    refused(solution(forged.text, 8), 403, "pow_invalid")
    # The good one still works once, then is a replay for anyone else.
    assert assign_with(vwr, "evt-1", good).status == 201
    after = written(vwr, "evt-1")
    refused_again = assign_with(vwr, "evt-1", good)
    assert (refused_again.status, refused_again.body["code"]) == (409, "pow_replayed")
    assert written(vwr, "evt-1") == after


@pytestmark_moto
def test_an_event_without_the_gate_ignores_solutions(vwr: Any) -> None:
    vwr.open_event("evt-1")
    assert assign_with(vwr, "evt-1", {"challenge": "junk", "counter": 1}).status == 201
    assert vwr.assign("evt-1").status == 201


@pytestmark_moto
def test_a_stale_copy_of_the_settings_still_never_lets_a_place_through(vwr: Any) -> None:
    vwr.open_event("evt-1")
    state = vwr.runtime.store.get_event("evt-1")
    pow_event(vwr, "evt-1", bits=8)
    # The fresh read inside assign_place catches what a copy from before the change missed.
    with pytest.raises(VwrProblem) as problem:
        assign_place(vwr.runtime, "evt-1", str(uuid.uuid4()), None, pow_solved=False)
    assert problem.value.code == "pow_required"
    assert state.bot_challenge == "none"


@pytestmark_moto
@pytest.mark.timeout(120)
def test_one_solution_submitted_concurrently_takes_exactly_one_place(vwr: Any) -> None:
    pow_event(vwr, "evt-1", bits=8)
    good = solution(challenge(vwr, "evt-1")["challenge"], 8)
    request_ids = [str(uuid.uuid4()) for _ in range(16)]

    def submit(request_id: str) -> int | str:
        # What the assign route runs: the gate, then the place (the threads meet at DynamoDB).
        try:
            solved = check_assign(vwr.runtime, "evt-1", request_id, good)
            return assign_place(vwr.runtime, "evt-1", request_id, None, pow_solved=solved)[0]
        except VwrProblem as problem:
            return problem.code

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(submit, request_ids))
    assert sorted(outcomes, key=str) == [201] + ["pow_replayed"] * 15
    places = [r for r in written(vwr, "evt-1") if r.count("-") == 4 and "#" not in r]
    assert len(places) == 1
