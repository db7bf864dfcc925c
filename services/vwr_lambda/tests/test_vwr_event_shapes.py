"""The event shape checks (``events``) answer as the ``isinstance`` loops they replaced."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from urr_vwr_lambda import events


class Text(str):
    """A string subclass: still a string to both checks."""


def _reference_str_map(value: Any) -> bool:
    return value is None or (
        isinstance(value, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    )


def _reference_multi_map(value: Any) -> bool:
    return value is None or (
        isinstance(value, dict)
        and all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(i, str) for i in v)
            for k, v in value.items()
        )
    )


_scalars = st.one_of(
    st.text(max_size=5),
    st.text(max_size=3).map(Text),
    st.integers(),
    st.none(),
    st.binary(max_size=3),
    st.booleans(),
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=3),
    st.tuples(st.text(max_size=2)),
    st.lists(st.lists(st.text(max_size=2), max_size=2), max_size=2),
    st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=2),
)
_keys = st.one_of(st.text(max_size=5), st.text(max_size=3).map(Text), st.integers(), st.none())
_maps = st.one_of(
    st.none(),
    st.dictionaries(_keys, _values, max_size=6),
    st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=6),
    st.dictionaries(st.text(max_size=4), st.lists(st.text(max_size=3), max_size=3), max_size=6),
    st.lists(st.text(max_size=3), max_size=3),
    st.text(max_size=3),
    st.integers(),
)


@settings(max_examples=600, deadline=None)
@given(_maps)
def test_the_string_map_check_answers_as_the_isinstance_loop(value: Any) -> None:
    assert events._str_map(value) is _reference_str_map(value)


@settings(max_examples=600, deadline=None)
@given(_maps)
def test_the_multi_value_map_check_answers_as_the_isinstance_loop(value: Any) -> None:
    assert events._multi_map(value) is _reference_multi_map(value)


def test_the_edge_cases_by_hand() -> None:
    assert events._str_map({})
    assert events._multi_map({})
    assert events._str_map({"a": Text("b")})
    assert not events._str_map({"a": ["b"]})
    assert not events._str_map({b"a": "b"})
    assert not events._multi_map({"a": "bc"}), "a string is not a list of strings"
    assert not events._multi_map({"a": ("b",)})
    assert not events._multi_map({"a": ["b", 1]})
    assert not events._multi_map({"a": [b"b"]})
    assert not events._multi_map({1: ["b"]})
    assert events._multi_map({"a": [], "b": ["c", Text("d")]})
    assert not events._str_map([("a", "b")])
