"""The edge verifier (CloudFront viewer-request): every acceptance and every rejection."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.utils import base64url_encode

from urr_common.tokens import KeySet, SigningKey, TokenSigner
from urr_vwr_lambda import tier1
from urr_vwr_lambda.edge import EdgeVerifier
from urr_vwr_lambda.edge_config import EdgeConfigSource, build_document
from urr_vwr_lambda.paths import safe_return_path

KEY = SigningKey.generate("edge-1")
OTHER_KEY = SigningKey.generate("edge-1")  # same kid, different key: a forgery


def signer(key: SigningKey = KEY, **overrides: Any) -> TokenSigner:
    fields = {"issuer": "urr-vwr", "audience": "urr-vwr", "ttl_s": 600, **overrides}
    return TokenSigner(key, **fields)


def token(event_id: str = "evt-1", **kwargs: Any) -> str:
    return tier1.issue(
        kwargs.pop("token_signer", signer()),
        event_id=event_id,
        request_id="7f1c2b6e-1d2a-4c0e-9a55-3b1f0c9d2e11",
        position=kwargs.pop("position", 3),
        user_id=None,
        **kwargs,
    )


@pytest.fixture
def edge(tmp_path: Path) -> EdgeVerifier:
    path = tmp_path / "edge-config.json"
    path.write_bytes(
        build_document(
            KeySet([KEY.verification_key()]),
            ["evt-1", "Evt-Caps"],
            max_age_s=15,
            issuer="urr-vwr",
            audience="urr-vwr",
        )
    )
    return EdgeVerifier(EdgeConfigSource(str(path)))


def viewer_request(
    event_file: Any, uri: str, *, cookie: str | None = None, query: str = ""
) -> dict[str, Any]:
    event: dict[str, Any] = copy.deepcopy(event_file("cloudfront_viewer_request.json"))
    request = event["Records"][0]["cf"]["request"]
    request["uri"] = uri
    request["querystring"] = query
    if cookie is not None:
        request["headers"]["cookie"] = [{"key": "Cookie", "value": cookie}]
    return event


def is_forwarded(answer: dict[str, Any]) -> bool:
    return "uri" in answer and "status" not in answer


@pytest.mark.parametrize(
    "uri",
    [
        "/",
        "/events",
        "/events/evt-other",  # not an active event
        "/api/v1/auth/login",
        "/api/v1/events/evt-1",  # the read-only catalogue is not gated
        "/api/v1/admin/queue/evt-1",
        "/vwr/evt-1",
        "/vwr/assets/v1/waiting.js",
        "/vwr/events/evt-1.json",
        "/vwr-api/vwr/assign/evt-1",
        "/health/ready",
    ],
)
def test_ungated_paths_pass_untouched(edge: EdgeVerifier, event_file: Any, uri: str) -> None:
    event = viewer_request(event_file, uri)
    before = copy.deepcopy(event["Records"][0]["cf"]["request"])
    answer = edge(event)
    assert answer == before


@pytest.mark.parametrize(
    "uri",
    [
        "/events/evt-1",
        "/events/evt-1/seats",
        "/api/v1/queue/evt-1/enter",
        "/api/v1/seats/evt-1",
        "/api/v1/reservations/evt-1/hold",
    ],
)
def test_a_valid_token_for_the_event_passes(edge: EdgeVerifier, event_file: Any, uri: str) -> None:
    answer = edge(viewer_request(event_file, uri, cookie=f"a=b; urr-vwr-token={token()}"))
    assert is_forwarded(answer)


def test_pages_without_a_token_are_redirected_to_the_waiting_page(
    edge: EdgeVerifier, event_file: Any
) -> None:
    answer = edge(viewer_request(event_file, "/events/evt-1/seats", query="seat=A1&x=%2F"))
    assert answer["status"] == "302"
    location = answer["headers"]["location"][0]["value"]
    assert answer["headers"]["cache-control"][0]["value"] == "no-store"
    parts = urlsplit(location)
    assert parts.path == "/vwr/evt-1"
    assert parse_qs(parts.query)["return"] == ["/events/evt-1/seats?seat=A1&x=%2F"]


def test_api_paths_without_a_token_get_a_403_problem_with_the_location(
    edge: EdgeVerifier, event_file: Any
) -> None:
    answer = edge(viewer_request(event_file, "/api/v1/seats/evt-1"))
    assert answer["status"] == "403"
    body = json.loads(answer["body"])
    assert body["code"] == "vwr_token_missing"
    assert body["location"] == "/vwr/evt-1?return=%2Fapi%2Fv1%2Fseats%2Fevt-1"
    assert answer["headers"]["location"][0]["value"] == body["location"]
    assert answer["headers"]["content-type"][0]["value"] == "application/problem+json"


def expired_token() -> str:
    return token(now=time.time() - 3600)


def wrong_issuer_token() -> str:
    return token(token_signer=signer(issuer="someone-else"))


def wrong_audience_token() -> str:
    return token(token_signer=signer(audience="urr"))


def unsigned_token() -> str:
    claims = jwt.decode(token(), options={"verify_signature": False})
    return jwt.encode(claims, key=None, algorithm="none", headers={"kid": "edge-1"})  # type: ignore[arg-type]


def hs256_token() -> str:
    """The classic confusion: HMAC keyed with the (public) verification key's PEM."""
    b64 = base64url_encode
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "edge-1"}).encode())
    claims = jwt.decode(token(), options={"verify_signature": False})
    signing_input = header + b"." + b64(json.dumps(claims).encode())
    mac = hmac.new(KEY.verification_key().to_pem(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(mac)).decode()


def tampered_token() -> str:
    header, _payload, signature = token().split(".")
    claims = jwt.decode(token(), options={"verify_signature": False})
    claims["pos"] = 1
    forged = base64url_encode(json.dumps(claims).encode()).decode()
    return f"{header}.{forged}.{signature}"


def unknown_kid_token() -> str:
    return token(token_signer=signer(SigningKey.generate("edge-9")))


def missing_position_token() -> str:
    return signer().sign("7f1c2b6e-1d2a-4c0e-9a55-3b1f0c9d2e11", {"evt": "evt-1"})


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (lambda: token("evt-2"), "vwr_token_wrong_event"),
        (expired_token, "vwr_token_expired"),
        (lambda: token(token_signer=signer(OTHER_KEY)), "vwr_token_invalid"),
        (unsigned_token, "vwr_token_invalid"),
        (hs256_token, "vwr_token_invalid"),
        (tampered_token, "vwr_token_invalid"),
        (unknown_kid_token, "vwr_token_invalid"),
        (wrong_issuer_token, "vwr_token_invalid"),
        (wrong_audience_token, "vwr_token_invalid"),
        (missing_position_token, "vwr_token_invalid"),
        (lambda: "garbage", "vwr_token_invalid"),
        (lambda: "", "vwr_token_invalid"),
    ],
)
def test_every_bad_token_is_refused(
    edge: EdgeVerifier, event_file: Any, make_token: Any, code: str
) -> None:
    cookie = f"urr-vwr-token={make_token()}"
    api = edge(viewer_request(event_file, "/api/v1/queue/evt-1/enter", cookie=cookie))
    assert api["status"] == "403"
    assert json.loads(api["body"])["code"] == code
    page = edge(viewer_request(event_file, "/events/evt-1", cookie=cookie))
    assert page["status"] == "302"


def test_one_good_token_among_several_cookies_is_enough(
    edge: EdgeVerifier, event_file: Any
) -> None:
    event = viewer_request(event_file, "/events/evt-1", cookie=f"urr-vwr-token={token('evt-2')}")
    headers = event["Records"][0]["cf"]["request"]["headers"]
    headers["cookie"].append({"key": "Cookie", "value": f'urr-vwr-token="{token()}"'})
    assert is_forwarded(edge(event))


@pytest.mark.parametrize(
    "uri",
    [
        "/events/%65vt-1",  # percent-encoded letters
        "//events//evt-1",  # repeated slashes
        "/x/../events/evt-1",  # dot segments
        "/vwr/../events/evt-1",  # dressed up as the waiting page
        "/EVENTS/evt-1",  # another case of the fixed segment
        "/events/EVT-1",  # another case of the event id
        "/API/V1/Seats/evt-1",
    ],
)
def test_path_tricks_do_not_walk_past_the_room(
    edge: EdgeVerifier, event_file: Any, uri: str
) -> None:
    answer = edge(viewer_request(event_file, uri))
    assert answer["status"] in ("302", "403")
    location = answer["headers"]["location"][0]["value"]
    assert location.startswith("/vwr/evt-1?return=")


def test_unsafe_paths_are_400_problems(edge: EdgeVerifier, event_file: Any) -> None:
    for uri in ("/../etc/passwd", "/events/%00evt-1", "/events/%ff", "/a\\b"):
        answer = edge(viewer_request(event_file, uri))
        assert answer["status"] == "400", uri


def test_malformed_events_are_400_problems(edge: EdgeVerifier) -> None:
    events: list[Any] = [None, {}, {"Records": []}, {"Records": [{"cf": {"request": {"uri": 3}}}]}]
    for event in events:
        assert edge(event)["status"] == "400"


def test_the_return_path_is_never_an_open_redirect(edge: EdgeVerifier, event_file: Any) -> None:
    # The original path is always same-site; an odd query string cannot make it otherwise.
    answer = edge(viewer_request(event_file, "/events/evt-1", query="next=//evil.example"))
    back = parse_qs(urlsplit(answer["headers"]["location"][0]["value"]).query)["return"][0]
    assert back == "/events/evt-1?next=//evil.example"
    assert safe_return_path(back) == back
    for bad in (
        "//evil.example",
        "https://evil.example",
        "/\\evil.example",
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "javascript:alert(1)",
        "",
        "/\x00",
        "/" + "a" * 3000,
    ):
        assert safe_return_path(bad) is None, bad


DOCUMENT: dict[str, Any] = {"max_age_s": 15, "issuer": "urr-vwr", "audience": "urr-vwr"}


def test_a_remembered_admission_still_expires_and_admits_to_its_event_only(
    tmp_path: Path, event_file: Any
) -> None:
    path = tmp_path / "edge-config.json"
    path.write_bytes(
        build_document(KeySet([KEY.verification_key()]), ["evt-1", "evt-2"], **DOCUMENT)
    )
    now = [time.time()]
    edge = EdgeVerifier(EdgeConfigSource(str(path)), clock=lambda: now[0])
    good = token(token_signer=signer(ttl_s=60))
    exp = int(jwt.decode(good, options={"verify_signature": False})["exp"])
    cookie = f"urr-vwr-token={good}"
    for _ in range(2):  # verified, then remembered
        assert is_forwarded(edge(viewer_request(event_file, "/api/v1/seats/evt-1", cookie=cookie)))
    wrong = edge(viewer_request(event_file, "/api/v1/seats/evt-2", cookie=cookie))
    assert json.loads(wrong["body"])["code"] == "vwr_token_wrong_event"
    now[0] = exp + 10 - 0.5  # the document's leeway (10 s) still covers it, as PyJWT's does
    assert is_forwarded(edge(viewer_request(event_file, "/api/v1/seats/evt-1", cookie=cookie)))
    now[0] = exp + 10
    expired = edge(viewer_request(event_file, "/api/v1/seats/evt-1", cookie=cookie))
    assert json.loads(expired["body"])["code"] == "vwr_token_expired"


def test_a_new_document_forgets_remembered_admissions(tmp_path: Path, event_file: Any) -> None:
    path = tmp_path / "edge-config.json"
    path.write_bytes(build_document(KeySet([KEY.verification_key()]), ["evt-1"], **DOCUMENT))
    edge = EdgeVerifier(EdgeConfigSource(str(path)))
    cookie = f"urr-vwr-token={token()}"
    assert is_forwarded(edge(viewer_request(event_file, "/api/v1/seats/evt-1", cookie=cookie)))
    # The key is withdrawn: its tokens stop at the next look at the document.
    other = SigningKey.generate("edge-2")
    path.write_bytes(build_document(KeySet([other.verification_key()]), ["evt-1"], **DOCUMENT))
    edge.source._checked_at = float("-inf")
    edge.source._mtime_ns = -1
    refused = edge(viewer_request(event_file, "/api/v1/seats/evt-1", cookie=cookie))
    assert json.loads(refused["body"])["code"] == "vwr_token_invalid"


def test_no_document_means_nothing_is_gated(tmp_path: Path, event_file: Any) -> None:
    edge = EdgeVerifier(EdgeConfigSource(str(tmp_path / "missing.json")))
    answer = edge(viewer_request(event_file, "/events/evt-1"))
    assert is_forwarded(answer)
    assert edge.source.last_error is not None


def test_a_broken_document_keeps_the_last_good_one(edge: EdgeVerifier, event_file: Any) -> None:
    assert edge(viewer_request(event_file, "/events/evt-1"))["status"] == "302"
    Path(edge.source.location).write_text("{broken")
    edge.source._checked_at = float("-inf")
    assert edge(viewer_request(event_file, "/events/evt-1"))["status"] == "302"
    assert "EdgeConfigError" in (edge.source.last_error or "")


def test_the_bundled_handler_reads_the_bundled_location(
    event_file: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urr_vwr_lambda import edge as edge_module

    monkeypatch.chdir(tmp_path)  # the bundled location is relative: .urr/vwr/edge-config.json
    monkeypatch.setattr(edge_module, "_VERIFIER", [])
    target = tmp_path / ".urr" / "vwr" / "edge-config.json"
    target.parent.mkdir(parents=True)
    keys = KeySet([KEY.verification_key()])
    target.write_bytes(
        build_document(keys, ["evt-1"], max_age_s=15, issuer="urr-vwr", audience="urr-vwr")
    )
    answer = edge_module.handler(viewer_request(event_file, "/events/evt-1"), None)
    assert answer["status"] == "302"


@settings(max_examples=300, deadline=None)
@given(
    uri=st.text(min_size=0, max_size=60),
    query=st.text(max_size=40),
    cookie=st.one_of(st.none(), st.text(max_size=80)),
)
def test_fuzzed_viewer_requests_always_get_a_clear_answer(
    tmp_path_factory: pytest.TempPathFactory, uri: str, query: str, cookie: str | None
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-edge.json"
    if not path.exists():
        path.write_bytes(
            build_document(
                KeySet([KEY.verification_key()]),
                ["evt-1"],
                max_age_s=15,
                issuer="urr-vwr",
                audience="urr-vwr",
            )
        )
    edge = EdgeVerifier(EdgeConfigSource(str(path)))
    request: dict[str, Any] = {"uri": uri, "querystring": query, "method": "GET", "headers": {}}
    if cookie is not None:
        request["headers"]["cookie"] = [{"key": "Cookie", "value": cookie}]
    answer = edge({"Records": [{"cf": {"request": request}}]})
    if "status" in answer:
        assert answer["status"] in ("302", "400", "403")
        if answer["status"] in ("302", "403"):
            location = answer["headers"]["location"][0]["value"]
            back = parse_qs(urlsplit(location).query)["return"][0]
            assert safe_return_path(back) == back
    else:
        assert answer is request
