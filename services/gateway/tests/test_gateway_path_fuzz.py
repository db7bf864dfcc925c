"""Raw request targets, thrown at the running gateway: never a 500, never a dodged route."""

from __future__ import annotations

import random

import orjson

from urr_gateway.paths import InvalidPath, normalise_path
from urr_gateway.routing import match_route

_PIECES = [
    "api",
    "v1",
    "admin",
    "queue",
    "seats",
    "events",
    "auth",
    "stats",
    "e1",
    "capacity",
    "..",
    ".",
    "%2e",
    "%2E%2e",
    "%2f",
    "%2F",
    "%252f",
    "%25",
    "%5c",
    "\\",
    ";",
    "%3b",
    "",
    "%00",
    "%0a",
    "%41",
    "%C3%A9",
    "%ff",
    "%",
    "%g1",
    "~",
    "*",
    "a%20b",
    "..;",
    "%u002e",
]


def _target(rng: random.Random) -> str:
    parts = [rng.choice(_PIECES) for _ in range(rng.randint(0, 8))]
    if rng.random() < 0.5:
        parts = ["api", "v1", rng.choice(["events", "admin", "seats", "queue"]), *parts]
    query = "?q=" + rng.choice(["1", "%2f", "..", ""]) if rng.random() < 0.3 else ""
    return "/" + "/".join(parts) + query


async def test_fuzz_raw_targets(stack, raw_request):
    rng = random.Random(20261123)
    for _ in range(250):
        target = _target(rng)
        status, answer = await raw_request(stack.client, target)
        assert status in (200, 400, 401, 403, 404), (target, answer[:300])
        raw_path = target.partition("?")[0]
        try:
            expected = normalise_path(raw_path)
        except InvalidPath:
            assert status == 400, target
            continue
        match = match_route(expected.segments)
        if match is None:
            assert status == 404, target
        elif match.route.needs_login:
            assert status == 401, target
        elif status == 200:
            seen = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
            # The upstream decoded exactly the path the filters routed on.
            assert seen["path"] == expected.path, target
            assert seen["upstream"] == match.route.upstream
