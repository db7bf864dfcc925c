"""The warm-up's choices: when it runs, its bounded shape, its own event, its summary."""

from __future__ import annotations

import pytest

from urr_loadtests import warmup
from urr_loadtests.__main__ import _parser
from urr_loadtests.report import RouteStats


def test_auto_warms_only_a_stack_this_runner_started() -> None:
    assert warmup.wanted("auto", started_stack=True)
    assert not warmup.wanted("auto", started_stack=False)
    assert warmup.wanted("always", started_stack=False)
    assert not warmup.wanted("never", started_stack=True)


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="warm-up mode"):
        warmup.wanted("sometimes", started_stack=True)


def test_the_command_line_defaults_to_auto_and_refuses_other_modes() -> None:
    assert _parser().parse_args(["flash_crowd"]).warmup == "auto"
    with pytest.raises(SystemExit):
        _parser().parse_args(["flash_crowd", "--warmup", "sometimes"])


def test_the_warm_up_runs_at_half_the_crowds_rate_for_its_seconds_and_is_bounded() -> None:
    chosen = warmup.plan(20.0, seconds=30)
    assert chosen.rate == 10.0
    assert chosen.arrivals == 300
    # The arrivals' own 30 s, then a bounded tail for the last ones to finish.
    assert chosen.run_time_s == 30 + warmup.TAIL_S


def test_a_slow_crowd_still_warms_at_the_minimum_rate_and_a_given_rate_wins() -> None:
    assert warmup.plan(1.0, seconds=30).rate == warmup.MIN_RATE
    chosen = warmup.plan(20.0, seconds=10, rate=3.0)
    assert (chosen.rate, chosen.arrivals) == (3.0, 30)


@pytest.mark.parametrize(("seconds", "rate"), [(0, None), (-5, None), (30, 0.0), (30, -1.0)])
def test_a_warm_up_of_no_time_or_no_rate_is_refused(seconds: float, rate: float | None) -> None:
    with pytest.raises(ValueError, match="positive"):
        warmup.plan(20.0, seconds=seconds, rate=rate)


def test_the_warm_up_event_is_never_the_crowds() -> None:
    assert warmup.warm_event_id("lt0123456789") != "lt0123456789"
    assert warmup.warm_event_id("lt0123456789").startswith("lt0123456789")


def test_the_summary_counts_outcomes_and_names_the_slow_routes() -> None:
    chosen = warmup.plan(20.0, seconds=1)
    arrivals = [{"outcome": "confirmed"}, {"outcome": "sold_out"}, {"outcome": "confirmed"}, {}]
    stats = [
        RouteStats("POST /api/v1/reservations/{id}", 2, 0, 200.0, 480.0, 500.0),
        RouteStats("GET /vwr/{id} (waiting page)", 4, 0, 2.0, 10.0, 12.0),
        RouteStats("Aggregated", 6, 0, 10.0, 400.0, 500.0),
    ]
    done = warmup.summarise("lt1-warm", chosen, arrivals, stats, 12.34, 0)
    assert done["outcomes"] == {"confirmed": 2, "sold_out": 1, "unanswered": 1}
    assert done["arrivals_finished"] == 4
    assert done["requests"] == 6
    assert done["p95_ms"] == 400.0
    assert done["routes_over_300ms_p95"] == {"POST /api/v1/reservations/{id}": 480.0}
    assert done["seconds"] == 12.3
