"""The identity assertion: signed by the gateway, accepted only for its upstream and request."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from urr_common.identity import (
    ASSERTION_HEADER,
    AssertedIdentity,
    AssertionSigner,
    AssertionVerifier,
)
from urr_common.identity_testing import TEST_GATEWAY_KEY, act_as, as_gateway, identity_settings
from urr_common.settings import SettingsError, load_settings
from urr_common.tokens import KeySet, SigningKey, TokenError, TokenRejection
from urr_common.upstream_security import (
    IDENTITY,
    InternalListenerSettings,
    ServiceCredentialSettings,
    UpstreamIdentitySettings,
    identity_middleware,
    identity_of,
    internal_app,
    no_internal_routes,
    require_role,
)

KEY = SigningKey.generate("gw-1")
NOW = 1_900_000_000.0


def _verifier(audience: str = "queue", *keys: SigningKey) -> AssertionVerifier:
    chosen = keys or (KEY,)
    return AssertionVerifier(KeySet(key.verification_key() for key in chosen), audience=audience)


def _sign(**overrides: object) -> str:
    claims: dict[str, object] = {
        "iss": "urr-gateway",
        "sub": "u-1",
        "role": "user",
        "aud": "queue",
        "htm": "POST",
        "htp": "/api/v1/queue/e1/enter",
        "iat": int(NOW),
        "exp": int(NOW) + 15,
        "jti": "j-1",
    }
    claims.update(overrides)
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, KEY.private_key, algorithm="ES256", headers={"kid": KEY.kid})


def _verify(
    token: str,
    verifier: AssertionVerifier | None = None,
    method: str = "POST",
    path: str = "/api/v1/queue/e1/enter",
) -> AssertedIdentity:
    return (verifier or _verifier()).verify(token, method=method, path=path, now=NOW + 1)


def test_a_gateway_assertion_names_the_user_for_its_upstream_and_request() -> None:
    signer = AssertionSigner(KEY)
    token = signer.assertion(
        "u-1", "admin", audience="queue", method="POST", path="/api/v1/queue/e1/enter", now=NOW
    )
    identity = _verify(token)
    assert identity.user_id == "u-1"
    assert identity.role == "admin"


@pytest.mark.parametrize(
    ("token_overrides", "request_overrides", "reason"),
    [
        ({"aud": "ticket"}, {}, TokenRejection.WRONG_AUDIENCE),
        ({}, {"method": "DELETE"}, TokenRejection.WRONG_AUDIENCE),
        ({}, {"path": "/api/v1/admin/queue/e1"}, TokenRejection.WRONG_AUDIENCE),
        ({"iss": "urr-auth"}, {}, TokenRejection.WRONG_ISSUER),
        ({"exp": int(NOW) - 10, "iat": int(NOW) - 20}, {}, TokenRejection.EXPIRED),
        ({"iat": int(NOW) + 100, "exp": int(NOW) + 110}, {}, TokenRejection.NOT_YET_VALID),
        ({"exp": int(NOW) + 3600}, {}, TokenRejection.MALFORMED),
        ({"role": None}, {}, TokenRejection.MISSING_CLAIM),
        ({"htp": None}, {}, TokenRejection.MISSING_CLAIM),
        ({"sub": "u\n1"}, {}, TokenRejection.MALFORMED),
    ],
)
def test_an_assertion_for_something_else_is_refused(
    token_overrides: dict[str, object], request_overrides: dict[str, str], reason: TokenRejection
) -> None:
    with pytest.raises(TokenError) as refused:
        _verify(_sign(**token_overrides), None, **request_overrides)
    assert refused.value.reason == reason


def test_a_foreign_key_an_unsigned_token_and_hs256_are_refused() -> None:
    stranger = SigningKey.generate("gw-1")  # same kid, other key
    forged = jwt.encode(
        jwt.decode(_sign(), options={"verify_signature": False}),
        stranger.private_key,
        algorithm="ES256",
        headers={"kid": "gw-1"},
    )
    with pytest.raises(TokenError):
        _verify(forged)
    claims = jwt.decode(_sign(), options={"verify_signature": False})
    unsigned = jwt.encode(claims, "", algorithm="none")
    with pytest.raises(TokenError):
        _verify(unsigned)
    with pytest.raises(TokenError):
        _verify("not a token")


def test_keys_rotate_both_old_and_new_are_accepted() -> None:
    new = SigningKey.generate("gw-2")
    verifier = _verifier("queue", KEY, new)
    by_new = AssertionSigner(new).assertion(
        "u-2", "user", audience="queue", method="GET", path="/x", now=NOW
    )
    assert verifier.verify(by_new, method="GET", path="/x", now=NOW).user_id == "u-2"
    assert _verify(_sign(), verifier).user_id == "u-1"


def test_the_signer_reuses_an_assertion_for_a_second_only() -> None:
    signer = AssertionSigner(KEY, reuse_s=1.0)
    first = signer.assertion("u", "user", audience="queue", method="GET", path="/a", now=NOW)
    again = signer.assertion("u", "user", audience="queue", method="GET", path="/a", now=NOW + 0.5)
    other = signer.assertion("u", "user", audience="queue", method="GET", path="/b", now=NOW + 0.5)
    later = signer.assertion("u", "user", audience="queue", method="GET", path="/a", now=NOW + 1.5)
    assert first == again
    assert other != first
    assert later != first
    # A reused assertion still has its whole lifetime ahead of it.
    assert _verifier().verify(again, method="GET", path="/a", now=NOW + 0.99 + 15).user_id == "u"


@pytest.mark.parametrize("user", ["u-1", "ü-ñ-日本", 'quote"back\\slash'])
def test_the_lean_signer_writes_what_pyjwt_wrote(user: str) -> None:
    """Issue 22: assertions are signed without ``jwt.encode``. Header and payload segments
    are byte for byte pyjwt's, the signature is ES256 as pyjwt and the verifiers read it."""
    signer = AssertionSigner(KEY)
    token = signer.sign(user, "user", audience="queue", method="GET", path="/a/%C3%BC", now=NOW)
    claims = jwt.decode(token, options={"verify_signature": False})
    reference = jwt.encode(claims, KEY.private_key, algorithm="ES256", headers={"kid": KEY.kid})
    assert token.rsplit(".", 1)[0] == reference.rsplit(".", 1)[0]
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": KEY.kid, "typ": "JWT"}
    decoded = jwt.decode(  # the signature checked by pyjwt (NOW is a fixed future time)
        token,
        KEY.private_key.public_key(),
        algorithms=["ES256"],
        audience="queue",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert decoded["sub"] == user
    identity = _verifier().verify(token, method="GET", path="/a/%C3%BC", now=NOW + 1)
    assert identity.user_id == user


def test_a_lean_signed_assertion_is_still_refused_when_tampered_foreign_or_late() -> None:
    token = AssertionSigner(KEY).sign(
        "u-1", "user", audience="queue", method="GET", path="/a", now=NOW
    )
    head, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    raised = json.dumps({**claims, "role": "admin"}, separators=(",", ":")).encode()
    tampered = f"{head}.{base64.urlsafe_b64encode(raised).rstrip(b'=').decode()}.{signature}"
    foreign = AssertionSigner(SigningKey.generate(KEY.kid)).sign(
        "u-1", "admin", audience="queue", method="GET", path="/a", now=NOW
    )
    for forged in (tampered, foreign):
        with pytest.raises(TokenError) as refused:
            _verifier().verify(forged, method="GET", path="/a", now=NOW + 1)
        assert refused.value.reason == TokenRejection.BAD_SIGNATURE
    with pytest.raises(TokenError) as refused:
        _verifier().verify(token, method="GET", path="/a", now=NOW + 60)
    assert refused.value.reason == TokenRejection.EXPIRED
    with pytest.raises(TokenError) as refused:
        _verifier("ticket").verify(token, method="GET", path="/a", now=NOW + 1)
    assert refused.value.reason == TokenRejection.WRONG_AUDIENCE


def test_the_signer_follows_a_new_key() -> None:
    signer = AssertionSigner(KEY)
    signer.sign("u", "user", audience="queue", method="GET", path="/a", now=NOW)
    new = SigningKey.generate("gw-2")
    signer.key = new
    token = signer.sign("u", "user", audience="queue", method="GET", path="/a", now=NOW)
    assert jwt.get_unverified_header(token)["kid"] == "gw-2"
    assert _verifier("queue", new).verify(token, method="GET", path="/a", now=NOW).user_id == "u"


def test_a_cached_verified_assertion_still_expires() -> None:
    verifier = _verifier()
    token = _sign()
    _verify(token, verifier)
    with pytest.raises(TokenError) as refused:
        verifier.verify(token, method="POST", path="/api/v1/queue/e1/enter", now=NOW + 60)
    assert refused.value.reason == TokenRejection.EXPIRED


def _signed_segments(payload: bytes, header: dict[str, object] | None = None) -> str:
    """A JWS over any payload bytes, signed with ``KEY`` (what only a key holder can make)."""
    head = header or {"alg": "ES256", "kid": KEY.kid, "typ": "JWT"}
    return jwt.api_jws.encode(payload, KEY.private_key, algorithm="ES256", headers=head)


def test_the_lean_parse_refuses_what_pyjwt_refused() -> None:
    """Issue 22: the verifier takes the JWS apart itself; every tampering is still refused,
    also with the header segment already known (its ``kid`` is cached per segment)."""
    verifier = _verifier()
    good = _sign()
    _verify(good, verifier)  # the header segment is now cached
    header, payload, signature = good.split(".")
    other = _sign(sub="u-2", jti="j-2").split(".")[1]
    short = jwt.utils.base64url_encode(jwt.utils.base64url_decode(signature)[:62]).decode()
    cases = {
        # Another payload under a cached header and the first token's signature.
        f"{header}.{other}.{signature}": TokenRejection.BAD_SIGNATURE,
        f"{header}.{payload}.{short}": TokenRejection.BAD_SIGNATURE,  # 62 bytes
        f"{header}.{payload}.": TokenRejection.BAD_SIGNATURE,
        f"{header}.{payload}.{signature}.x": TokenRejection.MALFORMED,
        f"{header}.{payload}": TokenRejection.MALFORMED,
        f"{header}.{payload}.{signature[:-1]}!": TokenRejection.MALFORMED,
        f"{header}.{payload}.{signature[:-2]}+/": TokenRejection.MALFORMED,
        f"{header}.{payload}.{signature}===": TokenRejection.MALFORMED,
        f"{header}.{payload}.a": TokenRejection.MALFORMED,
        f"{header}.é{payload}.{signature}": TokenRejection.MALFORMED,
        "": TokenRejection.MALFORMED,
        "x" * 9000: TokenRejection.MALFORMED,
        "[[[[." + payload + "." + signature: TokenRejection.MALFORMED,
    }
    for token, reason in cases.items():
        with pytest.raises(TokenError) as refused:
            _verify(token, verifier)
        assert refused.value.reason == reason, token[:60]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"alg": "none", "kid": KEY.kid}, TokenRejection.UNSUPPORTED_ALGORITHM),
        ({"alg": "HS256", "kid": KEY.kid}, TokenRejection.UNSUPPORTED_ALGORITHM),
        ({"alg": "ES256"}, TokenRejection.UNKNOWN_KEY),
        ({"alg": "ES256", "kid": 7}, TokenRejection.MALFORMED),
        ({"alg": "ES256", "kid": KEY.kid, "crit": ["b64"], "b64": False}, TokenRejection.MALFORMED),
        ({"alg": "ES256", "kid": "gw-9"}, TokenRejection.UNKNOWN_KEY),
    ],
)
def test_the_header_pins_es256_and_a_known_kid(
    header: dict[str, object], reason: TokenRejection
) -> None:
    good = _sign().split(".")
    forged_header = jwt.utils.base64url_encode(json.dumps(header).encode()).decode()
    with pytest.raises(TokenError) as refused:
        _verify(f"{forged_header}.{good[1]}.{good[2]}")
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[1, 2]", TokenRejection.MALFORMED),
        (b"not json", TokenRejection.MALFORMED),
        (json.dumps({"aud": ["queue"]}).encode(), TokenRejection.WRONG_AUDIENCE),
        (json.dumps({"aud": ""}).encode(), TokenRejection.MISSING_CLAIM),
        (json.dumps({"iss": 5}).encode(), TokenRejection.WRONG_ISSUER),
        # Not yet valid, as every other token of ours (issue 17: the assertion's own copy of
        # the registered-claim checks called it malformed; now it shares TokenVerifier's).
        (json.dumps({"nbf": int(NOW) + 100}).encode(), TokenRejection.NOT_YET_VALID),
        (json.dumps({"nbf": "soon"}).encode(), TokenRejection.MALFORMED),
        (json.dumps({"sub": 5}).encode(), TokenRejection.MALFORMED),
        (json.dumps({"jti": None}).encode(), TokenRejection.MISSING_CLAIM),
    ],
)
def test_signed_but_unusable_claims_are_refused(payload: bytes, reason: TokenRejection) -> None:
    if payload.startswith(b"{"):
        claims = jwt.decode(_sign(), options={"verify_signature": False})
        claims.update(json.loads(payload))
        payload = json.dumps(claims).encode()
    with pytest.raises(TokenError) as refused:
        _verify(_signed_segments(payload))
    assert refused.value.reason == reason


def test_a_key_dropped_from_the_set_refuses_its_cached_header() -> None:
    verifier = _verifier()
    _verify(_sign(), verifier)
    verifier.keys = KeySet([SigningKey.generate("gw-2").verification_key()])
    with pytest.raises(TokenError) as refused:
        _verify(_sign(jti="j-2"), verifier)
    assert refused.value.reason == TokenRejection.UNKNOWN_KEY


def test_identity_settings_say_which_key_source_is_unusable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        UpstreamIdentitySettings(public_key_files=[tmp_path / "missing.pem"])
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ValueError, match="unusable"):
        UpstreamIdentitySettings(public_key_files=[bad])
    with pytest.raises(ValueError, match="JWKS document"):
        UpstreamIdentitySettings(jwks='{"keys": [{"kty": "RSA"}]}')
    good = tmp_path / "gw-1.pem"
    good.write_bytes(KEY.verification_key().to_pem())
    jwks = json.dumps(KeySet([TEST_GATEWAY_KEY.verification_key()]).to_jwks())
    both = UpstreamIdentitySettings(public_key_files=[good], jwks=jwks)
    assert {key.kid for key in both.key_set()} == {"gw-1", "test-gateway"}
    # A glob: the mounted Secret's <kid>.pem files, so a new key needs no new setting.
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for key in (KEY, SigningKey.generate("gw-2")):
        (mounted / f"{key.kid}.pem").write_bytes(key.verification_key().to_pem())
    globbed = UpstreamIdentitySettings(public_key_files=[mounted / "*.pem"])
    assert {key.kid for key in globbed.key_set()} == {"gw-1", "gw-2"}
    assert not len(
        UpstreamIdentitySettings(public_key_files=[tmp_path / "none" / "*.pem"]).key_set()
    )


def test_internal_settings_refuse_weak_secrets_and_bad_names() -> None:
    with pytest.raises(ValueError, match="at least 24"):
        InternalListenerSettings(callers={"ticket": SecretStr("short")})
    with pytest.raises(ValueError, match="lower-case"):
        InternalListenerSettings(callers={"Ticket Svc": SecretStr("x" * 32)})
    assert InternalListenerSettings().port_beside(3007) == 5007
    assert InternalListenerSettings().port_beside(0) == 0
    with pytest.raises(ValueError, match="URR_INTERNAL__PORT"):
        InternalListenerSettings().check_port(64000, 65000)
    with pytest.raises(ValueError, match="both"):
        ServiceCredentialSettings(name="ticket")
    with pytest.raises(ValueError, match="at least 24"):
        ServiceCredentialSettings(name="ticket", secret=SecretStr("short"))


def test_settings_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import Field
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class Demo(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="URR_", env_nested_delimiter="__")
        identity: UpstreamIdentitySettings = Field(default_factory=UpstreamIdentitySettings)
        internal: InternalListenerSettings = Field(default_factory=InternalListenerSettings)

    monkeypatch.setenv("URR_INTERNAL__CALLERS", '{"ticket": "' + "s" * 32 + '"}')
    assert load_settings(Demo).internal.callers["ticket"].get_secret_value() == "s" * 32
    monkeypatch.setenv("URR_IDENTITY__LEEWAY_S", "3600")
    with pytest.raises(SettingsError, match="URR_IDENTITY__LEEWAY_S"):
        load_settings(Demo)
    monkeypatch.setenv("URR_IDENTITY__LEEWAY_S", "5")
    monkeypatch.setenv("URR_INTERNAL__PORT", "70000")
    with pytest.raises(SettingsError, match="URR_INTERNAL__PORT"):
        load_settings(Demo)
    monkeypatch.setenv("URR_INTERNAL__PORT", "5007")
    monkeypatch.setenv("URR_IDENTITY__JWKS", "{}")
    with pytest.raises(SettingsError, match="URR_IDENTITY__JWKS"):
        load_settings(Demo)


async def _whoami(request: web.Request) -> web.Response:
    identity = identity_of(request)
    return web.json_response({"user": identity.user_id, "role": identity.role})


async def _admin_only(request: web.Request) -> web.Response:
    require_role(request, "admin")
    return web.json_response({"ok": True})


async def _public(request: web.Request) -> web.Response:
    return web.json_response({"who": getattr(request.get(IDENTITY), "user_id", None)})


def _upstream() -> web.Application:
    from urr_common.service import problem_middleware

    verifier = identity_settings().verifier("queue")
    app = web.Application(
        middlewares=[problem_middleware, no_internal_routes, identity_middleware(verifier)]
    )
    app.router.add_get("/me", _whoami)
    app.router.add_delete("/admin/thing", _admin_only)
    app.router.add_get("/public", _public)
    app.router.add_post("/internal/v1/thing", _public)
    return app


async def test_upstream_believes_the_assertion_and_never_x_user_headers(aiohttp_client) -> None:
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        _upstream(), middlewares=(as_gateway("queue"),)
    )
    liar = {"X-User-Id": "victim", "X-User-Role": "admin"}
    refused = await client.get("/me", headers=liar)
    assert refused.status == 401
    assert (await refused.json())["code"] == "identity_required"
    assert (await client.delete("/admin/thing", headers=liar)).status == 401
    assert (await client.delete("/admin/thing", headers=act_as("u-1"))).status == 403
    assert (await client.delete("/admin/thing", headers=act_as("op", "admin"))).status == 200
    me = await client.get("/me", headers={**act_as("u-1"), **liar})
    assert await me.json() == {"user": "u-1", "role": "user"}
    assert await (await client.get("/public")).json() == {"who": None}
    # An assertion for another request or another upstream is refused on any route.
    stolen = AssertionSigner(TEST_GATEWAY_KEY).assertion(
        "u-1", "admin", audience="ticket", method="GET", path="/public", now=time.time()
    )
    answer = await client.get("/public", headers={ASSERTION_HEADER: stolen})
    assert answer.status == 401
    assert (await answer.json())["code"] == "invalid_identity"
    assert (await client.post("/internal/v1/thing")).status == 404


async def test_internal_app_needs_a_callers_credential(aiohttp_client) -> None:
    secret = "t" * 32

    def routes(app: web.Application) -> None:
        app.router.add_post("/internal/v1/thing", _public)

    app = internal_app({"ticket": SecretStr(secret)}, routes)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    for headers in ({}, {"Authorization": "Bearer " + "u" * 32}, {"Authorization": secret}):
        refused = await client.post("/internal/v1/thing", headers=headers)
        assert refused.status == 401
        assert (await refused.json())["code"] == "service_credential_required"
    ok = await client.post("/internal/v1/thing", headers={"Authorization": f"Bearer {secret}"})
    assert ok.status == 200


def test_a_new_gateway_key_is_trusted_without_a_restart(tmp_path: Path) -> None:
    mounted = tmp_path / "identity"
    mounted.mkdir()
    (mounted / "gw-1.pem").write_bytes(KEY.verification_key().to_pem())
    verifier = UpstreamIdentitySettings(public_key_files=[mounted / "*.pem"]).verifier("queue")
    new = SigningKey.generate("gw-2")
    token = AssertionSigner(new).assertion(
        "u", "user", audience="queue", method="GET", path="/x", now=time.time()
    )
    verifier.reload_every_s = 3600.0
    with pytest.raises(TokenError) as unknown:
        verifier.verify(token, method="GET", path="/x")
    assert unknown.value.reason == TokenRejection.UNKNOWN_KEY
    (mounted / "gw-2.pem").write_bytes(new.verification_key().to_pem())
    # Within the reload period the files are not read again (a junk-kid flood costs nothing).
    with pytest.raises(TokenError):
        verifier.verify(token, method="GET", path="/x")
    verifier.reload_every_s = 0.0
    assert verifier.verify(token, method="GET", path="/x").user_id == "u"
    # A broken file leaves the keys already trusted in place.
    (mounted / "gw-3.pem").write_text("half-written")
    stranger = AssertionSigner(SigningKey.generate("gw-4")).assertion(
        "u", "user", audience="queue", method="GET", path="/y", now=time.time()
    )
    with pytest.raises(TokenError):
        verifier.verify(stranger, method="GET", path="/y")
    assert "gw-2" in verifier.keys
