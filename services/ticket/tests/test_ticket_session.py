"""Pure rules of the session end (entry token claims) and of queue-events times."""

from __future__ import annotations

import pytest

from urr_common.tokens import SigningKey, TokenSigner
from urr_ticket.outcomes import ended_at_ms
from urr_ticket.session import SessionRefused, session_end_ms

_SIGNER = TokenSigner(SigningKey.generate("t"), "urr-queue", "urr-entry", 900)


def test_the_session_ends_at_the_tokens_expiry() -> None:
    token = _SIGNER.sign("u1", {"evt": "demo"}, ttl_s=600, now=1_700_000_000)
    assert session_end_ms(token, "u1", "demo") == 1_700_000_600_000
    assert session_end_ms(f"  {token} ", "u1", "demo") == 1_700_000_600_000
    assert session_end_ms(None, "u1", "demo") is None
    assert session_end_ms("", "u1", "demo") is None


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (_SIGNER.sign("u2", {"evt": "demo"}), "entry_token_wrong_user"),
        (_SIGNER.sign("u1", {"evt": "other"}), "entry_token_wrong_event"),
        (_SIGNER.sign("u1"), "entry_token_wrong_event"),
        ("a.b.c", "entry_token_invalid"),
        ("x" * 9000, "entry_token_invalid"),
    ],
)
def test_a_token_that_cannot_describe_the_session_is_refused(token: str, code: str) -> None:
    with pytest.raises(SessionRefused) as refused:
        session_end_ms(token, "u1", "demo")
    assert refused.value.code == code


def test_queue_event_times_are_read_in_milliseconds() -> None:
    assert ended_at_ms(1_700_000_000_123) == 1_700_000_000_123
    assert ended_at_ms(1_700_000_000.5) == 1_700_000_000_500  # seconds: converted
    for unusable in (None, "2026-01-01T00:00:00Z", 0, -5, True):
        assert ended_at_ms(unusable) == 0  # release every hold of the user
