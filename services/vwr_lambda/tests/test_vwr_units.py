"""Pure logic without servers: ETA and poll pacing, Tier-2 headroom, the walk, paths, ids."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from urr_common.tokens import SigningKey, TokenError
from urr_vwr_lambda.access import AccessVerifier
from urr_vwr_lambda.capacity import CapacityUnavailable, parse_capacity
from urr_vwr_lambda.ids import is_event_id, parse_request_id
from urr_vwr_lambda.keys import SigningKeyUnavailable, load_signing_key
from urr_vwr_lambda.paths import PathKind, UnsafePath, classify, normalise_path
from urr_vwr_lambda.queueing import (
    CapacityFeed,
    PositionRow,
    eta_seconds,
    etag_matches,
    poll_after_seconds,
    smoothed_rate,
    walk_positions,
)
from urr_vwr_lambda.settings import VwrTokenSettings


def test_eta_and_poll_pacing() -> None:
    assert eta_seconds(0, 10) == 0
    assert eta_seconds(99, 10) == 10
    assert eta_seconds(5, 0) == -1
    assert poll_after_seconds(0, 0, min_s=2, max_s=30) == 2
    assert poll_after_seconds(40, 399, min_s=2, max_s=30) == 20
    assert poll_after_seconds(5, 49, min_s=2, max_s=30) == 2
    assert poll_after_seconds(10_000, 99_999, min_s=2, max_s=30) == 30
    assert poll_after_seconds(-1, 50, min_s=2, max_s=30) == 5
    assert poll_after_seconds(-1, 50_000, min_s=2, max_s=30) == 30


@given(ahead=st.integers(0, 10**7), rate=st.floats(0, 10_000), low=st.integers(1, 10))
def test_poll_pacing_stays_in_bounds(ahead: int, rate: float, low: int) -> None:
    poll = poll_after_seconds(eta_seconds(ahead, rate), ahead, min_s=low, max_s=60)
    assert low <= poll <= 60


def _checks_until_turn(eta_s: int, *, jitter: float, speed: float = 1.0) -> tuple[int, float]:
    """A waiter following the advice (each pause ``jitter`` times the advised one) while the
    line moves ``speed`` times faster than the ETA says: its checks up to and including the
    one that finds it let in, and how late that check comes after its turn."""
    left, checks = float(eta_s), 0
    while True:
        checks += 1
        if left <= 0:
            return checks, -left
        estimate = math.ceil(left * speed)
        left -= poll_after_seconds(estimate, max(1, estimate), min_s=2, max_s=30) * jitter


@pytest.mark.parametrize("jitter", [0.8, 1.0, 1.2])
@pytest.mark.parametrize("eta_s", [3, 8, 15, 25, 60, 600])
def test_a_long_wait_costs_few_checks_and_the_turn_is_learned_within_the_shortest_pause(
    eta_s: int, jitter: float
) -> None:
    """Issue 22: a waiter far back checks about log2(ETA) times, not every 2 s near the end,
    and still learns of its turn at most one shortest pause (with jitter) after it came,
    also when the line moves up to 1.6 times faster than the ETA assumed."""
    checks, late = _checks_until_turn(eta_s, jitter=jitter)
    # With a quarter of the ETA (before), at jitter 1.0: 3, 5, 8, 10, 13 and 32 checks.
    assert checks <= {3: 3, 8: 5, 15: 6, 25: 8, 60: 9, 600: 32}[eta_s]
    assert late <= 2 * jitter
    for speed in (1.0, 1.3, 1.6):
        _, late = _checks_until_turn(eta_s, jitter=jitter, speed=speed)
        assert late <= 2 * jitter


def test_the_admission_rate_is_smoothed_by_time_not_by_cycle_count() -> None:
    assert smoothed_rate(None, 7.0, 2.0) == 7.0
    # One 10 s cycle weighs as much as five 2 s cycles measuring the same rate.
    assert smoothed_rate(10.0, 20.0, 10.0) == pytest.approx(15.0)
    rate = 10.0
    for _ in range(5):
        rate = smoothed_rate(rate, 20.0, 2.0)
    assert rate == pytest.approx(15.0)
    assert smoothed_rate(10.0, 20.0, 0.0) == 10.0
    assert smoothed_rate(float("nan"), 3.0, 2.0) == 3.0


@given(
    previous=st.floats(0, 1e6),
    measured=st.floats(0, 1e6),
    interval=st.floats(0, 60),
)
def test_the_smoothed_rate_stays_between_the_old_and_the_new(
    previous: float, measured: float, interval: float
) -> None:
    rate = smoothed_rate(previous, measured, interval)
    assert min(previous, measured) - 1e-6 <= rate <= max(previous, measured) + 1e-6


def test_tier2_headroom() -> None:
    assert CapacityFeed(0, 7, 10, 0.2).absorbable(10) == 5
    assert CapacityFeed(5, 7, 10, 0.2).absorbable(10) == 0
    assert CapacityFeed(0, 12, 10, 0).absorbable(10) == 0
    assert CapacityFeed(0, 0, 100, 1000).absorbable(0) == 100


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        {"waiting": -1, "admitted": 0, "capacity": 1},
        {"waiting": 0, "admitted": True, "capacity": 1},
        {"waiting": 0, "admitted": 0, "capacity": "9"},
        {"waiting": 0, "admitted": 0, "capacity": 1, "admit_per_second": float("nan")},
    ],
)
def test_nonsense_capacity_is_unavailable(payload: Any) -> None:
    with pytest.raises(CapacityUnavailable):
        parse_capacity(payload)


def rows(*spec: tuple[int, int]) -> list[PositionRow]:
    return [PositionRow(f"r{p}", p, seen) for p, seen in spec]


def test_the_walk_passes_live_places_and_skips_abandoned_ones() -> None:
    marked: list[int] = []

    def mark(row: PositionRow) -> bool:
        marked.append(row.position)
        return True

    line = rows((1, 100), (2, 5), (4, 100), (5, 100), (6, 100))  # 3 has no row (unused)
    result = walk_positions(
        line, serving_counter=0, budget=3, cutoff=50, max_skips=10, mark_abandoned=mark
    )
    assert (result.serving_counter, result.live, result.skipped) == (5, 3, 1)
    assert marked == [2]


def test_the_walk_passes_pre_queue_places_at_no_cost() -> None:
    """A pre-queue place was let in at its check (Tier 2's shuffle orders it): its number is
    passed without using the budget, and its checks stopping never gives it up."""
    marked: list[int] = []

    def mark(row: PositionRow) -> bool:
        marked.append(row.position)
        return True

    line = [
        PositionRow("r1", 1, 5, prequeue=True),
        PositionRow("r2", 2, 5, prequeue=True),
        PositionRow("r3", 3, 100),
        PositionRow("r4", 4, 5, prequeue=True),
        PositionRow("r5", 5, 100),
    ]
    one = walk_positions(
        line, serving_counter=0, budget=1, cutoff=50, max_skips=10, mark_abandoned=mark
    )
    assert (one.serving_counter, one.live, one.skipped) == (3, 1, 0)
    every = walk_positions(
        line, serving_counter=0, budget=5, cutoff=50, max_skips=10, mark_abandoned=mark
    )
    assert (every.serving_counter, every.live, every.skipped) == (5, 2, 0)
    assert marked == []


def test_the_walk_counts_a_waiter_back_in_time_as_live() -> None:
    line = rows((1, 5), (2, 5), (3, 5))
    result = walk_positions(
        line, serving_counter=0, budget=2, cutoff=50, max_skips=10, mark_abandoned=lambda r: False
    )
    assert (result.serving_counter, result.live, result.skipped) == (2, 2, 0)


def test_the_walk_stops_at_the_skip_limit_and_at_zero_budget() -> None:
    line = rows((1, 5), (2, 5), (3, 100))
    limited = walk_positions(
        line, serving_counter=0, budget=5, cutoff=50, max_skips=1, mark_abandoned=lambda r: True
    )
    assert (limited.serving_counter, limited.skipped) == (1, 1)
    idle = walk_positions(
        line, serving_counter=0, budget=0, cutoff=50, max_skips=1, mark_abandoned=lambda r: True
    )
    assert idle.serving_counter == 0


@given(
    seen=st.lists(st.integers(0, 100), max_size=40),
    budget=st.integers(0, 50),
    max_skips=st.integers(0, 50),
)
def test_the_walk_never_exceeds_its_budget_or_the_rows(
    seen: list[int], budget: int, max_skips: int
) -> None:
    line = [PositionRow(f"r{i}", i + 1, s) for i, s in enumerate(seen)]
    result = walk_positions(
        line,
        serving_counter=0,
        budget=budget,
        cutoff=50,
        max_skips=max_skips,
        mark_abandoned=lambda r: True,
    )
    assert result.live <= budget
    assert result.skipped <= max_skips
    assert result.serving_counter <= len(seen)
    assert result.serving_counter == result.live + result.skipped


def test_etag_matching() -> None:
    assert etag_matches('"a"', '"a"')
    assert etag_matches('W/"a"', '"a"')
    assert etag_matches('"b", "a"', '"a"')
    assert etag_matches("*", '"a"')
    assert not etag_matches(None, '"a"')
    assert not etag_matches('"b"', '"a"')


def test_paths() -> None:
    assert normalise_path("/a//b/./c/../d/") == "/a/b/d/"
    with pytest.raises(UnsafePath):
        normalise_path("/..")
    assert classify("/events/e1/x").kind is PathKind.PAGE
    assert classify("/api/v1/reservations/e1").event_id == "e1"
    assert classify("/api/v1/auth/e1").kind is PathKind.PASS
    assert classify("/events/").kind is PathKind.PASS


def test_ids() -> None:
    assert is_event_id("evt_1-A")
    assert not is_event_id("#active")
    assert not is_event_id("a" * 65)
    assert parse_request_id("7F1C2B6E-1D2A-4C0E-9A55-3B1F0C9D2E11") == (
        "7f1c2b6e-1d2a-4c0e-9a55-3b1f0c9d2e11"
    )
    assert parse_request_id("7f1c2b6e1d2a4c0e9a553b1f0c9d2e11") is None
    assert parse_request_id(None) is None


def test_the_signing_key_comes_from_secrets_manager(moto_endpoint: str) -> None:
    key = SigningKey.generate("vwr-7")
    secrets = boto3.session.Session().client(
        "secretsmanager",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    try:
        name = "urr/vwr/signing-key-test"
        secrets.create_secret(Name=name, SecretString=key.to_pem().decode())
        settings = VwrTokenSettings(private_key_secret_id=name, key_id="vwr-7")
        loaded = load_signing_key(settings, create_missing=False, secrets=secrets)
        assert loaded.verification_key().to_pem() == key.verification_key().to_pem()
    finally:
        secrets.close()


def test_a_missing_key_is_not_created_outside_local_runs(tmp_path: Path) -> None:
    settings = VwrTokenSettings(private_key_file=tmp_path / "none.pem")
    with pytest.raises(SigningKeyUnavailable):
        load_signing_key(settings, create_missing=False)
    created = load_signing_key(settings, create_missing=True)
    public = tmp_path / "public" / "local-1.pem"
    assert public.read_bytes() == created.verification_key().to_pem()


def test_access_tokens_verify_from_a_jwks_url() -> None:
    """The JWKS is fetched with urllib on the first unknown kid, then cached."""
    from aiohttp import web

    from urr_common.settings import TrustedKeysSettings
    from urr_common.tokens import KeySet, TokenSigner

    key = SigningKey.generate("auth-1")
    jwks = KeySet([key.verification_key()]).to_jwks()
    fetches: list[int] = []

    async def serve_jwks(request: web.Request) -> web.Response:
        fetches.append(1)
        return web.Response(text=json.dumps(jwks), content_type="application/json")

    server = _JwksServer(serve_jwks)
    server.start()
    try:
        verifier = AccessVerifier(
            TrustedKeysSettings(jwks_url=server.url, issuer="urr-auth", audience="urr")
        )
        signer = TokenSigner(key, issuer="urr-auth", audience="urr", ttl_s=60)
        token = signer.sign("u-1", {"role": "admin", "email": "a@b.c"})
        assert verifier.verify(token).role == "admin"
        assert verifier.verify(token).user_id == "u-1"
        assert len(fetches) == 1
        stranger = TokenSigner(
            SigningKey.generate("auth-9"), issuer="urr-auth", audience="urr", ttl_s=60
        )
        with pytest.raises(TokenError):
            verifier.verify(stranger.sign("u-2", {"role": "admin"}))
        assert len(fetches) == 1  # the refetch is rate-limited
    finally:
        server.stop()


class _JwksServer:
    def __init__(self, handler: Any) -> None:
        import asyncio
        import threading

        from aiohttp import web

        self._loop = asyncio.new_event_loop()
        self._app = web.Application()
        self._app.router.add_get("/.well-known/jwks.json", handler)
        self._runner = web.AppRunner(self._app, access_log=None)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    def start(self) -> None:
        import asyncio

        from aiohttp import web

        self._thread.start()

        async def up() -> str:
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            return f"http://127.0.0.1:{self._runner.addresses[0][1]}/.well-known/jwks.json"

        self.url = asyncio.run_coroutine_threadsafe(up(), self._loop).result(5)

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
