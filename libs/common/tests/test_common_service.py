from __future__ import annotations

import asyncio
import io
import json
import os
import signal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from urr_common.logs import configure_logging, get_logger
from urr_common.payloads import json_response, read_json
from urr_common.problems import Conflict
from urr_common.service import (
    READINESS_KEY,
    create_service_app,
    metrics_text,
    serve,
    start_metrics_listener,
)
from urr_common.settings import HttpSettings, LogSettings, MetricsSettings, ServiceSettings
from urr_devstack.procs import free_port


class Item(BaseModel):
    name: str = Field(min_length=1, max_length=20)
    count: int = Field(ge=0)


def build_app() -> web.Application:
    app = create_service_app(ServiceSettings(http=HttpSettings(max_body_bytes=2048)))

    async def create(request: web.Request) -> web.Response:
        item = await read_json(request, Item)
        if item.name == "taken":
            raise Conflict("that name is taken", code="name_taken")
        return json_response(item, status=201)

    async def crash(_: web.Request) -> web.Response:
        raise RuntimeError("boom")

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    app.router.add_post("/items", create)
    app.router.add_get("/crash", crash)
    app.router.add_get("/redirect", redirect)
    return app


async def _problem(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["status"] == response.status
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    return body


async def test_valid_body_is_accepted(aiohttp_client) -> None:
    client = await aiohttp_client(build_app())
    response = await client.post("/items", json={"name": "a", "count": 2})
    assert response.status == 201
    assert await response.json() == {"name": "a", "count": 2}
    assert len(response.headers["X-Request-Id"]) == 32


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "malformed_json"),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400, "malformed_json"),
        (b'{"name": "a"}', {"Content-Type": "application/json"}, 422, "validation_failed"),
        (b'{"name": "a", "count": 1}', {"Content-Type": "text/plain"}, 415,
         "unsupported_media_type"),
        (b'{"name": "' + b"x" * 4096 + b'"}', {"Content-Type": "application/json"}, 413,
         "payload_too_large"),
        (b'{"name": "taken", "count": 1}', {"Content-Type": "application/json"}, 409,
         "name_taken"),
    ],
)  # fmt: skip
async def test_bad_bodies_become_problems(aiohttp_client, body, headers, status, code) -> None:
    client = await aiohttp_client(build_app())
    response = await client.post("/items", data=body, headers=headers)
    assert response.status == status
    problem = await _problem(response)
    assert problem["code"] == code
    assert problem["type"] == f"urn:urr:problem:{code}"
    assert problem["instance"] == "/items"


async def test_validation_problem_lists_fields_without_echoing_values(aiohttp_client) -> None:
    client = await aiohttp_client(build_app())
    response = await client.post("/items", json={"name": "secret-value-xyz" * 3, "count": -1})
    problem = await _problem(response)
    fields = {error["field"] for error in problem["errors"]}
    assert fields == {"name", "count"}
    assert "secret-value-xyz" not in json.dumps(problem)


async def test_unexpected_error_is_a_logged_500_problem(aiohttp_client) -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(), service="test", stream=stream)
    client = await aiohttp_client(build_app())
    response = await client.get("/crash", headers={"X-Request-Id": "req-123"})
    assert response.status == 500
    problem = await _problem(response)
    assert problem["code"] == "internal_error"
    assert "boom" not in json.dumps(problem)
    assert response.headers["X-Request-Id"] == "req-123"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    error = next(line for line in lines if line["event"] == "unhandled_error")
    assert error["request_id"] == "req-123"
    assert error["service"] == "test"
    assert "RuntimeError: boom" in error["exception"]


async def test_routing_errors_are_problems_and_keep_allow(aiohttp_client) -> None:
    client = await aiohttp_client(build_app())
    missing = await client.get("/nope")
    assert missing.status == 404
    assert (await _problem(missing))["code"] == "not_found"
    wrong_method = await client.delete("/items")
    assert wrong_method.status == 405
    assert (await _problem(wrong_method))["code"] == "method_not_allowed"
    assert wrong_method.headers["Allow"] == "POST"


async def test_redirects_pass_through_untouched(aiohttp_client) -> None:
    client = await aiohttp_client(build_app())
    response = await client.get("/redirect", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/elsewhere"


async def test_unsafe_request_id_is_replaced(aiohttp_client) -> None:
    client = await aiohttp_client(build_app())
    response = await client.get("/health/live", headers={"X-Request-Id": "a b\tc"})
    assert response.headers["X-Request-Id"] != "a b\tc"
    assert len(response.headers["X-Request-Id"]) == 32


async def test_health_readiness_and_metrics(aiohttp_client) -> None:
    app = build_app()
    healthy = True

    async def dependency() -> None:
        if not healthy:
            raise ConnectionError("db down")

    app[READINESS_KEY].add_check("db", dependency)
    client = await aiohttp_client(app)
    assert (await client.get("/health/live")).status == 200
    ready = await client.get("/health/ready")
    assert ready.status == 200
    assert await ready.json() == {"status": "ready", "checks": {"db": "ok"}}
    healthy = False
    unready = await client.get("/health/ready")
    assert unready.status == 503
    assert (await unready.json())["checks"]["db"] == "ConnectionError: db down"
    await client.post("/items", json={"name": "a", "count": 1})
    metrics = metrics_text(client.app)
    assert 'urr_http_requests_total{method="POST",route="/items",status="2xx"} 1.0' in metrics
    assert 'urr_http_requests_total{method="GET",route="unmatched"' not in metrics


async def test_unmatched_paths_share_one_metrics_label(aiohttp_client) -> None:
    client = await aiohttp_client(build_app())
    for path in ("/a", "/b", "/c"):
        await client.get(path)
    metrics = metrics_text(client.app)
    assert 'urr_http_requests_total{method="GET",route="unmatched",status="4xx"} 3.0' in metrics


async def test_two_apps_in_one_process_have_separate_registries(aiohttp_client) -> None:
    first, second = await aiohttp_client(build_app()), await aiohttp_client(build_app())
    await first.post("/items", json={"name": "a", "count": 1})
    text = metrics_text(second.app)
    assert 'route="/items"' not in text


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
async def test_fuzzed_bodies_never_cause_a_server_error(aiohttp_client, body: bytes) -> None:
    client = await aiohttp_client(build_app())
    response = await client.post("/items", data=body, headers={"Content-Type": "application/json"})
    assert response.status in {201, 400, 409, 413, 422}
    await response.read()


async def test_graceful_shutdown_finishes_the_request_in_flight() -> None:
    app = create_service_app(ServiceSettings())
    entered = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(0.6)
        return web.Response(text="finished")

    app.router.add_get("/slow", slow)
    ports: list[int] = []
    listening = asyncio.Event()

    def started(port: int) -> None:
        ports.append(port)
        listening.set()

    settings = HttpSettings(port=0, drain_delay_s=0.3, shutdown_timeout_s=5)
    server = asyncio.create_task(serve(app, settings, started=started))
    await asyncio.wait_for(listening.wait(), 5)
    base = f"http://127.0.0.1:{ports[0]}"
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(session.get(f"{base}/slow"))
        await entered.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.1)
        async with session.get(f"{base}/health/ready") as ready:
            assert ready.status == 503
            assert (await ready.json())["status"] == "draining"
        response = await in_flight
        assert response.status == 200
        assert await response.text() == "finished"
        response.release()
        await asyncio.wait_for(server, 5)
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{base}/health/live")


async def test_metrics_are_served_on_their_own_listener_and_the_public_port_answers_404() -> None:
    """Issue 16: /metrics was public on every service's port. Real listeners via ``serve``."""
    metrics_port = free_port()
    app = create_service_app(ServiceSettings(metrics=MetricsSettings(port=metrics_port)))
    ports: list[int] = []
    listening = asyncio.Event()

    def started(port: int) -> None:
        ports.append(port)
        listening.set()

    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, HttpSettings(port=0), stop=stop, started=started))
    try:
        await asyncio.wait_for(listening.wait(), 10)
        public = f"http://127.0.0.1:{ports[0]}"
        private = f"http://127.0.0.1:{metrics_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{public}/health/live") as live:
                assert live.status == 200
            async with session.get(f"{public}/metrics") as hidden:
                assert hidden.status == 404
                assert hidden.content_type == "application/problem+json"
            async with session.get(f"{private}/metrics") as scraped:
                assert scraped.status == 200
                text = await scraped.text()
            assert 'urr_http_requests_total{method="GET",route="/health/live",status="2xx"}' in text
            async with session.get(f"{private}/health/live") as other:
                assert other.status == 404  # the metrics listener serves metrics only
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{metrics_port}/metrics")


async def test_metrics_can_be_turned_off() -> None:
    app = create_service_app(ServiceSettings(metrics=MetricsSettings(enabled=False)))
    assert await start_metrics_listener(app, MetricsSettings(enabled=False), 0) is None


def test_get_logger_is_usable_before_configuration() -> None:
    get_logger(__name__).info("no configuration needed")


async def test_generated_request_ids_are_random_hex_and_metrics_count_every_request(
    aiohttp_client,
) -> None:
    client = await aiohttp_client(build_app())
    ids = set()
    for _ in range(3):
        response = await client.get("/health/live")
        ids.add(response.headers["X-Request-Id"])
    assert len(ids) == 3
    assert all(int(value, 16) >= 0 and len(value) == 32 for value in ids)
    metrics = metrics_text(client.app)
    # Labelled children are cached per (method, route, status class): each request still counts.
    assert 'urr_http_requests_total{method="GET",route="/health/live",status="2xx"} 3.0' in metrics
    assert 'urr_http_request_duration_seconds_count{method="GET",route="/health/live"} 3.0' in (
        metrics
    )
