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

CP-SAT's defaults suit this model badly on few workers: the default 2-worker portfolio did not prove a
100-job × 20-provider book optimal in 10 s, and presolve alone takes seconds (a 300 × 40 book returned
nothing in 5 s). Up to 2 workers therefore skip presolve and run the LP-heavy "max_lp" and "core"
subsolvers (one worker: the full linear relaxation, linearization level 2); that proves the 100 × 20 books
in about a second and ends 500 × 50 within 1 % of its bound in 10 s (bench/auction.py). More workers keep
the default portfolio, which contains max_lp.

CP-SAT works in int64: if the money coefficients could overflow (amounts near 1e18 base units), they are
divided by a power of two and rounded; the allocation is then optimal for that rounded objective only, so
it is reported as "feasible", its bound is widened by the rounding, and winners whose exact contribution is
not positive are dropped.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Literal

from ortools.sat.python import cp_model

from market.auction.book import Book, JobBid, candidates_by_shard, contribution
from market.auction.greedy import Assignment

_MONEY_LIMIT = 2**60  # leaves CP-SAT headroom below 2^63 for sums of activities
CpSatStatus = Literal["optimal", "feasible", "unknown"]
Pairs = dict[int, list[list[tuple[int, int]]]]  # job -> per shard: (provider, ask·work) that may serve it


@dataclass(frozen=True, slots=True)
class CpSatResult:
    """What CP-SAT found: the assignment (empty when nothing was found), its status and its proof."""

    assignment: Assignment
    status: CpSatStatus
    best_bound: int | None  # an upper bound on welfare + bonuses, in base units
    scale: int  # money coefficients were divided by this (1: exact)
    n_pairs: int  # y variables in the model
    build_seconds: float


@dataclass(slots=True)
class _JobVars:
    x: cp_model.IntVar
    pairs: list[list[tuple[int, cp_model.IntVar, int]]]  # per shard: (provider, y, ask·work)


def cpsat_assign(
    book: Book, *, time_limit_s: float, priority_bps: int, num_workers: int = 0, hint: Assignment | None = None
) -> CpSatResult:
    """Solve `book` with CP-SAT within `time_limit_s` seconds (`num_workers` 0: one per core)."""
    started = time.perf_counter()
    pairs = prune(book)
    bonuses = {i: book.jobs[i].bonus(priority_bps) for i in pairs}
    magnitude = sum(book.jobs[i].max_price + bonuses[i] + sum(c for s in ps for _, c in s) for i, ps in pairs.items())
    scale = 1 << max(0, (magnitude // _MONEY_LIMIT).bit_length())
    model = cp_model.CpModel()
    jobs = _build(model, book, pairs, scale)
    model.maximize(_objective(book, jobs, bonuses, scale))
    if hint:
        _add_hint(model, jobs, hint)
    n_pairs = sum(len(s) for v in jobs.values() for s in v.pairs)
    build_seconds = time.perf_counter() - started
    solver = _solver(time_limit_s, num_workers)
    code = solver.solve(model)
    if code == cp_model.MODEL_INVALID:
        raise RuntimeError(f"CP-SAT rejected the model: {model.validate()}")
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return CpSatResult({}, "unknown", None, scale, n_pairs, build_seconds)
    assignment = _read(solver, jobs)
    bound = math.floor(solver.best_objective_bound) * scale
    if scale > 1:  # each rounded coefficient is off by at most scale / 2
        bound += scale * (len(jobs) + n_pairs)
        assignment = {i: ps for i, ps in assignment.items() if contribution(book, i, ps) > 0}
    status: CpSatStatus = "optimal" if code == cp_model.OPTIMAL and scale == 1 else "feasible"
    return CpSatResult(assignment, status, bound, scale, n_pairs, build_seconds)


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


def _build(model: cp_model.CpModel, book: Book, pairs: Pairs, scale: int) -> dict[int, _JobVars]:
    on_provider: list[list[tuple[cp_model.IntVar, int]]] = [[] for _ in book.providers]  # (y, shard memory)
    jobs: dict[int, _JobVars] = {}
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
        _add_job_limits(model, job, vars_, book, scale)
    for j, used in enumerate(on_provider):
        provider = book.providers[j]
        if len(used) > provider.slots:
            model.add(cp_model.LinearExpr.sum([y for y, _ in used]) <= provider.slots)
        if sum(m for _, m in used) > provider.memory_bytes:
            model.add(
                cp_model.LinearExpr.weighted_sum([y for y, _ in used], [m for _, m in used]) <= provider.memory_bytes
            )
    return jobs


def _add_job_limits(model: cp_model.CpModel, job: JobBid, vars_: _JobVars, book: Book, scale: int) -> None:
    """The job's speed cap (only when the slowest choice could break it) and its positive contribution."""
    ys: list[cp_model.IntVar] = []
    times: list[int] = []  # ns per token each pair adds to the pipeline
    costs: list[int] = []
    slowest = 0
    for shard, shard_vars in zip(job.shards, vars_.pairs, strict=True):
        shard_times = [book.providers[j].ns_per_layer_token * shard.layers for j, _, _ in shard_vars]
        slowest += max(shard_times)
        ys.extend(y for _, y, _ in shard_vars)
        times.extend(shard_times)
        costs.extend(_scaled(c, scale) for _, _, c in shard_vars)
    if job.max_ns_per_token is not None and slowest > job.max_ns_per_token:
        model.add(cp_model.LinearExpr.weighted_sum([*ys, vars_.x], [*times, -job.max_ns_per_token]) <= 0)
    margin = 1 if scale == 1 else 0  # exact money: cost + 1 <= v; rounded money: exact check afterwards
    model.add(cp_model.LinearExpr.weighted_sum([*ys, vars_.x], [*costs, margin - _scaled(job.max_price, scale)]) <= 0)


def _objective(book: Book, jobs: dict[int, _JobVars], bonuses: dict[int, int], scale: int) -> cp_model.LinearExpr:
    variables: list[cp_model.IntVar] = []
    coefs: list[int] = []
    for i, vars_ in jobs.items():
        variables.append(vars_.x)
        coefs.append(_scaled(book.jobs[i].max_price + bonuses[i], scale))
        for shard in vars_.pairs:
            variables.extend(y for _, y, _ in shard)
            coefs.extend(-_scaled(c, scale) for _, _, c in shard)
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


def _solver(time_limit_s: float, num_workers: int) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    params = solver.parameters
    params.max_time_in_seconds = max(0.001, time_limit_s)
    params.num_workers = num_workers or os.cpu_count() or 1
    if params.num_workers <= 2:  # see the module docstring
        params.cp_model_presolve = False
        if params.num_workers == 1:
            params.linearization_level = 2
        else:
            params.subsolvers.extend(["max_lp", "core"])
    return solver


def _scaled(amount: int, scale: int) -> int:
    return amount if scale == 1 else (amount + scale // 2) // scale
