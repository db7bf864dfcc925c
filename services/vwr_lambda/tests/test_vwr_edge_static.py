"""The edge stand-in's static files: kept in memory, re-read when they change, validated by
ETag, and never served past the edge verifier."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from urr_common.settings import load_settings
from urr_common.tokens import KeySet, SigningKey, TokenSigner
from urr_vwr_lambda import tier1
from urr_vwr_lambda.edge import EdgeVerifier
from urr_vwr_lambda.edge_config import EdgeConfigSource, build_document
from urr_vwr_lambda.local import edge as edge_emulator
from urr_vwr_lambda.local.edge import ASSET_CACHE, SHELL_CACHE, StaticFiles
from urr_vwr_lambda.settings import EdgeEmulatorSettings

KEY = SigningKey.generate("static-1")
FORGER = SigningKey.generate("static-1")  # same kid, another key


def md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'


def test_a_file_is_read_once_and_again_when_it_changes(tmp_path: Path) -> None:
    (tmp_path / "assets" / "v1").mkdir(parents=True)
    shell = tmp_path / "index.html"
    shell.write_bytes(b"<p>one</p>")
    files = StaticFiles(tmp_path)
    first = files.get("evt-1")
    assert first is not None
    assert (first.data, first.kind, first.cache_control) == (
        b"<p>one</p>",
        "text/html",
        SHELL_CACHE,
    )
    assert first.etag == md5_etag(b"<p>one</p>")
    assert files.get("another-event") is first  # every page path is the one shell, in memory
    shell.write_bytes(b"<p>two, longer</p>")
    second = files.get("evt-1")
    assert second is not None
    assert second.data == b"<p>two, longer</p>"
    assert second.etag == md5_etag(b"<p>two, longer</p>")
    # Same size, same second: the modification time in nanoseconds still tells.
    shell.write_bytes(b"<p>two, LONGER</p>")
    os.utime(shell, ns=(second.stamp[0] + 1, second.stamp[0] + 1))
    third = files.get("evt-1")
    assert third is not None
    assert third.data == b"<p>two, LONGER</p>"


def test_assets_keep_their_rules(tmp_path: Path) -> None:
    (tmp_path / "assets" / "v1").mkdir(parents=True)
    (tmp_path / "index.html").write_bytes(b"shell")
    script = tmp_path / "assets" / "v1" / "waiting.js"
    script.write_bytes(b"let x = 1;")
    (tmp_path / "assets" / "v1" / ".hidden.js").write_bytes(b"secret")
    files = StaticFiles(tmp_path)
    found = files.get("assets/v1/waiting.js")
    assert found is not None
    assert found.cache_control == ASSET_CACHE
    assert found.kind in ("text/javascript", "application/javascript")
    for missing in (
        "assets/v1/nope.js",
        "assets/v1/.hidden.js",
        "assets/latest/waiting.js",
        "assets/v1",
        "assets/v1/waiting.js/x",
    ):
        assert files.get(missing) is None, missing
    script.unlink()
    assert files.get("assets/v1/waiting.js") is None  # gone from disk: gone from the edge


@pytest.fixture
def document(tmp_path: Path) -> Path:
    path = tmp_path / "edge-config.json"
    path.write_bytes(
        build_document(
            KeySet([KEY.verification_key()]),
            ["evt-1"],
            max_age_s=15,
            issuer="urr-vwr",
            audience="urr-vwr",
        )
    )
    return path


@pytest.fixture
async def edge(
    document: Path, edge_test_server: Callable[[web.Application], TestServer]
) -> AsyncIterator[TestClient[Any, Any]]:
    settings = load_settings(
        EdgeEmulatorSettings,
        gateway_url="http://127.0.0.1:9",  # nothing listens: no test here reaches an origin
        api_url="http://127.0.0.1:9",
        edge_config={"target": str(document)},
    )
    async with TestClient(edge_test_server(edge_emulator.create_app(settings))) as client:
        yield client


async def test_the_page_carries_an_etag_and_a_match_is_a_304(
    edge: TestClient[Any, Any],
) -> None:
    page = await edge.get("/vwr/evt-1")
    assert page.status == 200
    body = await page.read()
    etag = page.headers["ETag"]
    assert etag == md5_etag(body)
    assert page.headers["Cache-Control"] == SHELL_CACHE
    again = await edge.get("/vwr/evt-1", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    assert again.headers["ETag"] == etag
    assert again.headers["Cache-Control"] == SHELL_CACHE
    other = await edge.get("/vwr/evt-1", headers={"If-None-Match": '"something-else"'})
    assert other.status == 200
    assert await other.read() == body


async def test_the_verifier_still_refuses_a_forged_token_on_a_cached_path(
    edge: TestClient[Any, Any],
) -> None:
    assert (await edge.get("/vwr/evt-1")).status == 200  # the shell is in memory now
    forged = tier1.issue(
        TokenSigner(FORGER, issuer="urr-vwr", audience="urr-vwr", ttl_s=600),
        event_id="evt-1",
        request_id="7f1c2b6e-1d2a-4c0e-9a55-3b1f0c9d2e11",
        position=1,
        user_id=None,
    )
    cookie = {"Cookie": f"urr-vwr-token={forged}"}
    page = await edge.get("/events/evt-1", headers=cookie, allow_redirects=False)
    assert page.status == 302
    assert page.headers["Location"].startswith("/vwr/evt-1?return=")
    api = await edge.get("/api/v1/seats/evt-1", headers=cookie)
    assert api.status == 403


async def test_a_generated_answer_wins_over_a_cached_file(
    document: Path, edge_test_server: Callable[[web.Application], TestServer]
) -> None:
    """The verifier runs on every viewer request: a page already in memory is not served
    when the function answers the request itself."""

    class Switch(EdgeVerifier):
        refuse = False

        def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
            if self.refuse:
                return {"status": "403", "body": "refused by the function"}
            return super().__call__(event)

    verifier = Switch(EdgeConfigSource(str(document)))
    settings = load_settings(
        EdgeEmulatorSettings,
        gateway_url="http://127.0.0.1:9",
        api_url="http://127.0.0.1:9",
        edge_config={"target": str(document)},
    )
    app = edge_emulator.create_app(settings, verifier=verifier)
    async with TestClient(edge_test_server(app)) as client:
        assert (await client.get("/vwr/evt-1")).status == 200
        verifier.refuse = True
        refused = await client.get("/vwr/evt-1")
        assert refused.status == 403
        assert await refused.text() == "refused by the function"
        assert "ETag" not in refused.headers
