from __future__ import annotations

import threading

from urr_loadtests.scenarios.common import FixedRate, spawn_batch_interval


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


def test_spawn_batches_come_once_a_second_or_once_per_user_when_slower() -> None:
    assert spawn_batch_interval(12.0) == 1.0
    assert abs(spawn_batch_interval(2.5) - 0.8) < 1e-9  # 2 users every 0.8 s
    assert spawn_batch_interval(0.5) == 2.0  # 1 user every 2 s
