"""The crowd's proof-of-work solver agrees with the server's puzzle; its figures and check."""

from __future__ import annotations

import time
from typing import Any

from urr_loadtests import checks
from urr_loadtests.pow import SolverPool, solve
from urr_vwr_lambda import proof_of_work

KEY = b"k" * 32


def test_the_crowds_solver_solves_the_servers_puzzle() -> None:
    now = int(time.time())
    for bits in (8, 12):
        issued = proof_of_work.issue(KEY, event_id="lt-1", bits=bits, now_s=now, ttl_s=60)
        counter = solve(issued.text, bits)
        assert counter == proof_of_work.solve(issued.text, bits)
        solution = {"challenge": issued.text, "counter": counter}
        proof_of_work.verify(solution, keys=(KEY,), event_id="lt-1", required_bits=bits, now_s=now)


def test_the_solver_processes_answer_line_by_line() -> None:
    pool = SolverPool(1)
    try:
        issued = proof_of_work.issue(KEY, event_id="lt-1", bits=10, now_s=0, ttl_s=60)
        assert pool.solve(issued.text, 10) == solve(issued.text, 10)
        assert pool.solve(issued.text, 11) == solve(issued.text, 11)
    finally:
        pool.close()


def test_the_pow_check_misses_a_place_taken_without_a_solution() -> None:
    arrivals: list[dict[str, Any]] = [
        {"tier1_position": 1, "pow_solves": 1, "pow_solve_s": 0.1},
        {"tier1_position": 2, "pow_solves": 2, "pow_solve_s": 0.3},
        {"tier1_position": None, "pow_solves": 1, "pow_solve_s": 0.2},
    ]
    figures = checks.pow_figures(arrivals, 16)
    assert figures["arrivals_placed"] == figures["placed_with_a_solution"] == 2
    assert figures["solves"] == 4
    assert figures["solve_s_median"] == 0.2
    assert checks.pow_missed(figures) == []
    arrivals.append({"tier1_position": 3, "pow_solves": 0, "pow_solve_s": 0.0})
    assert checks.pow_missed(checks.pow_figures(arrivals, 16)) != []
