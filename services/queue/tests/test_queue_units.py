"""Pure logic: poll advice, ETA, member encoding, configuration, Tier-1 claims, records."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from urr_queue.config import MIN_IDLE_TIMEOUT_S, EventConfig, EventConfigPatch, Mode
from urr_queue.estimates import (
    MAX_POLL_S,
    MIN_POLL_S,
    admission_rate,
    eta_seconds,
    poll_after_seconds,
)
from urr_queue.keys import event_keys, revoked_key
from urr_queue.members import decode_member, encode_member, is_event_id, is_user_id
from urr_queue.reservations import MalformedRecord, parse_reservation_event
from urr_queue.tier1 import MAX_POSITION, Tier1Outcome, judge_claims

USER_IDS = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-",
    min_size=1,
    max_size=128,
)


@given(eta=st.one_of(st.none(), st.integers(0, 10**9)), idle=st.integers(6, 3600))
def test_poll_advice_stays_inside_the_rate_limit_budget(eta, idle):
    poll = poll_after_seconds(eta, idle)
    assert MIN_POLL_S <= poll <= MAX_POLL_S, "at most 30 polls a minute: half of 60/min"
    assert poll <= idle // 3, "a waiter following the advice must never go idle"


def test_idle_timeouts_leave_room_for_three_polls():
    assert MIN_IDLE_TIMEOUT_S == 3 * MIN_POLL_S
    with pytest.raises(ValidationError):
        EventConfig(idle_timeout_seconds=MIN_IDLE_TIMEOUT_S - 1)


def test_poll_advice_is_frequent_near_the_front_and_rare_far_back():
    assert poll_after_seconds(3, 60) == MIN_POLL_S
    assert poll_after_seconds(40, 60) == 10
    assert poll_after_seconds(100_000, 60) == 20  # capped by idle timeout / 3
    assert poll_after_seconds(100_000, 600) == MAX_POLL_S
    assert poll_after_seconds(None, 60) == 10


def test_eta_from_the_rate():
    assert eta_seconds(1, 10.0) == 1
    assert eta_seconds(101, 10.0) == 11
    assert eta_seconds(5, None) is None
    assert eta_seconds(0, 10.0) is None
    measured = admission_rate(
        4.0, mode=Mode.QUEUE, capacity=100, admit_per_second=50, session_seconds=10
    )
    assert measured == 4.0
    prior = admission_rate(
        None, mode=Mode.QUEUE, capacity=100, admit_per_second=50, session_seconds=10
    )
    assert prior == 10.0  # capacity / session is the tighter bound
    paused = admission_rate(
        4.0, mode=Mode.PAUSED, capacity=100, admit_per_second=50, session_seconds=10
    )
    assert paused is None


@given(USER_IDS)
def test_members_round_trip(user_id):
    assert decode_member(encode_member(user_id)) == user_id


@given(st.uuids(version=4))
def test_uuid_members_are_compact(value):
    text = str(value)
    assert len(encode_member(text)) == 16
    assert decode_member(encode_member(text)) == text
    # Upper case is another id (the gateway forwards ids verbatim): kept as text.
    assert decode_member(encode_member(text.upper())) == text.upper()


def test_uuid_with_other_variant_stays_text():
    odd = str(uuid.UUID(int=0))
    assert encode_member(odd) == odd.encode()


def test_ids_and_keys():
    assert is_event_id("demo_1-A")
    assert not is_event_id("a" * 65)
    assert not is_event_id("a:b")
    assert not is_user_id("a{b}")
    assert is_user_id("8f14e45f-ceea-467f-a9b0-3f8fd5f1a5c1")
    keys = event_keys("demo")
    assert keys.queue == "{demo}:queue"
    assert keys.active == "{demo}:active"
    assert keys.config == "{demo}:config"
    assert keys.seen_prefix.startswith("{demo}:seen")
    assert revoked_key("u1", "abc") == "{u:u1}:revoked:abc"


def test_config_round_trips_through_redis_fields():
    config = EventConfig(
        capacity=7,
        admit_per_second=2.5,
        session_seconds=30,
        idle_timeout_seconds=9,
        require_tier1_token=True,
        mode=Mode.CLOSED,
    )
    stored = {k.encode(): v.encode() for k, v in config.to_redis().items()}
    assert EventConfig.from_redis(stored) == config
    patched = EventConfigPatch(capacity=9).apply_to(config)
    assert patched == config.model_copy(update={"capacity": 9})
    with pytest.raises(ValidationError):
        EventConfigPatch.model_validate({"capacity": 0})
    with pytest.raises(ValidationError):
        EventConfigPatch.model_validate({"unknown": 1})


def _claims(**overrides: Any) -> dict[str, Any]:
    return {"evt": "e1", "rid": "r1", "pos": 5, "sub": "r1", **overrides}


def test_tier1_claims():
    assert judge_claims(_claims(), "e1", "u1")[0] is Tier1Outcome.VALID
    passed = judge_claims(_claims(uid="u1"), "e1", "u1")[1]
    assert passed is not None
    assert passed.position == 5
    assert judge_claims(_claims(uid="u2"), "e1", "u1")[0] is Tier1Outcome.WRONG_USER
    assert judge_claims(_claims(evt="e2"), "e1", "u1")[0] is Tier1Outcome.WRONG_EVENT
    for bad in (0, -1, True, 1.5, "5", MAX_POSITION + 1):
        assert judge_claims(_claims(pos=bad), "e1", "u1")[0] is Tier1Outcome.BAD_CLAIMS
    assert judge_claims(_claims(rid=""), "e1", "u1")[0] is Tier1Outcome.BAD_CLAIMS
    # A pre-queue pass names its sale start (epoch ms); its signing time travels along.
    prequeue = judge_claims(_claims(pq=1_800_000_000_000, iat=1_700_000_000), "e1", "u1")[1]
    assert prequeue is not None
    assert (prequeue.prequeue_sale_ms, prequeue.issued_at) == (1_800_000_000_000, 1_700_000_000)
    assert passed.prequeue_sale_ms is None
    for bad in (-1, True, 1.5, "1800000000000", 2**53):
        assert judge_claims(_claims(pq=bad), "e1", "u1")[0] is Tier1Outcome.BAD_CLAIMS


@given(
    st.dictionaries(
        st.sampled_from(["evt", "rid", "pos", "uid", "x"]),
        st.one_of(st.none(), st.integers(), st.text(), st.booleans(), st.floats(allow_nan=True)),
    )
)
def test_tier1_claims_never_raise(claims):
    outcome, passed = judge_claims(claims, "e1", "u1")
    assert (outcome is Tier1Outcome.VALID) == (passed is not None)


def test_reservation_records():
    event = parse_reservation_event(
        b'{"eventId":"demo","userId":"u1","status":"CONFIRMED","reservationId":42}'
    )
    assert (event.event_id, event.user_id, event.status, event.reservation_id) == (
        "demo",
        "u1",
        "confirmed",
        "42",
    )
    assert event.is_final
    assert not parse_reservation_event(
        b'{"eventId":"demo","userId":"u1","status":"pending","reservationId":"r"}'
    ).is_final
    for bad in (b"", b"[]", b"{", b'{"eventId":"demo"}', None):
        with pytest.raises(MalformedRecord):
            parse_reservation_event(bad)


def test_a_declined_card_does_not_end_the_session_other_declines_do() -> None:
    """Issue 21: the buyer may pay again while the seats are held."""

    def declined(reason: str) -> bytes:
        return (
            b'{"eventId":"demo","userId":"u1","status":"declined","reservationId":"r",'
            b'"reason":"' + reason.encode() + b'"}'
        )

    assert not parse_reservation_event(declined("card_declined")).is_final
    assert parse_reservation_event(declined("seat_unavailable")).is_final
    assert parse_reservation_event(declined("unknown_reservation")).is_final
    assert parse_reservation_event(
        b'{"eventId":"demo","userId":"u1","status":"declined","reservationId":"r"}'
    ).is_final


@given(
    st.one_of(
        st.binary(),
        st.builds(
            lambda d: json.dumps(d).encode(),
            st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.none())),
        ),
    )
)
def test_reservation_parser_never_raises_anything_else(raw):
    with contextlib.suppress(MalformedRecord):
        parse_reservation_event(raw)


def test_tier1_keys_dropped_into_the_folder_are_picked_up(tmp_path):
    from urr_common.tokens import SigningKey, TokenSigner
    from urr_queue.tier1 import Tier1Checker

    folder = tmp_path / "public"
    folder.mkdir()
    checker = Tier1Checker(
        [folder / "*.pem"],
        issuer="urr-vwr",
        audience="urr-vwr",
        leeway_s=5,
        reload_interval_s=0,
    )
    key = SigningKey.generate("rotated-2")
    token = TokenSigner(key, "urr-vwr", "urr-vwr", 60).sign(
        "r1", {"evt": "e1", "rid": "r1", "pos": 3}
    )
    assert checker.check(token, "e1", "u1")[0] is Tier1Outcome.INVALID
    (folder / "rotated-2.pem").write_bytes(key.verification_key().to_pem())
    outcome, passed = checker.check(token, "e1", "u1")
    assert outcome is Tier1Outcome.VALID
    assert passed is not None
    assert passed.position == 3


def test_one_variable_of_a_block_keeps_the_queue_defaults(monkeypatch):
    from urr_common.settings import load_settings
    from urr_queue.settings import QueueSettings

    monkeypatch.setenv("URR_HTTP__HOST", "0.0.0.0")
    monkeypatch.setenv("URR_ENTRY_TOKENS__KEY_ID", "local-2")
    monkeypatch.setenv("URR_VWR_TRUST__LEEWAY_S", "5")
    settings = load_settings(QueueSettings)
    assert settings.http.port == 3007
    assert (settings.entry_tokens.issuer, settings.entry_tokens.audience) == (
        "urr-queue",
        "urr-entry",
    )
    assert str(settings.entry_tokens.private_key_file) == ".urr/keys/entry/local-1.pem"
    assert (settings.vwr_trust.issuer, settings.vwr_trust.audience) == ("urr-vwr", "urr-vwr")
    assert [str(p) for p in settings.vwr_trust.public_key_files] == [".urr/keys/vwr/public/*.pem"]


def test_tier1_places_settings_are_validated(monkeypatch):
    from urr_common.settings import SettingsError, load_settings
    from urr_queue.settings import QueueSettings

    monkeypatch.setenv("URR_TIER1_PLACES__TABLE", "urr-positions")
    monkeypatch.setenv("URR_TIER1_PLACES__INTERVAL_S", "0.5")
    monkeypatch.setenv("URR_AWS__ENDPOINT_URL", "http://127.0.0.1:5000")
    settings = load_settings(QueueSettings)
    assert settings.tier1_places.enabled is True
    assert (settings.tier1_places.table, settings.tier1_places.interval_s) == ("urr-positions", 0.5)
    assert settings.tier1_places.batch_size == 100
    assert settings.aws.endpoint_url == "http://127.0.0.1:5000"
    for variable, bad in (
        ("URR_TIER1_PLACES__INTERVAL_S", "0"),
        ("URR_TIER1_PLACES__INTERVAL_S", "61"),
        ("URR_TIER1_PLACES__BATCH_SIZE", "0"),
        ("URR_TIER1_PLACES__BATCH_SIZE", "1001"),
        ("URR_TIER1_PLACES__TABLE", "x"),
        ("URR_TIER1_PLACES__ENABLED", "maybe"),
    ):
        with monkeypatch.context() as patch:
            patch.setenv(variable, bad)
            with pytest.raises(SettingsError, match=variable):
                load_settings(QueueSettings)
