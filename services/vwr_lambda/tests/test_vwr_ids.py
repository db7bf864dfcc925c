"""Request and event ids: the whole text is checked, the canonical form without a UUID object."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from urr_vwr_lambda.ids import is_event_id, parse_request_id

_HEX = "0123456789abcdefABCDEF"


def _uuid_texts() -> st.SearchStrategy[str]:
    def group(size: int) -> st.SearchStrategy[str]:
        return st.text(alphabet=_HEX, min_size=size, max_size=size)

    return st.tuples(group(8), group(4), group(4), group(4), group(12)).map("-".join)


@settings(max_examples=500, deadline=None)
@given(_uuid_texts())
def test_a_uuid_in_any_case_is_its_canonical_lower_case_text(text: str) -> None:
    assert parse_request_id(text) == str(uuid.UUID(text))


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        _uuid_texts().flatmap(
            lambda text: st.sampled_from(
                [text + "\n", "\n" + text, text + " ", "{" + text + "}", text[:-1] + "g", text[1:]]
            )
        ),
        st.integers(),
        st.none(),
        st.binary(max_size=36),
    )
)
def test_anything_else_is_none_and_nothing_raises(value: Any) -> None:
    parsed = parse_request_id(value)
    if parsed is not None:
        assert isinstance(value, str)
        assert parsed == str(uuid.UUID(value))
        assert len(value) == 36


def test_a_trailing_newline_is_not_an_id() -> None:
    text = str(uuid.uuid4())
    assert parse_request_id(text + "\n") is None  # it raised ValueError before
    assert is_event_id("evt-1")
    assert not is_event_id("evt-1\n")  # it was accepted before
    assert not is_event_id("a" * 65)
    assert is_event_id("a" * 64)


def test_an_assign_whose_request_id_ends_in_a_newline_is_refused_not_a_500(vwr: Any) -> None:
    vwr.open_event("newline")
    answer = vwr.request("POST", "/vwr/assign/newline", {"requestId": str(uuid.uuid4()) + "\n"}, {})
    assert (answer.status, answer.body["code"]) == (422, "bad_request_id")
