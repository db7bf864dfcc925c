"""The runner's own arithmetic and parsing: tau, overlap, targets, the devstack banner."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from urr_loadtests.report import RouteStats, Target, check_targets, kendall_tau, max_overlap
from urr_loadtests.stack import parse_banner


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def _tau_by_definition(pairs: list[tuple[float, float]]) -> float:
    sign = _sign
    total = sum(sign(a[0] - b[0]) * sign(a[1] - b[1]) for a, b in itertools.combinations(pairs, 2))
    return total / (len(pairs) * (len(pairs) - 1) / 2)


def test_kendall_tau_is_one_for_the_same_order_and_minus_one_for_the_reverse():
    ordered = [(float(i), float(i * 3)) for i in range(50)]
    assert kendall_tau(ordered) == pytest.approx(1.0)
    assert kendall_tau([(x, -y) for x, y in ordered]) == pytest.approx(-1.0)


def test_kendall_tau_matches_the_definition_without_ties():
    rng = random.Random(7)
    ys = rng.sample(range(1000), 60)
    pairs = [(float(i), float(y)) for i, y in enumerate(ys)]
    assert kendall_tau(pairs) == pytest.approx(_tau_by_definition(pairs))


def test_one_swap_among_many_keeps_tau_near_one():
    pairs = [(float(i), float(i)) for i in range(200)]
    pairs[10], pairs[11] = (10.0, 11.0), (11.0, 10.0)
    assert 0.99 < kendall_tau(pairs) < 1.0


def test_max_overlap_counts_open_intervals_and_not_touching_ones():
    assert max_overlap([(0, 10), (5, 15), (9, 20)]) == 3
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    assert max_overlap([]) == 0


def test_targets_report_latency_and_error_rate_but_ignore_setup_routes():
    stats = [
        RouteStats("POST /internal/v1/ratelimit/check", 1000, 0, 2, 12, 15),
        RouteStats("GET /api/v1/events", 1000, 20, 5, 9, 30),
        RouteStats("setup: login", 10, 10, 500, 900, 900),
        RouteStats("Aggregated", 2010, 30, 5, 12, 30),
    ]
    missed = check_targets(
        stats, [Target("check API", "/internal/v1/ratelimit/check", p95_ms=10, p99_ms=20)]
    )
    assert missed == [
        "error rate 2.00% >= 1% on GET /api/v1/events",
        "check API: P95 12 ms > 10 ms on POST /internal/v1/ratelimit/check",
    ]


def test_banner_gives_every_address_and_the_admin_account(tmp_path: Path):
    lines = [
        "15:47:00 system          | urr-devstack: ready\n",
        "15:47:00 system          |   vwr-edge         http://127.0.0.1:41000\n",
        "15:47:00 system          |   gateway          http://127.0.0.1:41001\n",
        "15:47:00 system          |   kafka            127.0.0.1:41002\n",
        "15:47:00 system          |   postgres         postgresql://postgres@127.0.0.1:41003/urr"
        "  (was already running)\n",
        "15:47:00 system          |   admin login: admin@urr.local / s3cret-Pass\n",
    ]
    urls, email, password = parse_banner(lines)
    assert urls == {
        "vwr-edge": "http://127.0.0.1:41000",
        "gateway": "http://127.0.0.1:41001",
        "kafka": "127.0.0.1:41002",
        "postgres": "postgresql://postgres@127.0.0.1:41003/urr",
    }
    assert (email, password) == ("admin@urr.local", "s3cret-Pass")
