"""The operator's waiting-page look per event (issue 21 item 1): validation, contrast, the
admin route that stores it on the event, the short-lived document it publishes, and how the
edge serves the page shell, its versioned assets and that document."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from urr_common.settings import load_settings
from urr_vwr_lambda.keys import ensure_local_keys
from urr_vwr_lambda.local import apigw
from urr_vwr_lambda.local import edge as edge_emulator
from urr_vwr_lambda.page_document import (
    AA_CONTRAST,
    PageSettings,
    build_page_document,
    contrast,
    document_target,
    parse_page_settings,
    readable_accent,
)
from urr_vwr_lambda.problem import VwrProblem
from urr_vwr_lambda.settings import EdgeEmulatorSettings

STATIC = Path(str(resources.files("urr_vwr_lambda") / "static"))


# --- pure -----------------------------------------------------------------------------------


def test_a_plain_text_serves_both_languages_and_an_object_keeps_each() -> None:
    settings = parse_page_settings(
        {
            "name": " Spring concert ",
            "accent": "#FFCC00",
            "headline": "Doors open at 8",
            "message": {"ko": "안녕하세요", "en": "Hello"},
            "logo": "https://cdn.example.com/logo.png",
        }
    )
    assert settings.name == "Spring concert"
    assert settings.accent == "#ffcc00"
    assert settings.headline == {"en": "Doors open at 8", "ko": "Doors open at 8"}
    assert settings.message == {"ko": "안녕하세요", "en": "Hello"}
    assert PageSettings.from_stored(json.dumps(settings.to_stored())) == settings


@pytest.mark.parametrize(
    "body",
    [
        {"accent": "red"},
        {"accent": "#12345"},
        {"accent": "#1234567"},
        {"accent": "#ffcc00\n"},
        {"logo": "/a.png\n"},
        {"logo": "https://cdn.example.com/a.png\n"},
        {"logo": "http://cdn.example.com/a.png"},
        {"logo": "javascript:alert(1)"},
        {"logo": "//evil.example/a.png"},
        {"logo": "/" + "a" * 600},
        {"name": "x" * 81},
        {"name": "two\nlines"},
        {"name": ""},
        {"headline": "x" * 121},
        {"message": "x" * 601},
        {"message": {"fr": "bonjour"}},
        {"message": {}},
        {"message": 5},
        {"headline": "bell\x07"},
        {"colour": "#000000"},
        [],
    ],
)
def test_bad_settings_are_refused_with_422(body: Any) -> None:
    with pytest.raises(VwrProblem) as refused:
        parse_page_settings(body)
    assert refused.value.status == 422


@pytest.mark.parametrize("accent", ["#ffcc00", "#ffffff", "#7fd1ff", "#00ff00", "#1a5fb4"])
def test_the_accent_is_darkened_until_white_text_on_it_passes_aa(accent: str) -> None:
    readable = readable_accent(accent)
    assert contrast(readable, "#ffffff") >= AA_CONTRAST
    if contrast(accent, "#ffffff") >= AA_CONTRAST:
        assert readable == accent  # a colour that passes is left alone


def test_the_document_carries_the_readable_accent_and_the_queue_method() -> None:
    settings = parse_page_settings({"accent": "#ffcc00", "name": "Gig"})
    document = json.loads(
        build_page_document("evt-1", settings, queue_method="random", updated_at_ms=5)
    )
    assert document["accent"] == "#ffcc00"
    assert contrast(document["accentText"], "#ffffff") >= AA_CONTRAST
    assert document["queueMethod"] == "random"
    assert document["eventId"] == "evt-1"
    assert "queueMethod" not in json.loads(
        build_page_document("evt-1", settings, queue_method=None, updated_at_ms=5)
    )


def test_the_document_names_the_pre_queue_times_as_the_status_does() -> None:
    settings = parse_page_settings({})
    document = json.loads(
        build_page_document(
            "evt-1",
            settings,
            queue_method=None,
            updated_at_ms=5,
            prequeue=(1_800_000_000_000, 1_800_000_600_500),
        )
    )
    assert document["prequeueStart"] == "2027-01-15T08:00:00+00:00"
    assert document["saleStart"] == "2027-01-15T08:10:00.500000+00:00"
    plain = json.loads(build_page_document("evt-1", settings, queue_method=None, updated_at_ms=5))
    assert "prequeueStart" not in plain
    assert "saleStart" not in plain


@pytest.mark.integration
def test_an_event_with_a_pre_queue_publishes_its_times_for_the_page(vwr: Any) -> None:
    """The waiting page explains the pre-queue from the document before its first call; the
    refusal before the opening names both times too."""
    opens = round(vwr.clock.now * 1000) + 60_000
    times = {
        "prequeueStart": datetime.fromtimestamp(opens / 1000, tz=UTC).isoformat(),
        "saleStart": datetime.fromtimestamp((opens + 600_000) / 1000, tz=UTC).isoformat(),
    }
    opened = vwr.admin("PUT", "evt-pq", {"isActive": True, **times})
    assert opened.status == 201, opened.body
    target = Path(document_target(vwr.settings.edge_config.target, "evt-pq"))
    document = json.loads(target.read_text())
    assert {k: document[k] for k in times} == times
    status = vwr.status("evt-pq").body
    assert {k: status[k] for k in times} == times
    early = vwr.assign("evt-pq")
    assert (early.status, early.body["code"]) == (409, "prequeue_not_open")
    assert {k: early.body[k] for k in times} == times
    # The operator's look keeps them (a PUT of the page rebuilds the whole document).
    assert vwr.admin("PUT", "evt-pq/page", {"name": "Gig"}).status == 200
    assert {k: json.loads(target.read_text())[k] for k in times} == times


def test_event_documents_sit_beside_the_edge_document() -> None:
    assert document_target("s3://b/vwr/edge-config.json", "e1") == "s3://b/vwr/events/e1.json"
    assert document_target("/srv/x/edge-config.json", "e1") == "/srv/x/events/e1.json"


# --- the catalogue and the versioned shell --------------------------------------------------


def _current_assets() -> Path:
    """The asset folder the shell names (one version at a time)."""
    versions = set(re.findall(r'"/vwr/assets/(v[0-9]+)/', (STATIC / "index.html").read_text()))
    assert len(versions) == 1, versions
    return Path(STATIC / "assets" / versions.pop())


def test_every_message_key_of_the_page_is_in_both_languages() -> None:
    assets = _current_assets()
    catalogue = json.loads((assets / "messages.json").read_text())
    assert set(catalogue) == {"en", "ko"}
    assert set(catalogue["en"]) == set(catalogue["ko"])
    used = set(re.findall(r'data-msg="([^"]+)"', (STATIC / "index.html").read_text()))
    script = (assets / "waiting.js").read_text()
    used |= set(re.findall(r'(?:t|say|backoff\(\w+,)\s*\(?"([a-z]+\.[A-Za-z.]+)"', script))
    used |= {f"method.{m}" for m in ("fifo", "random", "passthrough", "reject")}
    # Keys the script builds from the pre-queue's phase (the prefixes alone are no keys).
    used = {k for k in used if not k.endswith(".")}
    used |= {
        f"prequeue.{part}{phase}"
        for part in ("heading.", "", "countdown.")
        for phase in ("before", "during")
    }
    # Every asset the script and the shell name lives in the same version folder.
    assert set(re.findall(r'"/vwr/assets/(v[0-9]+)/', script)) == {assets.name}
    assert set(re.findall(r'"/vwr/assets/(v[0-9]+)/', (assets / "pow.js").read_text())) == {
        assets.name
    }
    missing = sorted(k for k in used if k not in catalogue["en"])
    assert missing == []
    for lang in ("en", "ko"):
        for key, text in catalogue[lang].items():
            placeholders = set(re.findall(r"\{(\w+)\}", text))
            assert placeholders == set(re.findall(r"\{(\w+)\}", catalogue["en"][key])), key


# A versioned asset never changes under its path (caches keep it a year, immutable): a change
# goes into a new assets/v<N>/ folder and index.html names it. These are each version's digests.
V1_DIGESTS_FILE = Path(__file__).parent / "page_asset_digests.json"


def test_versioned_assets_never_change_in_place() -> None:
    recorded = json.loads(V1_DIGESTS_FILE.read_text())
    for version, files in recorded.items():
        folder = STATIC / "assets" / version
        actual = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir())
            if p.is_file()
        }
        assert actual == files, f"assets/{version} changed: make a new version folder instead"
    html = (STATIC / "index.html").read_text()
    named = set(re.findall(r'"/vwr/assets/(v[0-9]+)/', html))
    assert named
    assert named <= set(recorded)


# --- the admin route and the edge -----------------------------------------------------------


@pytest.fixture
async def edge(vwr: Any) -> AsyncIterator[TestClient[Any, Any]]:
    """The CloudFront emulator in front of the API emulator (no upstream needed here)."""
    ensure_local_keys(vwr.settings.vwr_tokens)
    async with TestClient(TestServer(apigw.create_app(vwr.settings, runtime=vwr.runtime))) as api:
        settings = load_settings(
            EdgeEmulatorSettings,
            gateway_url="http://127.0.0.1:9",
            api_url=str(api.make_url("")).rstrip("/"),
            edge_config={"target": vwr.settings.edge_config.target},
        )
        async with TestClient(TestServer(edge_emulator.create_app(settings))) as client:
            yield client


@pytest.mark.integration
def test_the_admin_stores_the_look_and_publishes_a_short_lived_document(vwr: Any) -> None:
    page = {"name": "봄 콘서트", "accent": "#ffcc00", "headline": {"ko": "곧 시작합니다"}}
    assert vwr.admin("PUT", "evt-1/page", page).status == 404  # no such event: nothing stored
    vwr.open_event("evt-1")
    stored = vwr.admin("PUT", "evt-1/page", page)
    assert stored.status == 200, stored.body
    assert stored.body["name"] == "봄 콘서트"
    assert contrast(stored.body["accentText"], "#ffffff") >= AA_CONTRAST
    target = Path(document_target(vwr.settings.edge_config.target, "evt-1"))
    assert json.loads(target.read_text(encoding="utf-8"))["headline"] == {"ko": "곧 시작합니다"}
    assert vwr.admin("GET", "evt-1/page").body == {
        "name": "봄 콘서트",
        "accent": "#ffcc00",
        "headline": {"ko": "곧 시작합니다"},
    }
    before = target.read_bytes()
    refused = vwr.admin("PUT", "evt-1/page", {"accent": "yellow"})
    assert refused.status == 422
    assert refused.body["code"] == "validation_failed"
    assert target.read_bytes() == before  # nothing changed
    assert vwr.request("PUT", "/vwr/admin/events/evt-1/page", page).status == 401
    # Changing the event keeps its look (the admin PUT updates, never replaces, the item).
    vwr.open_event("evt-1", batch_size=7)
    assert vwr.admin("GET", "evt-1/page").body["name"] == "봄 콘서트"
    # A PUT replaces the look as a whole.
    assert vwr.admin("PUT", "evt-1/page", {}).status == 200
    assert json.loads(target.read_text())["eventId"] == "evt-1"
    assert "name" not in json.loads(target.read_text())


@pytest.mark.integration
async def test_the_edge_serves_shell_assets_and_documents_with_explicit_cache_rules(
    vwr: Any, edge: TestClient[Any, Any]
) -> None:
    await asyncio.to_thread(vwr.open_event, "evt-1")
    await asyncio.to_thread(vwr.admin, "PUT", "evt-1/page", {"name": "Gig"})
    shell = await edge.get("/vwr/evt-1")
    assert shell.headers["Cache-Control"] == "public, max-age=60"
    asset = await edge.get("/vwr/assets/v1/messages.json")
    assert asset.status == 200
    assert "immutable" in asset.headers["Cache-Control"]
    assert "max-age=31536000" in asset.headers["Cache-Control"]
    assert (await edge.get("/vwr/assets/waiting.js")).status == 404  # only versioned paths
    assert (await edge.get("/vwr/assets/v1/../index.html")).status == 404
    document = await edge.get("/vwr/events/evt-1.json")
    assert document.status == 200
    max_age = int(re.search(r"max-age=(\d+)", document.headers["Cache-Control"]).group(1))  # type: ignore[union-attr]
    assert max_age <= 60
    assert (await document.json())["name"] == "Gig"
    assert (await edge.get("/vwr/events/evt-none.json")).status == 404
    assert (await edge.get("/vwr/events/..%2Fedge-config.json")).status == 404


@pytest.mark.integration
def test_a_change_to_the_event_republishes_its_document_with_the_method(vwr: Any) -> None:
    """The queueing method is the event's admission setting (another route writes it on the
    event's item); any change to the event brings the document up to date."""
    vwr.open_event("evt-9")
    target = Path(document_target(vwr.settings.edge_config.target, "evt-9"))
    assert "queueMethod" not in json.loads(target.read_text())
    vwr.runtime.store._db.update_item(
        TableName=vwr.settings.tables.counters,
        Key={"eventId": {"S": "evt-9"}},
        UpdateExpression="SET queueMethod = :m",
        ExpressionAttributeValues={":m": {"S": "random"}},
    )
    vwr.open_event("evt-9", batch_size=5)
    assert json.loads(target.read_text())["queueMethod"] == "random"
