"""The limiter and the check API on a three-node Redis Cluster started on loopback: every key
of a decision shares its subject's slot, so nothing fails with CROSSSLOT."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio.cluster import ClusterNode, RedisCluster

from urr_common.clients import redis_client
from urr_common.ratelimit_policies import Policy
from urr_common.ratelimit_usage import hour_start, quota_key, usage_key
from urr_common.settings import RedisSettings
from urr_devstack.procs import RedisServer, free_port
from urr_gateway.checkapi import CHECK_PATH, create_check_app
from urr_gateway.ratelimit import (
    CategoryLimits,
    RateLimitSettings,
    SlidingWindowLimiter,
    WindowLimit,
    revoked_jti_key,
    window_key,
)
from urr_gateway.ratelimit.pipeline import PipelinedSlidingLog
from urr_gateway.ratelimit.store import tenant_keys
from urr_gateway.ratelimit.tenant import CompiledPolicy, QuotaMonth

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


def _cluster_ok(port: int) -> bool:
    info = subprocess.run(
        ["redis-cli", "-p", str(port), "cluster", "info"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout
    return "cluster_state:ok" in info


def _distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    """Three masters (no replicas), all 16384 slots assigned, on free loopback ports."""
    # Our own folder rather than pytest's numbered temp dirs, which concurrent sessions prune.
    root = Path(tempfile.mkdtemp(prefix="urr-ratelimit-cluster-"))
    ports = _distinct_free_ports(6)
    nodes: list[RedisServer] = []
    try:
        for index in range(3):
            workdir = root / f"node{index}"
            options = {
                "--cluster-enabled": "yes",
                "--cluster-config-file": str(workdir / "nodes.conf"),
                "--cluster-node-timeout": "2000",
                # The bus port defaults to port + 10000, which may be taken or past 65535.
                "--cluster-port": str(ports[index + 3]),
            }
            extra_args = [part for pair in options.items() for part in pair]
            node = RedisServer(port=ports[index], workdir=workdir, extra_args=extra_args)
            nodes.append(node)  # before start: a node that fails to start is still stopped
            try:
                node.start()
            except TimeoutError:
                logs = "\n".join(p.read_text()[-2000:] for p in workdir.glob("*.log"))
                raise TimeoutError(f"cluster node {index} did not start:\n{logs}") from None
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        deadline = time.monotonic() + 20
        while not all(_cluster_ok(node.port) for node in nodes):
            if time.monotonic() > deadline:
                raise TimeoutError("the test cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{nodes[0].port}"
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = redis_client(RedisSettings(url=cluster_url, cluster=True))
    assert isinstance(client, RedisCluster)
    try:
        await client.flushall(target_nodes=RedisCluster.PRIMARIES)
        yield client
    finally:
        await client.aclose()


def cluster_settings() -> RateLimitSettings:
    categories = dict(RateLimitSettings().categories)
    categories["auth"] = CategoryLimits(
        windows=(WindowLimit(limit=20, window_s=60), WindowLimit(limit=5, window_s=1)),
        failure_policy="local",
    )
    return RateLimitSettings(categories=categories, budget_ms=2000)


async def test_limiter_works_across_the_slots(cluster: RedisCluster) -> None:
    limiter = SlidingWindowLimiter(cluster, cluster_settings())
    assert await limiter.prepare()
    subjects = [f"u:{n}" for n in range(12)] + [f"ip:10.0.0.{n}" for n in range(12)]
    slots = {cluster.keyslot(window_key(subject, "auth", 60)) for subject in subjects}
    owners = set()
    for subject in subjects:
        node = cluster.get_node_from_key(window_key(subject, "auth", 60))
        assert node is not None
        owners.add(node.name)
    assert len(slots) > 1
    assert len(owners) == 3  # the subjects really are spread over all three nodes
    for subject in subjects:
        revoked_key = revoked_jti_key(subject[2:], "j") if subject.startswith("u:") else None
        decisions = [
            await limiter.check(subject, "auth", revoked_key=revoked_key) for _ in range(6)
        ]
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        assert all(d.source in {"redis", "deny_cache"} for d in decisions)
        assert decisions[0].revoked is (False if revoked_key else None)
        assert decisions[4].policy == "auth-1s"


async def test_exact_under_concurrency_on_a_cluster(cluster: RedisCluster) -> None:
    limiter = SlidingWindowLimiter(cluster, RateLimitSettings(budget_ms=5000))
    decisions = await asyncio.gather(*(limiter.check("u:77", "booking") for _ in range(100)))
    assert sum(d.allowed for d in decisions) == 10
    assert await cluster.zcard(window_key("u:77", "booking", 60)) == 10


async def test_revoked_flag_on_a_cluster(cluster: RedisCluster) -> None:
    limiter = SlidingWindowLimiter(cluster, RateLimitSettings(budget_ms=2000))
    key = revoked_jti_key("5", "gone")
    await cluster.set(key, b"1", px=60_000)
    decision = await limiter.check("u:5", "booking", revoked_key=key)
    assert decision.revoked is True


async def test_check_api_on_a_cluster(cluster: RedisCluster, aiohttp_client: ClientFactory) -> None:
    limiter = SlidingWindowLimiter(cluster, cluster_settings())
    client = await aiohttp_client(create_check_app(limiter))
    for key in ("tenant-a", "tenant-b", "tenant-c", "tenant-d"):
        answers = []
        for _ in range(6):
            response = await client.post(CHECK_PATH, json={"key": key, "category": "auth"})
            assert response.status == 200
            answers.append(await response.json())
        assert [a["allowed"] for a in answers] == [True] * 5 + [False]
        assert not any(a["degraded"] for a in answers)


async def test_a_burst_is_batched_per_node_on_a_cluster(cluster: RedisCluster) -> None:
    """Decisions of one tick go to each subject's primary, one write per node, each exact."""
    limiter = SlidingWindowLimiter(cluster, RateLimitSettings(budget_ms=5000, max_in_flight=512))
    try:
        assert await limiter.prepare()
        store = limiter._store
        assert isinstance(store, PipelinedSlidingLog)
        assert len(store.nodes) == 3
        before = {id(node): (node.writes, node.commands) for node in store.nodes}
        subjects = [f"u:burst{n}" for n in range(30)]
        decisions = await asyncio.gather(
            *(limiter.check(subject, "booking") for subject in subjects for _ in range(12))
        )
        for index, subject in enumerate(subjects):
            mine = decisions[index * 12 : (index + 1) * 12]
            assert sum(d.allowed for d in mine) == 10
            assert await cluster.zcard(window_key(subject, "booking", 60)) == 10
        assert len(store.nodes) == 3
        # 360 decisions over three primaries, each node's in batches of up to 16 (the
        # default ``pipeline_max_batch``) plus a tick's remainder: a few writes, not 120.
        sent = {id(node): node.commands - before[id(node)][1] for node in store.nodes}
        assert sum(sent.values()) == 360
        for node in store.nodes:
            assert node.writes - before[id(node)][0] <= sent[id(node)] // 16 + 3
    finally:
        await limiter.aclose()


async def test_a_slot_the_client_cannot_place_follows_the_failure_policy(
    cluster: RedisCluster,
) -> None:
    """redis-py raises KeyError (or SlotNotCoveredError), not a RedisError, for a slot missing
    from its map: the decision follows its policy instead of failing the request."""
    limiter = SlidingWindowLimiter(cluster, RateLimitSettings(budget_ms=2000))
    slots = cluster.nodes_manager.slots_cache
    slot = cluster.keyslot(window_key("u:lost", "general", 60))
    try:
        assert await limiter.prepare()
        saved = slots.pop(slot)
        try:
            decision = await limiter.check("u:lost", "general")
        finally:
            slots[slot] = saved
        assert (decision.source, decision.allowed) == ("open", True)
        assert (await limiter.check("u:found", "general")).source == "redis"
    finally:
        await limiter.aclose()


async def move_slot(cluster: RedisCluster, key: str) -> tuple[ClusterNode, ClusterNode]:
    """Hand ``key``'s (empty) slot to another primary behind the client's back; the old and
    the new owner."""
    slot = cluster.keyslot(key)
    source = cluster.get_node_from_key(key)
    assert source is not None
    target = next(n for n in cluster.get_primaries() if n.name != source.name)
    source_id = await cluster.execute_command("CLUSTER", "MYID", target_nodes=source)
    target_id = await cluster.execute_command("CLUSTER", "MYID", target_nodes=target)
    await cluster.execute_command(
        "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id, target_nodes=target
    )
    await cluster.execute_command(
        "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id, target_nodes=source
    )
    for node in (target, source):
        await cluster.execute_command(
            "CLUSTER", "SETSLOT", slot, "NODE", target_id, target_nodes=node
        )
    return source, target


async def test_a_moved_slot_is_followed_and_stays_exact(cluster: RedisCluster) -> None:
    """The subject's (empty) slot is handed to another primary behind the client's back: the
    old owner answers MOVED, which ran nothing; the decision goes through redis-py once, and
    the next ones go to the new owner on the pipelined path, all counted exactly once."""
    limiter = SlidingWindowLimiter(cluster, RateLimitSettings(budget_ms=5000))
    try:
        assert await limiter.prepare()
        store = limiter._store
        assert isinstance(store, PipelinedSlidingLog)
        key = window_key("u:moved", "booking", 60)
        source, target = await move_slot(cluster, key)
        writes = {name: node.writes for name, node in store._nodes.items()}
        decisions = [await limiter.check("u:moved", "booking") for _ in range(12)]
        assert [d.allowed for d in decisions] == [True] * 10 + [False] * 2
        assert {d.source for d in decisions} <= {"redis", "deny_cache"}
        owner = cluster.get_node_from_key(key)
        assert owner is not None
        assert owner.name == target.name
        assert await cluster.zcard(key) == 10
        # The old owner got the first decision once (MOVED); after that one went through
        # redis-py, the new owner's lean connection carried the next ten (the last was
        # refused from the deny cache).
        assert store._nodes[source.name].writes - writes[source.name] == 1
        assert store._nodes[target.name].writes - writes[target.name] == 10
        assert len(store.nodes) == 3
        assert limiter.breaker_state.name == "CLOSED"
    finally:
        await limiter.aclose()


async def test_a_tenant_decision_follows_a_moved_slot_and_stays_exact(
    cluster: RedisCluster,
) -> None:
    """The same for a tenant decision (windows and quota, one script): the MOVED one goes
    through redis-py once, the rest to the new owner; window and quota counted once each."""
    limiter = SlidingWindowLimiter(cluster, RateLimitSettings(budget_ms=5000))
    compiled = CompiledPolicy.of(
        Policy.model_validate(
            {"id": "p", "name": "p", "route": "/**", "windows": [{"limit": 10, "window_s": 60}]}
        )
    )
    try:
        assert await limiter.prepare()
        store = limiter._store
        assert isinstance(store, PipelinedSlidingLog)
        tenant = "moved-tenant"
        key = tenant_keys(compiled, tenant)[0].decode()
        source, target = await move_slot(cluster, key)
        writes = {name: node.writes for name, node in store._nodes.items()}
        decided = [await limiter.check_tenant(tenant, compiled, quota=100) for _ in range(12)]
        assert [d.decision.allowed for d in decided] == [True] * 10 + [False] * 2
        assert {d.decision.source for d in decided} == {"redis"}
        assert [d.quota_remaining for d in decided] == [*range(99, 89, -1), 90, 90]
        assert await cluster.zcard(key) == 10
        month = QuotaMonth.of(time.time())
        assert await cluster.get(quota_key(tenant, month.label)) == b"10"
        assert store._nodes[source.name].writes - writes[source.name] == 1
        assert store._nodes[target.name].writes - writes[target.name] == 11
        assert limiter.breaker_state.name == "CLOSED"
    finally:
        await limiter.aclose()


async def test_usage_flush_reaches_every_slot_on_a_cluster(cluster: RedisCluster) -> None:
    """One flush pipeline carries usage hashes of tenants on every node (and anonymous)."""
    limiter = SlidingWindowLimiter(cluster, cluster_settings())
    tenants = [f"tenant-{n}" for n in range(12)]
    owners = {
        getattr(cluster.get_node_from_key(usage_key(t, "auth", 0)), "name", None) for t in tenants
    }
    assert len(owners) > 1
    try:
        for tenant in tenants:
            limiter.usage.count(tenant, "auth", allowed=True, would_allow=True, near=False)
        await limiter.check("u:1", "auth")
        assert await limiter.flush_usage()
    finally:
        await limiter.aclose()
    hour = hour_start((await cluster.time())[0])
    for tenant in tenants:
        assert await cluster.hget(usage_key(tenant, "auth", hour), "allowed") == b"1"
    assert await cluster.hget(usage_key(None, "auth", hour), "allowed") == b"1"
