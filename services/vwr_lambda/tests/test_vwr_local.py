"""The local stand-ins: API Gateway emulator, CloudFront emulator, scheduler."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import operator
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from urr_common.http1_testing import Http1TestServer
from urr_common.service import REGISTRY_KEY, metrics_text
from urr_common.settings import load_settings
from urr_vwr_lambda.keys import ensure_local_keys
from urr_vwr_lambda.local import GC_GEN0_THRESHOLD, apigw, containers, scheduler
from urr_vwr_lambda.local import edge as edge_emulator
from urr_vwr_lambda.local.apigw_server import ApiSite
from urr_vwr_lambda.local.pipe_container import LoopContainer, PipeContainer
from urr_vwr_lambda.settings import EdgeEmulatorSettings, SchedulerSettings, VwrSettings

pytestmark = pytest.mark.integration


def api_test_server(app: web.Application, server: str) -> TestServer:
    """The test server of an emulator ``app`` on the listener ``URR_LOCAL_API_SERVER`` names."""
    if server == "aiohttp":
        return TestServer(app)
    return Http1TestServer(
        app,
        lambda runner, host: ApiSite(
            runner, host, 0, max_body_bytes=64 * 1024, drain_timeout_s=2.0
        ),
    )


@pytest.fixture(params=["aiohttp", "protocol"])
def api_server(request: pytest.FixtureRequest) -> str:
    """Both listeners of the emulator answer every test that takes this."""
    return str(request.param)


@pytest.fixture
async def api(vwr: Any, api_server: str) -> AsyncIterator[TestClient[Any, Any]]:
    ensure_local_keys(vwr.settings.vwr_tokens)
    app = apigw.create_app(vwr.settings, runtime=vwr.runtime)
    async with TestClient(api_test_server(app, api_server)) as c:
        yield c


async def test_the_api_emulator_turns_http_into_proxy_events(
    vwr: Any, api: TestClient[Any, Any]
) -> None:
    await asyncio.to_thread(vwr.open_event, "evt-1")
    request_id = str(uuid.uuid4())
    assigned = await api.post("/vwr/assign/evt-1", json={"requestId": request_id})
    assert assigned.status == 201
    assert (await assigned.json())["position"] == 1
    status = await api.get("/vwr/status/evt-1")
    etag = status.headers["ETag"]
    assert (await api.get("/vwr/status/evt-1", headers={"If-None-Match": etag})).status == 304
    await asyncio.to_thread(vwr.admin, "POST", "evt-1/advance", {"by": 1})
    checked = await api.get(f"/vwr/check/evt-1/{request_id}")
    assert checked.status == 200
    assert "HttpOnly" in checked.headers["Set-Cookie"]
    bad = await api.post(
        "/vwr/assign/evt-1", data=b"\xff\xfe", headers={"Content-Type": "application/json"}
    )
    assert bad.status == 400
    assert bad.headers["Content-Type"] == "application/problem+json"
    assert (await api.get("/health/live")).status == 200
    assert (await api.get("/health/ready")).status == 200


async def upstream_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "path": request.path_qs,
                "forwardedFor": request.headers.get("X-Forwarded-For"),
                "host": request.headers.get("Host"),
            },
            headers={"X-Upstream": "yes"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def edge(
    vwr: Any, api: TestClient[Any, Any], edge_test_server: Callable[[web.Application], TestServer]
) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(await upstream_app())) as upstream:
        settings = load_settings(
            EdgeEmulatorSettings,
            gateway_url=str(upstream.make_url("")).rstrip("/"),
            api_url=str(api.make_url("")).rstrip("/"),
            edge_config={"target": vwr.settings.edge_config.target},
        )
        async with TestClient(edge_test_server(edge_emulator.create_app(settings))) as client:
            yield client


async def test_the_edge_emulator_applies_the_behaviours(
    vwr: Any, edge: TestClient[Any, Any]
) -> None:
    await asyncio.to_thread(vwr.open_event, "evt-1")
    await asyncio.sleep(0.6)  # the file source looks again after half a second
    origin = await edge.get("/anything?x=1")
    assert origin.headers["X-Upstream"] == "yes"
    echoed = await origin.json()
    assert echoed["path"] == "/anything?x=1"
    assert echoed["forwardedFor"] == "127.0.0.1"
    page = await edge.get("/events/evt-1", allow_redirects=False)
    assert page.status == 302
    assert page.headers["Location"] == "/vwr/evt-1?return=%2Fevents%2Fevt-1"
    api_path = await edge.get("/api/v1/seats/evt-1")
    assert api_path.status == 403
    assert (await api_path.json())["code"] == "vwr_token_missing"
    waiting = await edge.get("/vwr/evt-1?return=%2Fevents%2Fevt-1")
    assert waiting.headers["Content-Type"].startswith("text/html")
    assert 'role="progressbar"' in await waiting.text()
    script = await edge.get("/vwr/assets/v1/waiting.js")
    assert script.headers["Content-Type"] in ("text/javascript", "application/javascript")
    assert (await edge.get("/vwr/assets/v1/nope.js")).status == 404
    status = await edge.get("/vwr-api/vwr/status/evt-1")  # prefix stripped
    assert status.status == 200
    assert (await status.json())["eventId"] == "evt-1"
    assert (await edge.get("/health/live")).status == 200


async def test_the_edge_emulator_never_hands_one_viewers_cookie_to_another(
    vwr: Any, edge_test_server: Callable[[web.Application], TestServer]
) -> None:
    """The origin's Set-Cookie is for the viewer it answered: the edge keeps no cookie jar.

    The origin is named by host name, as in compose (``http://gateway:3001``): a client's
    default jar refuses cookies only from IP addresses, so an IP-only test would miss it.
    """

    async def set_cookie(request: web.Request) -> web.Response:
        response = web.json_response({})
        response.set_cookie("access_token", "viewer-a-secret", path="/")
        return response

    async def echo_cookie(request: web.Request) -> web.Response:
        return web.json_response({"cookie": request.headers.get("Cookie")})

    origin_app = web.Application()
    origin_app.router.add_post("/login", set_cookie)
    origin_app.router.add_get("/whoami", echo_cookie)
    async with TestClient(TestServer(origin_app)) as upstream:
        settings = load_settings(
            EdgeEmulatorSettings,
            gateway_url=f"http://localhost:{upstream.port}",
            api_url="http://127.0.0.1:9",
            edge_config={"target": vwr.settings.edge_config.target},
        )
        async with TestClient(edge_test_server(edge_emulator.create_app(settings))) as viewer_a:
            logged_in = await viewer_a.post("/login")
            assert "viewer-a-secret" in logged_in.headers["Set-Cookie"]  # viewer A gets it
            viewer_a.session.cookie_jar.clear()  # viewer B: a browser with no cookies
            anonymous = await viewer_a.get("/whoami")
            assert (await anonymous.json())["cookie"] is None
            mine = await viewer_a.get("/whoami", headers={"Cookie": "theme=dark"})
            assert (await mine.json())["cookie"] == "theme=dark"


async def test_the_edge_emulator_answers_502_when_the_origin_is_down(
    vwr: Any, edge_test_server: Callable[[web.Application], TestServer]
) -> None:
    settings = load_settings(
        EdgeEmulatorSettings,
        gateway_url="http://127.0.0.1:9",
        api_url="http://127.0.0.1:9",
        edge_config={"target": vwr.settings.edge_config.target},
    )
    async with TestClient(edge_test_server(edge_emulator.create_app(settings))) as client:
        answer = await client.get("/")
        assert answer.status == 502
        assert (await answer.json())["code"] == "bad_gateway"


async def test_the_scheduler_invokes_the_advancer(vwr: Any) -> None:
    vwr.runtime.clock = time.time
    await asyncio.to_thread(vwr.open_event, "evt-1", batch_size=5)
    await asyncio.to_thread(vwr.assign, "evt-1")
    settings = load_settings(SchedulerSettings, interval_s=0.2)
    app = scheduler.create_app(settings, vwr.runtime)
    async with TestClient(TestServer(app)) as client:
        for _ in range(100):
            if app[scheduler.STATE_KEY].runs >= 1:
                break
            await asyncio.sleep(0.1)
        assert (await client.get("/health/ready")).status == 200
        status = await asyncio.to_thread(vwr.status, "evt-1")
        assert status.body["servingCounter"] == 1
        # The line's two ends are on /metrics for the dashboard.
        registry = app[REGISTRY_KEY]
        labels = {"event_id": "evt-1"}
        assert registry.get_sample_value("urr_vwr_serving_counter", labels) == 1
        assert registry.get_sample_value("urr_vwr_next_position", labels) == 1


def test_the_scheduler_shows_the_last_cycle_and_drops_events_that_left() -> None:
    result = {
        "cycles": [
            [{"eventId": "a", "servingCounter": 1, "nextPosition": 9}],
            [{"eventId": "a", "servingCounter": 4, "nextPosition": 9}],
        ]
    }
    assert scheduler.last_positions(result) == {"a": (4, 9)}
    assert scheduler.last_positions({"cycles": []}) == {}
    registry = CollectorRegistry()
    gauges = scheduler.PositionGauges(registry)
    gauges.show({"a": (4, 9), "b": (0, 3)})
    gauges.show({"a": (5, 9)})
    assert registry.get_sample_value("urr_vwr_serving_counter", {"event_id": "a"}) == 5
    assert registry.get_sample_value("urr_vwr_next_position", {"event_id": "b"}) is None


@pytest.mark.timeout(120)
async def test_the_api_emulator_runs_the_deployed_handler_in_worker_processes(
    vwr: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], api_server: str
) -> None:
    """Worker processes read the same environment a Lambda would (nothing passed in), and
    print no EMF metrics line per invocation unless the user asked for them."""
    settings = vwr.settings
    keys = settings.vwr_tokens.private_key_file
    environment = {
        "URR_AWS__ENDPOINT_URL": str(settings.aws.endpoint_url),
        "URR_AWS__DYNAMODB_ENDPOINT_URL": str(settings.aws.dynamodb_endpoint_url),
        "URR_AWS__ACCESS_KEY_ID": "testing",
        "URR_AWS__SECRET_ACCESS_KEY": "testing",
        "URR_TABLES__COUNTERS": settings.tables.counters,
        "URR_TABLES__POSITIONS": settings.tables.positions,
        "URR_VWR_TOKENS__PRIVATE_KEY_FILE": str(keys),
        "URR_EDGE_CONFIG__TARGET": settings.edge_config.target,
        "URR_ACCESS_TRUST__JWKS_URL": "",
        "URR_LOCAL_API_PROCESSES": "1",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED")
    await asyncio.to_thread(vwr.open_event, "evt-1")
    app = apigw.create_app(load_settings(VwrSettings))
    async with TestClient(api_test_server(app, api_server)) as client:
        answer = await client.post("/vwr/assign/evt-1", json={"requestId": str(uuid.uuid4())})
        assert answer.status == 201
        assert (await answer.json())["position"] == 1
        # The warm container's heap was settled after its warm-up (frozen, rarer collections).
        pool = app[apigw.CONTAINERS_KEY]
        threshold = await pool.invoke(gc.get_threshold, key=None, read=True)
        assert threshold[0] == GC_GEN0_THRESHOLD
        assert await pool.invoke(gc.get_freeze_count, key=None, read=True) > 10_000
    assert '"_aws"' not in capfd.readouterr().out


def test_a_users_explicit_metrics_choice_wins_in_the_containers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    apigw.quiet_container()
    assert os.environ["POWERTOOLS_METRICS_DISABLED"] == "false"
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED")
    apigw.quiet_container()
    assert os.environ["POWERTOOLS_METRICS_DISABLED"] == "true"


async def test_the_api_emulator_throttles_past_its_pending_limit(vwr: Any, api_server: str) -> None:
    """Beyond ``local_api_max_pending`` in flight, callers get 429 at once, as from API
    Gateway's throttle, and nothing is queued for them."""
    await asyncio.to_thread(vwr.open_event, "busy")
    settings = vwr.settings.model_copy(
        update={"local_api_max_pending": 1, "local_api_max_pending_reads": 1}
    )
    app = apigw.create_app(settings, runtime=vwr.runtime)
    async with TestClient(api_test_server(app, api_server)) as client:
        answers = await asyncio.gather(*(client.get("/vwr/status/busy") for _ in range(6)))
        statuses = sorted(answer.status for answer in answers)
        throttled = [answer for answer in answers if answer.status == 429]
        assert statuses[0] == 200
        assert throttled, statuses
        problem = await throttled[0].json(content_type=None)
        assert problem["code"] == "throttled"
        assert throttled[0].headers["Retry-After"] == str(apigw.THROTTLE_RETRY_AFTER_S)
        assert throttled[0].headers["Content-Type"].startswith("application/problem+json")
        # Once the burst is over, the next call goes through.
        assert (await client.get("/vwr/status/busy")).status == 200
        # Every call that ran is timed, waiting apart from running; turned-away ones are not.
        metrics = metrics_text(client.app)
        ran = len(answers) - len(throttled) + 1
        assert f'urr_vwr_apigw_container_wait_seconds_count{{kind="read"}} {ran}.0' in metrics
        assert f'urr_vwr_apigw_invocation_seconds_count{{kind="read"}} {ran}.0' in metrics
        assert f"urr_vwr_apigw_throttled_total {len(throttled)}.0" in metrics


def test_a_waiters_calls_go_to_the_container_that_knows_it() -> None:
    request_id = str(uuid.uuid4())
    assign_body = f'{{"requestId": "{request_id}"}}'.encode()
    assert containers.sticky_key(f"/vwr/check/evt/{request_id}", b"") == request_id
    assert containers.sticky_key("/vwr/assign/evt", assign_body) == request_id
    for junk in (b"", b"[1]", b"{", b'{"requestId": 5}', b"\xff"):
        assert containers.sticky_key("/vwr/assign/evt", junk) is None
    assert containers.sticky_key("/vwr/status/evt", b"") is None
    preferred = containers.preferred_container(request_id, 3)
    assert preferred is not None
    assert preferred == containers.preferred_container(request_id, 3)
    assert containers.preferred_container(None, 3) is None
    # The preferred container when it is idle; otherwise whichever idle one is next in turn.
    assert containers.choose_idle([0, 1, 2], 1, turn=7) == 1
    assert containers.choose_idle([0, 2], 1, turn=1) == 2
    assert containers.choose_idle([0, 2], None, turn=2) == 0


def _recording_job(ran: list[str]) -> Any:
    def job(name: str, seconds: float) -> str:
        ran.append(f"start {name} on {threading.current_thread().name.split('_')[0]}")
        time.sleep(seconds)
        ran.append(f"end {name}")
        return name

    return job


async def test_no_call_waits_while_a_container_is_idle() -> None:
    """A check whose preferred container is busy runs on the idle one at once."""
    ran: list[str] = []
    job = _recording_job(ran)
    executors = [ThreadPoolExecutor(1, thread_name_prefix=f"c{i}") for i in range(2)]
    pool = containers.Containers(executors)
    # Two keys that hash to container 0: the second must not wait for the first.
    keys = [
        k
        for k in (str(uuid.uuid4()) for _ in range(200))
        if containers.preferred_container(k, 2) == 0
    ][:2]
    try:
        slow = asyncio.create_task(pool.invoke(job, "assign", 0.3, key=keys[0], read=False))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await pool.invoke(job, "check", 0.0, key=keys[1], read=True) == "check"
        assert time.monotonic() - started < 0.2
        assert await slow == "assign"
    finally:
        pool.shutdown()
    assert ran[:3] == ["start assign on c0", "start check on c1", "end check"]


async def test_when_every_container_is_busy_waiting_reads_go_first() -> None:
    ran: list[str] = []
    timed: list[tuple[bool, float, float]] = []
    job = _recording_job(ran)
    pool = containers.Containers(
        [ThreadPoolExecutor(1, thread_name_prefix="c0")],
        observe=lambda read, waited, took: timed.append((read, waited, took)),
    )
    try:
        first = asyncio.create_task(pool.invoke(job, "assign-1", 0.2, key=None, read=False))
        await asyncio.sleep(0.05)  # assign-1 is running; the next two wait
        second = asyncio.create_task(pool.invoke(job, "assign-2", 0.0, key=None, read=False))
        check = asyncio.create_task(pool.invoke(job, "check", 0.0, key=None, read=True))
        assert list(await asyncio.gather(first, second, check)) == ["assign-1", "assign-2", "check"]
        # The check waited out assign-1's run (not assign-2's); assign-1 waited for nothing.
        (_, first_waited, first_ran), (read, check_waited, _) = timed[0], timed[1]
        assert first_waited < 0.05
        assert first_ran >= 0.2
        assert read
        assert 0.1 <= check_waited < first_ran
        # A caller that gave up while waiting costs no invocation.
        busy = asyncio.create_task(pool.invoke(job, "assign-3", 0.2, key=None, read=False))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(pool.invoke(job, "abandoned", 0.0, key=None, read=True))
        await asyncio.sleep(0.01)
        gone.cancel()
        assert await busy == "assign-3"
        await asyncio.sleep(0.05)
        assert pool.idle == 1
    finally:
        pool.shutdown()
    assert ran == [
        "start assign-1 on c0",
        "end assign-1",
        "start check on c0",
        "end check",
        "start assign-2 on c0",
        "end assign-2",
        "start assign-3 on c0",
        "end assign-3",
    ]


def test_the_warm_up_event_is_a_harmless_status_read(vwr: Any) -> None:
    from urr_vwr_lambda.local.proxy_events import warmup_event

    answer = vwr.call(warmup_event())
    assert (answer.status, answer.body["code"]) == (404, "event_not_found")


@pytest.mark.timeout(60)
def test_a_pipe_container_runs_calls_in_its_own_process_and_says_when_it_dies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    container = PipeContainer(
        multiprocessing.get_context("spawn"), initializer=apigw.quiet_container
    )
    try:
        pid = container.submit(os.getpid).result(timeout=30)
        assert pid != os.getpid()
        assert container.submit(os.getenv, "POWERTOOLS_METRICS_DISABLED").result() == "true"
        with pytest.raises(ZeroDivisionError):
            container.submit(operator.truediv, 1, 0).result(timeout=10)
        assert container.submit(operator.add, 2, 3).result(timeout=10) == 5  # still serving
        with pytest.raises(BrokenProcessPool):
            container.submit(os._exit, 3).result(timeout=10)
        with pytest.raises(BrokenProcessPool):
            container.submit(os.getpid).result(timeout=10)
    finally:
        container.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_a_pipe_container_stops_after_its_call_in_flight() -> None:
    container = PipeContainer(multiprocessing.get_context("spawn"))
    slow = container.submit(time.sleep, 0.3)
    container.shutdown(wait=True)
    assert slow.result(timeout=0) is None
    with pytest.raises(BrokenProcessPool):
        container.submit(os.getpid).result(timeout=1)


@pytest.mark.timeout(60)
async def test_a_loop_container_answers_on_the_loop_and_says_when_it_dies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The emulator's container: no reader thread, each answer read by the event loop."""
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    threads = threading.active_count()
    container = LoopContainer(
        multiprocessing.get_context("spawn"), initializer=apigw.quiet_container
    )
    try:
        assert threading.active_count() == threads
        pid = await asyncio.wait_for(container.call(os.getpid), 30)
        assert pid != os.getpid()
        assert await container.call(os.getenv, "POWERTOOLS_METRICS_DISABLED") == "true"
        with pytest.raises(ZeroDivisionError):
            await asyncio.wait_for(container.call(operator.truediv, 1, 0), 10)
        # An answer nobody waits for any more (the caller went away) is read and dropped.
        gone = container.call(time.sleep, 0.1)
        gone.cancel()
        assert await asyncio.wait_for(container.call(operator.add, 2, 3), 10) == 5
        # A big answer (more than the pipe holds at once) arrives whole.
        assert len(await asyncio.wait_for(container.call(operator.mul, "x", 1 << 20), 10)) == (
            1 << 20
        )
        with pytest.raises(BrokenProcessPool):
            await asyncio.wait_for(container.call(os._exit, 3), 10)
        with pytest.raises(BrokenProcessPool):
            await asyncio.wait_for(container.call(os.getpid), 10)
    finally:
        container.shutdown(wait=True)


@pytest.mark.timeout(60)
async def test_a_loop_container_stops_after_its_call_in_flight() -> None:
    container = LoopContainer(multiprocessing.get_context("spawn"))
    assert await asyncio.wait_for(container.call(operator.add, 1, 1), 30) == 2
    slow = container.call(time.sleep, 0.3)
    await asyncio.sleep(0.05)
    container.shutdown(wait=True)
    assert slow.result() is None
    with pytest.raises(BrokenProcessPool):
        await asyncio.wait_for(container.call(os.getpid), 1)


def test_the_emulators_request_ids_are_distinct_version_4_uuids() -> None:
    from urr_vwr_lambda.local.proxy_events import request_uuid

    ids = {request_uuid() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)


@pytest.mark.timeout(60)
async def test_containers_feed_loop_containers_as_the_emulator_runs_them() -> None:
    """Warm-up in each, then calls spread over idle ones, timed, a failure kept to its call."""
    spawn = multiprocessing.get_context("spawn")
    timed: list[tuple[bool, float, float]] = []
    pool = containers.Containers(
        [LoopContainer(spawn) for _ in range(2)],
        observe=lambda read, waited, took: timed.append((read, waited, took)),
    )
    try:
        await asyncio.wait_for(pool.warm(operator.add, 1, 2), 30)
        calls = [pool.invoke(os.getpid, key=str(n), read=n % 2 == 0) for n in range(8)]
        pids = await asyncio.wait_for(asyncio.gather(*calls), 10)
        assert len(set(pids)) == 2
        assert os.getpid() not in pids
        assert [read for read, _, _ in timed].count(True) == 4
        with pytest.raises(ZeroDivisionError):
            await pool.invoke(operator.truediv, 1, 0, key=None, read=True)
        assert await pool.invoke(operator.add, 2, 3, key=None, read=False) == 5
        assert pool.idle == 2
    finally:
        pool.shutdown()
