"""The path normaliser and the routing table: examples, then fuzzing."""

from __future__ import annotations

import posixpath
import re
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from yarl import URL

from urr_gateway.paths import InvalidPath, normalise_path
from urr_gateway.routing import match_route


@pytest.mark.parametrize(
    ("raw", "path", "upstream_raw"),
    [
        ("/api/v1/events", "/api/v1/events", "/api/v1/events"),
        ("/api/v1/events/", "/api/v1/events/", "/api/v1/events/"),
        ("//api///v1/events", "/api/v1/events", "/api/v1/events"),
        ("/api/v1/%65vents", "/api/v1/events", "/api/v1/events"),
        ("/api/v1/events/a%20b", "/api/v1/events/a b", "/api/v1/events/a%20b"),
        ("/api/v1/events/%C3%A9", "/api/v1/events/\u00e9", "/api/v1/events/%C3%A9"),
        ("/", "/", "/"),
        ("/api/v1/events/...", "/api/v1/events/...", "/api/v1/events/..."),
    ],
)
def test_canonical_forms(raw, path, upstream_raw):
    normalised = normalise_path(raw)
    assert normalised.path == path
    assert normalised.raw == upstream_raw


@pytest.mark.parametrize(
    "raw",
    [
        "/api/v1/events/../admin/queue/e1",
        "/api/v1/events/./x",
        "/api/v1/events/%2e%2e/admin",
        "/api/v1/events/%2E%2e/admin",
        "/api/v1/events/.%2e/admin",
        "/api/v1/events%2f..%2fadmin",
        "/api/v1/events%2F..%2Fadmin",
        "/api/v1/events/%252e%252e/admin",
        "/api/v1/events/%252f",
        "/api/v1/events\\..\\admin",
        "/api/v1/events/%5c..%5cadmin",
        "/api/v1/seats/..;/admin",
        "/api/v1/seats/x;y",
        "/api/v1/events/%00",
        "/api/v1/events/%0d%0aX-Injected:1",
        "/api/v1/events/%zz",
        "/api/v1/events/%4",
        "/api/v1/events/%ff",
        "/api/v1/events/\u00e9",
        "api/v1/events",
        "/" + "a" * 3000,
    ],
)
def test_ambiguous_paths_are_refused(raw):
    with pytest.raises(InvalidPath):
        normalise_path(raw)


# Pieces an attacker combines to make one path mean two things.
_PIECES = [
    "api",
    "v1",
    "admin",
    "queue",
    "seats",
    "events",
    "auth",
    "e1",
    "x",
    "..",
    ".",
    "%2e",
    "%2E",
    "%2e%2e",
    "%2f",
    "%2F",
    "%252f",
    "%252e%252e",
    "%25",
    "%5c",
    "\\",
    ";",
    "%3b",
    "",
    "/",
    "//",
    "%00",
    "%41",
    "%C3%A9",
    "%ff",
    "a b",
    "~",
    "%7e",
]
raw_paths = st.lists(st.sampled_from(_PIECES), max_size=10).map(lambda parts: "/" + "/".join(parts))
any_text = st.text(max_size=60).map(lambda text: "/" + text)


def _meaning(raw: str) -> str:
    """What a lenient server might take ``raw`` to mean: decode until stable, resolve dots."""
    previous = None
    value = raw.replace("\\", "/")
    while previous != value:
        previous, value = value, unquote(value).replace("\\", "/")
    resolved = posixpath.normpath(value)
    return re.sub("/+", "/", resolved)


@settings(max_examples=600, deadline=None)
@given(st.one_of(raw_paths, any_text))
@example("/api/v1/events/..%2fadmin")
@example("/api/v1/%2e%2e/v1/admin")
def test_fuzz_accepted_paths_mean_one_thing(raw):
    try:
        normalised = normalise_path(raw)
    except InvalidPath:
        return
    # Idempotent: the canonical form is its own canonical form.
    assert normalise_path(normalised.raw) == normalised
    # The upstream decodes ``raw`` to exactly the path the filters saw.
    assert URL.build(path=normalised.raw, encoded=True).path == normalised.path
    # However many times a lenient server decodes it, it means the same path.
    assert _meaning(normalised.raw).rstrip("/") == normalised.path.rstrip("/") or (
        normalised.path == "/"
    )
    assert all(segment not in ("", ".", "..") for segment in normalised.segments)
    for forbidden in ("%2f", "%2F", "%25", "%5c", "%5C", "\\", "//", ";"):
        assert forbidden not in normalised.raw


admin_attempts = st.builds(
    lambda before, after: "/" + "/".join([*before, "api/v1/admin", *after]),
    st.lists(st.sampled_from(_PIECES), max_size=4),
    st.lists(st.sampled_from(_PIECES), max_size=4),
)


@settings(max_examples=600, deadline=None)
@given(st.one_of(raw_paths, admin_attempts))
def test_fuzz_admin_paths_cannot_dodge_the_admin_route(raw):
    """Whatever an accepted path means to any server, the gateway routes it as that."""
    try:
        normalised = normalise_path(raw)
    except InvalidPath:
        return
    meaning = _meaning(raw)
    if not (meaning.startswith("/api/v1/admin/") or meaning == "/api/v1/admin"):
        return
    match = match_route(normalised.segments)
    assert match is not None
    assert match.route.needs_role == "admin"
