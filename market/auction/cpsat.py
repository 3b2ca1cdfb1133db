"""Exact winner determination as an OR-Tools CP-SAT model, with a time limit.

Variables: x_i (job i wins) and y_ikj (shard k of job i runs on provider j), both Boolean.
- every shard of a winning job has exactly one provider, a losing job none:  Σ_j y_ikj = x_i;
- two shards of one job never share a provider:                               Σ_k y_ikj ≤ x_i;
- slots and memory per provider:                     Σ y_ikj ≤ slots_j,  Σ mem_k · y_ikj ≤ memory_j;
- the job's speed cap, when it has one:              Σ ns_j · layers_k · y_ikj ≤ max_ns_i · x_i;
- a winner's welfare contribution is positive:       Σ ask_j · w_ik · y_ikj + 1 ≤ v_i · x_i;
- maximise                                           Σ (v_i + bonus_i) · x_i − Σ ask_j · w_ik · y_ikj,
  that is welfare plus the priority bonus of the winners (`JobBid.bonus`; with no priorities, welfare).

Pairs that can never be part of a positive contribution (the ask alone plus the cheapest possible other
shards reaches v_i) or of a fast enough pipeline are not created at all, which keeps the model small when
bids sit near the asks. Writing distinctness as Σ_k y_ikj ≤ x_i rather than ≤ 1 tightens the linear
relaxation, which is where CP-SAT's bound comes from.

Few workers: up to 2 skip presolve and run the LP-heavy "max_lp" and "core" subsolvers (one worker: the full
linear relaxation, linearization level 2); more workers keep the default portfolio, which contains max_lp.
`proof` (bench/auction.py's references, given a minute or more) keeps presolve and adds the full linear
relaxation to every worker: slower to a first solution, but its bound closes further on capped books.

Money in int64 (`Money`). CP-SAT rejects a linear expression whose Σ |coefficient| × |variable bound| could
overflow int64, and the objective's and each job's contribution constraint are sums of money. Each of those
expressions is first divided by the greatest common divisor of its coefficients, which is exact (the
contribution constraint keeps v − cost ≥ 1 in divided units), and only if it still sums past `MONEY_LIMIT`
(2⁶⁰) is it divided by a power of two more and rounded: the objective to the nearest unit, a contribution
constraint so that it relaxes (costs down, v up). The model is then a relaxation: its bound, widened by the
objective's rounding, still bounds the true objective, and winners whose exact contribution is not positive
are dropped from its answer. Such a round is reported "feasible" with that gap, never "optimal". Welfare,
the check of each winner and the prices always use the exact integers.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Literal

from ortools.sat.python import cp_model

from market.auction.book import Book, JobBid, candidates_by_shard, contribution
from market.auction.capacity import Assignment

MONEY_LIMIT = 1 << 60  # Σ |coefficient| of one money expression, after division: CP-SAT checks sums below 2⁶³
CpSatStatus = Literal["optimal", "feasible", "unknown"]
Pairs = dict[int, list[list[tuple[int, int]]]]  # job -> per shard: (provider, ask·work) that may serve it


@dataclass(frozen=True, slots=True)
class CpSatResult:
    """What CP-SAT found: the assignment (empty when nothing was found), its status and its proof."""

    assignment: Assignment
    status: CpSatStatus
    best_bound: int | None  # an upper bound on welfare + bonuses, in base units
    exact: bool  # whether every money expression was only divided by its gcd (no rounding)
    n_pairs: int  # y variables in the model
    build_seconds: float


@dataclass(slots=True)
class _JobVars:
    x: cp_model.IntVar
    pairs: list[list[tuple[int, cp_model.IntVar, int]]]  # per shard: (provider, y, ask·work)


def cpsat_assign(
    book: Book,
    *,
    time_limit_s: float,
    priority_bps: int,
    num_workers: int = 0,
    hint: Assignment | None = None,
    proof: bool = False,
) -> CpSatResult:
    """Solve `book` with CP-SAT within `time_limit_s` seconds (`num_workers` 0: one per core); `proof` tunes it
    for a long run that should end in a proof rather than for a good allocation soon."""
    started = time.perf_counter()
    pairs = prune(book)
    weights = {i: book.jobs[i].max_price + book.jobs[i].bonus(priority_bps) for i in pairs}
    model = cp_model.CpModel()
    jobs, budgets_exact = _build(model, book, pairs)
    objective = Money(list(weights.values()) + [c for ps in pairs.values() for s in ps for _, c in s])
    model.maximize(_objective(jobs, weights, objective))
    if hint:
        _add_hint(model, jobs, hint)
    n_pairs = sum(len(s) for v in jobs.values() for s in v.pairs)
    build_seconds = time.perf_counter() - started
    solver = _solver(time_limit_s, num_workers, proof)
    code = solver.solve(model)
    if code == cp_model.MODEL_INVALID:
        raise RuntimeError(f"CP-SAT rejected the model: {model.validate()}")
    exact = budgets_exact and objective.exact
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return CpSatResult({}, "unknown", None, exact, n_pairs, build_seconds)
    assignment = {i: ps for i, ps in _read(solver, jobs).items() if contribution(book, i, ps) > 0}
    if code == cp_model.OPTIMAL and exact:
        found = sum(weights[i] - (book.jobs[i].max_price - contribution(book, i, ps)) for i, ps in assignment.items())
        return CpSatResult(assignment, "optimal", found, True, n_pairs, build_seconds)
    terms = sum(1 + len(v.pairs) for v in jobs.values())  # variables that can be 1 at once: x and one y per shard
    bound = objective.bound(solver.best_objective_bound, terms)
    return CpSatResult(assignment, "feasible", bound, exact, n_pairs, build_seconds)


class Money:
    """How one money expression goes into int64: divided by the gcd of its coefficients, then by `scale`."""

    def __init__(self, coefficients: list[int]) -> None:
        self.gcd = math.gcd(*coefficients) if coefficients else 1
        self.gcd = self.gcd or 1
        total = sum(abs(c) for c in coefficients) // self.gcd
        self.scale = 1 << max(0, (total // MONEY_LIMIT).bit_length())  # total / scale <= MONEY_LIMIT
        self.exact = self.scale == 1

    def nearest(self, amount: int) -> int:
        return _round_half_up(amount // self.gcd, self.scale)

    def down(self, amount: int) -> int:
        return (amount // self.gcd) // self.scale

    def up(self, amount: int) -> int:
        return -(-(amount // self.gcd) // self.scale)

    def bound(self, model_bound: float, terms: int) -> int:
        """An upper bound in base units from CP-SAT's bound on the divided objective.

        The double CP-SAT reports is rounded up past its last bit, and each of the at most `terms` nonzero
        terms of the objective may be off by half a scaled unit.
        """
        ceiling = math.ceil(model_bound) + (math.ceil(abs(model_bound) * 2**-52) if abs(model_bound) >= 2**52 else 0)
        widened = ceiling * self.scale + (0 if self.exact else (self.scale // 2 + 1) * terms)
        return widened * self.gcd


def _round_half_up(amount: int, scale: int) -> int:
    return amount if scale == 1 else (amount + scale // 2) // scale


def prune(book: Book) -> Pairs:
    """Per job that could win at all, per shard: the (provider, ask·work) pairs that could be in its bundle."""
    cands = candidates_by_shard(book)
    asks = [p.ask for p in book.providers]
    speeds = [p.ns_per_layer_token for p in book.providers]
    fastest = {t: min((speeds[j] for j in c), default=0) for t, c in cands.items()}
    result: Pairs = {}
    for i, job in enumerate(book.jobs):
        if any(not cands[s.shard_id] for s in job.shards):
            continue
        works = [job.work(s) for s in job.shards]
        least = [asks[cands[s.shard_id][0]] * w for s, w in zip(job.shards, works, strict=True)]
        quickest = [fastest[s.shard_id] * s.layers for s in job.shards]
        per_shard: list[list[tuple[int, int]]] = []
        for k, shard in enumerate(job.shards):
            budget = job.max_price - 1 - (sum(least) - least[k])  # the most this shard may cost
            cap = job.max_ns_per_token
            limit = None if cap is None else cap - (sum(quickest) - quickest[k])
            keep = []
            for j in cands[shard.shard_id]:  # sorted by ask: stop at the first over budget
                cost = asks[j] * works[k]
                if cost > budget:
                    break
                if limit is None or speeds[j] * shard.layers <= limit:
                    keep.append((j, cost))
            per_shard.append(keep)
        if all(per_shard):
            result[i] = per_shard
    return result


def _build(model: cp_model.CpModel, book: Book, pairs: Pairs) -> tuple[dict[int, _JobVars], bool]:
    """The variables and constraints; also whether every contribution constraint is exact (not relaxed)."""
    on_provider: list[list[tuple[cp_model.IntVar, int]]] = [[] for _ in book.providers]  # (y, shard memory)
    jobs: dict[int, _JobVars] = {}
    exact = True
    for i, per_shard in pairs.items():
        job = book.jobs[i]
        x = model.new_bool_var(f"x{i}")
        vars_ = _JobVars(x, [[(j, model.new_bool_var(""), cost) for j, cost in shard] for shard in per_shard])
        jobs[i] = vars_
        by_provider: dict[int, list[cp_model.IntVar]] = {}
        for shard, shard_vars in zip(job.shards, vars_.pairs, strict=True):
            model.add(cp_model.LinearExpr.sum([y for _, y, _ in shard_vars]) == x)
            for j, y, _ in shard_vars:
                by_provider.setdefault(j, []).append(y)
                on_provider[j].append((y, shard.memory_bytes))
        for ys in by_provider.values():
            if len(ys) > 1:
                model.add(cp_model.LinearExpr.sum(ys) <= x)
        exact = _add_job_limits(model, job, vars_, book) and exact
    for j, used in enumerate(on_provider):
        provider = book.providers[j]
        if len(used) > provider.slots:
            model.add(cp_model.LinearExpr.sum([y for y, _ in used]) <= provider.slots)
        if sum(m for _, m in used) > provider.memory_bytes:
            model.add(
                cp_model.LinearExpr.weighted_sum([y for y, _ in used], [m for _, m in used]) <= provider.memory_bytes
            )
    return jobs, exact


def _add_job_limits(model: cp_model.CpModel, job: JobBid, vars_: _JobVars, book: Book) -> bool:
    """The job's speed cap (only when the slowest choice could break it) and its positive contribution.

    Returns whether the contribution constraint is exact: Σ cost·y ≤ (v − 1)·x in units of the gcd of its
    costs and v (exact: with integers, v − Σ cost ≥ 1 is v' − Σ cost' ≥ 1 after division), or, where that
    still sums past `MONEY_LIMIT`, relaxed: costs rounded down and v − 1 up.
    """
    ys: list[cp_model.IntVar] = []
    times: list[int] = []  # ns per token each pair adds to the pipeline
    costs: list[int] = []
    slowest = 0
    for shard, shard_vars in zip(job.shards, vars_.pairs, strict=True):
        shard_times = [book.providers[j].ns_per_layer_token * shard.layers for j, _, _ in shard_vars]
        slowest += max(shard_times)
        ys.extend(y for _, y, _ in shard_vars)
        times.extend(shard_times)
        costs.extend(c for _, _, c in shard_vars)
    if job.max_ns_per_token is not None and slowest > job.max_ns_per_token:
        model.add(cp_model.LinearExpr.weighted_sum([*ys, vars_.x], [*times, -job.max_ns_per_token]) <= 0)
    money = Money([*costs, job.max_price])
    if money.exact:  # v' − Σ cost' ≥ 1
        scaled, most = [c // money.gcd for c in costs], job.max_price // money.gcd - 1
    else:
        scaled, most = [money.down(c) for c in costs], money.up(job.max_price)
    model.add(cp_model.LinearExpr.weighted_sum([*ys, vars_.x], [*scaled, -most]) <= 0)
    return money.exact


def _objective(jobs: dict[int, _JobVars], weights: dict[int, int], money: Money) -> cp_model.LinearExpr:
    variables: list[cp_model.IntVar] = []
    coefs: list[int] = []
    for i, vars_ in jobs.items():
        variables.append(vars_.x)
        coefs.append(money.nearest(weights[i]))
        for shard in vars_.pairs:
            variables.extend(y for _, y, _ in shard)
            coefs.extend(-money.nearest(c) for _, _, c in shard)
    return cp_model.LinearExpr.weighted_sum(variables, coefs)


def _add_hint(model: cp_model.CpModel, jobs: dict[int, _JobVars], hint: Assignment) -> None:
    for i, vars_ in jobs.items():
        chosen = hint.get(i)
        model.add_hint(vars_.x, chosen is not None)
        for k, shard in enumerate(vars_.pairs):
            for j, y, _ in shard:
                model.add_hint(y, chosen is not None and chosen[k] == j)


def _read(solver: cp_model.CpSolver, jobs: dict[int, _JobVars]) -> Assignment:
    assignment: Assignment = {}
    for i, vars_ in jobs.items():
        if solver.boolean_value(vars_.x):
            assignment[i] = tuple(next(j for j, y, _ in shard if solver.boolean_value(y)) for shard in vars_.pairs)
    return assignment


def _solver(time_limit_s: float, num_workers: int, proof: bool) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    params = solver.parameters
    params.max_time_in_seconds = max(0.001, time_limit_s)
    params.num_workers = num_workers or os.cpu_count() or 1
    if proof:  # see the module docstring
        params.linearization_level = 2
    elif params.num_workers <= 2:
        params.cp_model_presolve = False
        if params.num_workers == 1:
            params.linearization_level = 2
        else:
            params.subsolvers.extend(["max_lp", "core"])
    return solver
