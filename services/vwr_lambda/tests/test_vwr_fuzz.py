"""Hypothesis throws arbitrary API Gateway events at the API handler: never a 5xx, never a crash.

Runs against moto (each example costs a few DynamoDB calls, so the example count is modest).
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

RID = "7f1c2b6e-1d2a-4c0e-9a55-3b1f0c9d2e11"
segments = st.sampled_from(
    ["vwr", "assign", "check", "status", "admin", "events", "advance", "reset", "evt-1", RID, ""]
) | st.text(max_size=12)
paths = st.lists(segments, min_size=0, max_size=6).map(lambda parts: "/" + "/".join(parts))
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]) | st.text(
    max_size=8
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
bodies = st.one_of(
    st.none(),
    st.text(max_size=60),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"requestId": st.sampled_from([RID, str(uuid.UUID(int=5)), "x"]) | json_values},
        optional={"isActive": json_values, "batchSize": json_values, "by": json_values},
    ).map(json.dumps),
)
header_values = st.sampled_from(
    [
        "application/json",
        "text/plain",
        "Bearer x.y.z",
        "access_token=abc; urr-vwr-token=zzz",
        '"abc", W/"def", *',
    ]
) | st.text(max_size=30)
headers = st.dictionaries(
    st.sampled_from(["Content-Type", "Authorization", "Cookie", "If-None-Match", "X-Other"]),
    header_values,
    max_size=4,
)
anything = json_values | st.lists(json_values, max_size=3)


def rest_event(
    template: dict[str, Any], method: str, path: str, body: Any, hdrs: dict[str, str], b64: bool
) -> dict[str, Any]:
    event = copy.deepcopy(template)
    event.update(httpMethod=method, path=path, headers=hdrs, isBase64Encoded=b64)
    event["multiValueHeaders"] = {k: [v] for k, v in hdrs.items()}
    if b64 and isinstance(body, str):
        body = base64.b64encode(body.encode("utf-8", "surrogatepass")).decode()
    event["body"] = body
    return event


def assert_well_formed(raw: Any) -> None:
    assert isinstance(raw, dict)
    status = raw["statusCode"]
    assert isinstance(status, int)
    assert 200 <= status < 500, raw
    body = raw.get("body")
    if status >= 400:
        merged = {k.lower(): v for k, v in (raw.get("headers") or {}).items()}
        for name, values in (raw.get("multiValueHeaders") or {}).items():
            merged.setdefault(name.lower(), values[-1])
        content_type = merged["content-type"]
        assert content_type == "application/problem+json"
        problem = json.loads(body or "")
        assert problem["status"] == status
        assert isinstance(problem["code"], str)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=methods,
    path=paths,
    body=bodies,
    hdrs=headers,
    b64=st.booleans(),
)
def test_fuzzed_rest_events(
    vwr: Any, event_file: Any, method: str, path: str, body: Any, hdrs: dict[str, str], b64: bool
) -> None:
    if not getattr(vwr, "_fuzz_ready", False):
        vwr.open_event("evt-1")
        vwr.assign("evt-1", RID)
        vwr._fuzz_ready = True
    template = event_file("rest_assign.json")
    assert_well_formed(vwr.handler(rest_event(template, method, path, body, hdrs, b64), None))
    if hdrs:  # the same request with an admin login reaches the admin code paths too
        hdrs = {**hdrs, "Authorization": f"Bearer {vwr.admin_token()}"}
        assert_well_formed(vwr.handler(rest_event(template, method, path, body, hdrs, b64), None))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    field=st.sampled_from(
        [
            "httpMethod",
            "path",
            "headers",
            "multiValueHeaders",
            "queryStringParameters",
            "body",
            "isBase64Encoded",
            "requestContext",
            "version",
            "rawPath",
            "cookies",
        ]
    ),
    value=anything,
    v2=st.booleans(),
)
def test_fuzzed_event_shapes(vwr: Any, event_file: Any, field: str, value: Any, v2: bool) -> None:
    event = event_file("http_v2_assign.json" if v2 else "rest_status.json")
    event[field] = value
    assert_well_formed(vwr.handler(event, None))
