"""Issue 15, 3b: only requests through the distribution are answered (origin-verify header).

The secret lives in Secrets Manager on the session's moto server (over HTTP); rotation is
replayed with the stages Secrets Manager itself moves.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from urr_common.http1 import Http1Site
from urr_common.settings import SettingsError, load_settings
from urr_vwr_lambda.gates.origin import OriginSecrets
from urr_vwr_lambda.local import apigw
from urr_vwr_lambda.local import edge as edge_emulator
from urr_vwr_lambda.settings import EdgeEmulatorSettings, VwrSettings

OLD = "o" * 40
NEW = "n" * 40
HEADER = "X-Origin-Verify"


@pytest.fixture
def secrets(secretsmanager: Any) -> Any:
    return secretsmanager


@pytest.fixture
def secret_id(secrets: Any) -> str:
    name = f"origin-verify-{uuid.uuid4().hex[:8]}"
    secrets.create_secret(Name=name, SecretString=OLD)
    return name


def with_origin(settings: VwrSettings, secret_id: str, cache_s: float = 0.0) -> VwrSettings:
    gates = settings.gates.model_copy(
        update={
            "origin": settings.gates.origin.model_copy(
                update={"secret_id": secret_id, "cache_s": cache_s}
            )
        }
    )
    return settings.model_copy(update={"gates": gates})


@pytest.fixture
def guarded(vwr_settings: VwrSettings, secret_id: str, make_vwr: Any) -> Any:
    return make_vwr(with_origin(vwr_settings, secret_id))


async def start(
    app: web.Application, site: Callable[[web.AppRunner, str, int], web.BaseSite] | None = None
) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = (site or web.TCPSite)(runner, "127.0.0.1", 0)
    await listener.start()
    port = listener.port if isinstance(listener, Http1Site) else runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def assign(vwr: Any, value: str | None, **headers: str) -> Any:
    if value is not None:
        headers[HEADER] = value
    return vwr.assign("evt-o", **headers)


def test_requests_without_the_origin_header_are_403(guarded: Any) -> None:
    guarded.open_event("evt-o")  # admin routes are IAM/token guarded, not origin checked
    for value in (None, "", "wrong", OLD[:-1], OLD + "x", OLD.upper()):
        answer = assign(guarded, value)
        assert (answer.status, answer.body["code"]) == (403, "origin_forbidden"), value
        assert answer.headers["content-type"] == "application/problem+json"
    status = guarded.status("evt-o")
    assert (status.status, status.body["code"]) == (403, "origin_forbidden")
    assert guarded.status("evt-o", **{HEADER: OLD}).body["nextPosition"] == 0
    placed = assign(guarded, OLD)
    assert placed.status == 201
    # Any header case will do (API Gateway keeps the viewer's spelling).
    check = guarded.request(
        "GET", f"/vwr/check/evt-o/{placed.body['requestId']}", headers={HEADER.lower(): OLD}
    )
    assert check.status == 200


def test_rotation_accepts_current_and_pending_then_only_the_new(
    guarded: Any, secrets: Any, secret_id: str
) -> None:
    guarded.open_event("evt-o")
    secrets.put_secret_value(SecretId=secret_id, SecretString=NEW, VersionStages=["AWSPENDING"])
    # While the distribution moves to the new value, both are answered.
    assert assign(guarded, OLD).status == 201
    assert assign(guarded, NEW).status == 201
    versions = secrets.list_secret_version_ids(SecretId=secret_id)["Versions"]
    new_id = next(v["VersionId"] for v in versions if "AWSPENDING" in v["VersionStages"])
    old_id = next(v["VersionId"] for v in versions if "AWSCURRENT" in v["VersionStages"])
    secrets.update_secret_version_stage(
        SecretId=secret_id,
        VersionStage="AWSCURRENT",
        MoveToVersionId=new_id,
        RemoveFromVersionId=old_id,
    )
    secrets.update_secret_version_stage(
        SecretId=secret_id, VersionStage="AWSPENDING", RemoveFromVersionId=new_id
    )
    assert assign(guarded, NEW).status == 201
    assert assign(guarded, OLD).body["code"] == "origin_forbidden"


def test_a_container_keeps_the_values_for_the_cache_time(secrets: Any, secret_id: str) -> None:
    now = [1000.0]
    cached = OriginSecrets(secrets, secret_id, cache_s=60, clock=lambda: now[0])
    assert cached.values() == (OLD,)
    secrets.put_secret_value(SecretId=secret_id, SecretString=NEW, VersionStages=["AWSPENDING"])
    now[0] += 59
    assert cached.values() == (OLD,)
    now[0] += 1
    assert cached.values() == (OLD, NEW)
    # Secrets Manager failing: the values in hand stay good.
    secrets.delete_secret(SecretId=secret_id, ForceDeleteWithoutRecovery=True)
    now[0] += 60
    assert cached.values() == (OLD, NEW)


def test_the_cached_values_never_outlive_the_cache_time(secrets: Any, secret_id: str) -> None:
    """The edge emulator reads them on its event loop without a call: stale means None."""
    now = [1000.0]
    cached = OriginSecrets(secrets, secret_id, cache_s=60, clock=lambda: now[0])
    assert cached.cached() is None  # nothing fetched yet
    assert cached.values() == (OLD,)
    now[0] += 59
    assert cached.cached() == (OLD,)
    now[0] += 1
    assert cached.cached() is None  # stale: the caller must fetch again
    assert cached.values() == (OLD,)
    assert cached.cached() == (OLD,)


def test_an_unreadable_or_weak_secret_lets_nothing_through(
    vwr_settings: VwrSettings, secrets: Any, make_vwr: Any
) -> None:
    missing = make_vwr(with_origin(vwr_settings, "no-such-secret"))
    answer = missing.assign("evt-o", **{HEADER: OLD})
    assert (answer.status, answer.body["code"]) == (503, "origin_check_unavailable")
    assert answer.headers["retry-after"] == "5"
    weak = f"weak-{uuid.uuid4().hex[:8]}"
    secrets.create_secret(Name=weak, SecretString="short")
    short = make_vwr(with_origin(vwr_settings, weak))
    assert short.assign("evt-o", **{HEADER: "short"}).body["code"] == "origin_forbidden"


def test_through_the_distribution_each_viewer_counts_apart(guarded: Any) -> None:
    """Every viewer of one edge shares its source address; the viewer header tells them apart."""
    guarded.open_event("evt-o")
    edge_ip = "130.176.0.1"

    def via(viewer: str) -> int:
        body = {"requestId": str(uuid.uuid4())}
        headers = {HEADER: OLD, "CloudFront-Viewer-Address": f"{viewer}:40000"}
        answer = guarded.request("POST", "/vwr/assign/evt-o", body, headers, source_ip=edge_ip)
        return int(answer.status)

    assert [via("203.0.113.1") for _ in range(3)] == [201, 201, 429]
    assert [via("203.0.113.2") for _ in range(2)] == [201, 201]
    # IPv6 viewers count by /64: another address of the same subscriber is the same client.
    assert [via("2001:db8:1:2::1"), via("2001:db8:1:2::9"), via("2001:db8:1:2::a")] == [
        201,
        201,
        429,
    ]


def test_production_settings_need_the_origin_secret() -> None:
    with pytest.raises(SettingsError, match="URR_GATES__ORIGIN__SECRET_ID"):
        load_settings(VwrSettings, environment="prod", create_missing_keys=False)
    ok = load_settings(VwrSettings, environment="prod", gates={"origin": {"secret_id": "arn:x"}})
    assert ok.gates.origin.secret_id == "arn:x"


@pytest.mark.parametrize(
    "gates",
    [
        {"origin": {"header": "bad header"}},
        {"origin": {"header": ""}},
        {"origin": {"cache_s": -1}},
        {"places_per_client": -1},
        {"places_per_client": 1001},
        {"config_cache_s": 61},
    ],
)
def test_bad_gate_settings_are_refused_at_start(gates: dict[str, Any]) -> None:
    with pytest.raises(SettingsError):
        load_settings(VwrSettings, gates=gates)


async def test_the_edge_emulator_adds_the_header_and_the_viewer_address(
    guarded: Any, secret_id: str, aws_endpoint: str, edge_site: Any
) -> None:
    """Through the edge emulator the API answers; straight to API Gateway it refuses."""
    await asyncio.to_thread(guarded.open_event, "evt-o")
    runners = []
    try:
        runner, api_url = await start(apigw.create_app(guarded.settings, runtime=guarded.runtime))
        runners.append(runner)
        edge_settings = load_settings(
            EdgeEmulatorSettings,
            api_url=api_url,
            aws={
                "endpoint_url": aws_endpoint,
                "region": "us-east-1",
                "access_key_id": "testing",
                "secret_access_key": "testing",
            },
            origin={"secret_id": secret_id},
            edge_config={"target": guarded.settings.edge_config.target},
        )
        runner, edge_url = await start(edge_emulator.create_app(edge_settings), edge_site)
        runners.append(runner)
        async with aiohttp.ClientSession() as session:
            statuses = []
            for n in range(3):
                # A viewer's own origin header and viewer address are replaced at the edge.
                forged = {HEADER: "forged", "CloudFront-Viewer-Address": f"192.0.2.{n}:1"}
                async with session.post(
                    f"{edge_url}/vwr-api/vwr/assign/evt-o",
                    json={"requestId": str(uuid.uuid4())},
                    headers=forged,
                ) as answer:
                    statuses.append(answer.status)
            # Placed through the edge, all counted as this machine, whatever they claimed.
            assert statuses == [201, 201, 429]
            async with session.get(f"{api_url}/vwr/status/evt-o") as direct:
                assert direct.status == 403
                assert (await direct.json())["code"] == "origin_forbidden"
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
