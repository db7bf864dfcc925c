"""The compiled category table answers exactly as the reference prefix scan.

``CategoryRouter.category_for`` runs one regex match instead of calling ``_under`` per
prefix; these compare it with ``routing.category_for`` (the scan) on generated paths and
tables, and on the paths a prefix test gets wrong most easily.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from urr_gateway.ratelimit.config import RateLimitSettings
from urr_gateway.ratelimit.routing import CategoryRouter, category_for

SHIPPED = CategoryRouter.from_settings(RateLimitSettings())

TRICKY = [
    "",
    "/",
    "//",
    "api/v1/auth",
    "/api/v1/auth",
    "/api/v1/auth/",
    "/api/v1/auth//",
    "//api/v1/auth",
    "/api/v1//auth",
    "/api/v1/authx",
    "/api/v1/auth.x",
    "/api/v1/seats",
    "/api/v1/seatsX",
    "/api/v1/seatsX/e1",
    "/api/v1/seats/",
    "/api/v1/seats/e1/map",
    "/api/v1/seats%2Fe1",
    "/api/v1/seats%2fe1/map",
    "/api/v1/%73eats/e1",
    "/api/v1/auth\n",
    "/api/v1/auth\n/x",
    "/health",
    "/health\n",
    "/healthz",
    "/health/",
    "/metrics",
    "/metrics?x=1",
    "/METRICS",
    "/api/v1/reservations/e1/r2",
    "/api/v1/reservation",
    "/api/v1/queue/" + "e1/" * 2000 + "enter",
    "/api/v1/events/" + "x" * 100_000,
    "/" * 5000,
    "/api/v1/s\u00e9ats/e1",
    "/api/v1/seats/\udcff",
    "/api/v1/seats(/x",
    "/api/v1/seats.*",
]


def _scan(router: CategoryRouter, path: str) -> str | None:
    return category_for(path, router.rules, router.default_category, router.exempt)


def test_shipped_table_on_tricky_paths() -> None:
    for path in TRICKY:
        assert SHIPPED.category_for(path) == _scan(SHIPPED, path), repr(path[:80])


def test_regex_metacharacters_in_prefixes_match_literally() -> None:
    router = CategoryRouter.build([("/a.b", "dot"), ("/c(d", "paren"), ("/e+", "plus")], "dflt")
    for path in ["/a.b", "/axb", "/a.b/1", "/c(d/x", "/cd", "/e+", "/ee", "/e+/x", "/a.bc"]:
        assert router.category_for(path) == _scan(router, path), path


def test_empty_prefixes_match_every_path() -> None:
    everything = CategoryRouter.build([("/", "root"), ("/api", "api")], "dflt")
    exempt_all = CategoryRouter.build([("/api", "api")], "dflt", exempt=["/*"])
    no_rules = CategoryRouter.build([], "dflt")
    for router in (everything, exempt_all, no_rules):
        for path in TRICKY:
            assert router.category_for(path) == _scan(router, path), repr(path[:80])
    assert everything.category_for("x") == "root"
    assert exempt_all.category_for("/api/v1") is None


def test_rules_keep_their_given_order_when_not_built() -> None:
    # ``build`` sorts longest first; a router made directly answers in the order given, as the scan.
    router = CategoryRouter((("/a", "short"), ("/a/b", "long"), ("/a", "dup")), "dflt", ("/a/b/c",))
    for path in ["/a", "/a/b", "/a/b/c", "/a/b/c/d", "/a/bc", "/b"]:
        assert router.category_for(path) == _scan(router, path), path


SEGMENTS = st.sampled_from(
    [
        "",
        "api",
        "v1",
        "auth",
        "authx",
        "seats",
        "seatsX",
        "queue",
        "health",
        "metrics",
        "a",
        "%2F",
        ".",
    ]
)
PREFIXES = st.lists(SEGMENTS, max_size=4).map(lambda parts: "/" + "/".join(parts))
PATHS = st.one_of(
    st.lists(SEGMENTS, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.lists(SEGMENTS, max_size=8).map("/".join),
    st.text(alphabet="/apiv1authseqmtrx%2F.\n", max_size=60),
    st.text(max_size=40),
)


@given(PATHS)
def test_shipped_table_on_generated_paths(path: str) -> None:
    assert SHIPPED.category_for(path) == _scan(SHIPPED, path)


@given(
    rules=st.lists(st.tuples(PREFIXES, st.sampled_from(["auth", "queue", "booking"])), max_size=6),
    exempt=st.lists(PREFIXES, max_size=3),
    paths=st.lists(PATHS, min_size=1, max_size=10),
)
def test_generated_tables_on_generated_paths(
    rules: list[tuple[str, str]], exempt: list[str], paths: list[str]
) -> None:
    built = CategoryRouter.build(rules, "general", exempt)
    raw = CategoryRouter(tuple(rules), "general", tuple(exempt))
    for router in (built, raw):
        for path in paths:
            assert router.category_for(path) == _scan(router, path), (router, path)
