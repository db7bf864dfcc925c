from __future__ import annotations

import threading

import pytest

from urr_loadtests.scenarios.common import ArrivalSchedule, FixedRate


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_user_keeps_its_own_period_whatever_its_calls_take() -> None:
    clock = FakeClock()
    pace = FixedRate(2.0, clock=clock)
    # First call took 0.1 s: the next is due one period after the schedule started.
    clock.now += 0.1
    assert abs(pace.next_wait() - 0.4) < 1e-9
    clock.now += 0.4 + 0.3  # waited, then a call of 0.3 s
    assert abs(pace.next_wait() - 0.2) < 1e-9


def test_a_user_that_fell_behind_resumes_without_a_burst() -> None:
    clock = FakeClock()
    pace = FixedRate(10.0, clock=clock)
    clock.now += 1.0  # ten periods in one slow call
    assert pace.next_wait() == 0
    # Behind schedule, yet the next call waits a whole period instead of catching up at once.
    assert abs(pace.next_wait() - 0.1) < 1e-9


def test_users_started_together_get_phases_spread_over_a_period() -> None:
    paces = [FixedRate(20.0) for _ in range(40)]
    starters = [threading.Thread(target=pace.start) for pace in paces]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join()
    waits = sorted(pace.next_wait() for pace in paces)
    # Started in one instant with constant_throughput they would all be due together; spread
    # at random over 50 ms, the first and last are most of a period apart.
    assert waits[-1] - waits[0] > 0.025


def test_arrivals_come_one_by_one_at_the_rate_however_fast_users_start() -> None:
    clock = FakeClock()
    draws = iter([0.5, 0.0, 0.9, 0.5])
    schedule = ArrivalSchedule(4.0, clock=clock, draw=lambda: next(draws))
    # The first arrival fixes the start; each later one waits for its own quarter second,
    # however early Locust started its user.
    assert schedule.wait_for(0) == 0.125
    assert schedule.wait_for(1) == 0.25
    assert abs(schedule.wait_for(2) - 0.725) < 1e-9
    clock.now += 10.0  # a user started late: it goes at once, never in a burst of waits
    assert schedule.wait_for(3) == 0.0


def test_arrivals_follow_the_rate_over_a_long_crowd() -> None:
    clock = FakeClock()
    schedule = ArrivalSchedule(12.0, clock=clock)
    starts = sorted(clock.now + schedule.wait_for(index) for index in range(1200))
    span = starts[-1] - starts[0]
    assert 99.0 < span < 100.0  # 1,200 arrivals at 12 a second: 100 s, not less
    # No bursts: any one second of the crowd holds at most its slots' worth, plus one.
    busiest = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts[::50])
    assert busiest <= 13


def test_an_arrival_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ArrivalSchedule(0.0)
