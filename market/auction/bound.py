"""An upper bound on a round's objective from the linear relaxation of CP-SAT's model (GLOP, dual simplex).

Within CP-SAT's time limit its own bound can stay far from the optimum on books of a few hundred jobs (its
LP is not solved to the end with presolve off on few workers), so a round that is not proved optimal reports
the tighter of the two. The relaxation keeps every constraint of `cpsat` with x and y in [0, 1]; GLOP takes
seconds on books of tens of thousands of pairs, hence `LP_MAX_PAIRS`.

GLOP works in doubles with tolerances, so its optimum is rounded up by `MARGIN` of itself (and one base unit)
before it is reported as a bound in integer base units.
"""

from __future__ import annotations

import math
from typing import Any

from market.auction.book import Book
from market.auction.cpsat import prune

LP_MAX_PAIRS = 60_000  # "auto" computes the bound up to this many (job shard, provider) pairs, `Book.n_pairs`
MARGIN = 1e-6  # relative: GLOP's primal and dual feasibility tolerances are 1e-7 on scaled rows


def lp_bound(book: Book, priority_bps: int, seconds: float | None = None) -> int | None:
    """An upper bound on welfare + the winners' bonuses, in base units, or None if GLOP did not solve it (within
    `seconds`, when given)."""
    from ortools.linear_solver import pywraplp  # type: ignore[import-untyped]

    lp = pywraplp.Solver.CreateSolver("GLOP")
    if seconds is not None:
        lp.SetTimeLimit(max(1, int(seconds * 1000)))
    lp.SetSolverSpecificParametersAsString("use_dual_simplex: true")
    inf, objective = lp.infinity(), lp.Objective()
    on_provider: dict[int, list[tuple[Any, int]]] = {}
    for i, per_shard in prune(book).items():
        job, x = book.jobs[i], lp.NumVar(0, 1, "")
        objective.SetCoefficient(x, job.max_price + job.bonus(priority_bps))
        budget = lp.Constraint(-inf, 0)  # Σ cost · y ≤ (v − 1) · x
        budget.SetCoefficient(x, -(job.max_price - 1))
        speed = None
        if job.max_ns_per_token is not None:  # Σ ns · layers · y ≤ cap · x
            speed = lp.Constraint(-inf, 0)
            speed.SetCoefficient(x, -job.max_ns_per_token)
        distinct: dict[int, Any] = {}
        for shard, candidates in zip(job.shards, per_shard, strict=True):
            one = lp.Constraint(0, 0)  # Σ_j y = x
            one.SetCoefficient(x, -1)
            for j, cost in candidates:
                y = lp.NumVar(0, 1, "")
                one.SetCoefficient(y, 1)
                objective.SetCoefficient(y, -cost)
                budget.SetCoefficient(y, cost)
                if speed is not None:
                    speed.SetCoefficient(y, book.providers[j].ns_per_layer_token * shard.layers)
                if j not in distinct:  # Σ_k y_kj ≤ x
                    distinct[j] = lp.Constraint(-inf, 0)
                    distinct[j].SetCoefficient(x, -1)
                distinct[j].SetCoefficient(y, 1)
                on_provider.setdefault(j, []).append((y, shard.memory_bytes))
    for j, used in on_provider.items():
        slots = lp.Constraint(-inf, book.providers[j].slots)
        memory = lp.Constraint(-inf, book.providers[j].memory_bytes)
        for y, need in used:
            slots.SetCoefficient(y, 1)
            memory.SetCoefficient(y, need)
    objective.SetMaximization()
    if lp.Solve() != pywraplp.Solver.OPTIMAL:
        return None
    value = float(objective.Value())
    return max(0, math.ceil(value + abs(value) * MARGIN) + 1)
