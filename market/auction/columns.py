"""Price and branch: whole placements as columns, the bound of their linear relaxation, CP-SAT over them.

The placement model has one column per job and whole placement P (one provider per shard, all distinct, within
the job's speed cap and v − Σ ask·work ≥ 1): a job takes at most one of its columns, and the columns taken
respect each provider's slots and memory. Each column already obeys the job's own rules, so the relaxation of
this model is far tighter than the compact one of `cpsat` and `bound.lp_bound` wherever a speed cap or the
distinct-provider rule binds: there the compact relaxation mixes fractions of fast and slow providers.

`Columns.generate` is column generation. GLOP solves the relaxation on the columns found so far; every job
then prices its best placement against the duals λ (slots) and μ (memory), exactly: `bundle.branch_and_bound`
over its pruned candidates (`cpsat.prune`) sorted by reduced cost. The new columns join, until none prices
positive or the time is spent. For any λ, μ ≥ 0 the Lagrangian of the capacities,

    Σ_j (λ_j·slots_j + μ_j·memory_j) + Σ_i max(0, max_P [v_i + bonus_i − Σ_(k,j)∈P (ask_j·w_ik + λ_j + μ_j·m_k)]),

bounds the objective, so the least value seen is a true bound even when time runs out first. It is computed in
doubles and rounded up with `bound.MARGIN`, like `lp_bound`.

`Columns.assign` gives CP-SAT the integer model over the columns found (price and branch: no new columns in
the search), hinted with the greedy's allocation; `clear.solve` keeps the better of the two. Every column is
checked on the exact integers before it joins, so the answer is always feasible; its objective goes through
`cpsat.Money`, so huge amounts are divided exactly or rounded (then only the choice may suffer, never safety).

Books of more than `MAX_PAIRS` pruned (job shard, provider) pairs get no columns: `Columns.of` returns None.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ortools.linear_solver import pywraplp  # type: ignore[import-untyped]
from ortools.sat.python import cp_model

from market.auction.book import Book, contribution
from market.auction.bound import MARGIN
from market.auction.bundle import Option, branch_and_bound
from market.auction.capacity import Assignment
from market.auction.cpsat import Money, prune

MAX_PAIRS = 100_000  # the most pruned (job shard, provider) pairs a book may have to get columns: pricing is Python
GIB = float(1 << 30)  # memory rows of the master are in GiB, so that GLOP sees numbers near 1

Placement = tuple[int, ...]
_Shard = tuple[list[tuple[int, int, int]], int]


class Columns:
    """The placement model of one book: each job's candidates as arrays, the columns found so far, the bound."""

    def __init__(self, book: Book, priority_bps: int) -> None:
        self.book = book
        self.priority_bps = priority_bps
        self.jobs: dict[int, list[_Shard]] = {}  # per job, per shard: (provider, ask·work, ns per token), memory
        for i, per_shard in prune(book).items():
            job = book.jobs[i]
            self.jobs[i] = [
                ([(j, cost, book.providers[j].ns_per_layer_token * s.layers) for j, cost in candidates], s.memory_bytes)
                for s, candidates in zip(job.shards, per_shard, strict=True)
            ]
        self.values = {i: book.jobs[i].max_price + book.jobs[i].bonus(priority_bps) for i in self.jobs}
        self.columns: dict[int, set[Placement]] = {i: set() for i in self.jobs}
        self.bound: int | None = None
        self.converged = False  # whether the last `generate` ended with no column pricing positive
        self._lp: Any = None  # the master LP, kept between rounds of pricing (`master`)
        self._rows: Any = None
        self._in_lp: dict[int, set[Placement]] = {}  # the columns already in it

    @classmethod
    def of(cls, book: Book, priority_bps: int) -> Columns | None:
        """The placement model of `book`, or None when it has more than `MAX_PAIRS` pruned pairs."""
        columns = cls(book, priority_bps)
        if sum(len(c) for shards in columns.jobs.values() for c, _ in shards) > MAX_PAIRS:
            return None
        return columns

    def add(self, assignment: Assignment) -> None:
        """The placements of an allocation (the greedy's, say) as columns."""
        for i, placement in assignment.items():
            self.offer(i, placement)

    def offer(self, i: int, placement: Placement) -> bool:
        """Add job i's placement as a column if it is new and obeys the job's rules on the exact integers."""
        if i not in self.columns or placement in self.columns[i]:
            return False
        job, providers = self.book.jobs[i], self.book.providers
        shards = list(zip(placement, job.shards, strict=True))
        if len(set(placement)) < len(placement) or not all(providers[j].can_serve(s) for j, s in shards):
            return False
        if contribution(self.book, i, placement) < 1:
            return False
        ns = sum(providers[j].ns_per_layer_token * s.layers for j, s in shards)
        if job.max_ns_per_token is not None and ns > job.max_ns_per_token:
            return False
        self.columns[i].add(placement)
        return True

    def generate(self, seconds: float) -> int:
        """Column generation for at most `seconds` (one pricing at least); returns the bound, also kept in `bound`."""
        started = time.perf_counter()
        providers = self.book.providers
        lam, mu = [0.0] * len(providers), [0.0] * len(providers)
        scale = float(max(self.values.values(), default=1)) or 1.0  # money in the master is divided by this
        best = math.inf
        while True:
            priced = self.price(lam, mu)
            rent = sum(lam[j] * p.slots + mu[j] * p.memory_bytes for j, p in enumerate(providers))
            best = min(best, rent + sum(max(0.0, p) for p, _ in priced.values()))
            new = sum(self.offer(i, placement) for i, (profit, placement) in priced.items() if profit > 0)
            if new == 0:
                self.converged = True
                break
            if time.perf_counter() - started > seconds:
                break
            duals = self.master(scale)
            if duals is None:
                break
            lam, mu = [d * scale for d in duals[0]], [d * scale / GIB for d in duals[1]]
        self.bound = max(0, math.ceil(best + abs(best) * MARGIN) + 1)
        return self.bound

    def price(self, lam: list[float], mu: list[float]) -> dict[int, tuple[float, Placement]]:
        """Per job with a placement: its best reduced profit v + bonus − Σ (ask·work + λ_j + μ_j·m) and where.

        `bundle.branch_and_bound` finds it, with the reduced cost as the selection cost: exact, and quick
        because each shard's options are sorted by it."""
        result: dict[int, tuple[float, Placement]] = {}
        for i, shards in self.jobs.items():
            job = self.book.jobs[i]
            options: list[list[Option]] = []
            for candidates, need in shards:
                options.append(sorted((cost + lam[j] + mu[j] * need, cost, ns, j) for j, cost, ns in candidates))
            found = branch_and_bound(options, job.max_price - 1, job.max_ns_per_token)
            if found is not None:
                placement, cost = found
                prices = sum(lam[j] + mu[j] * need for j, (_, need) in zip(placement, shards, strict=True))
                result[i] = (self.values[i] - cost - prices, placement)
        return result

    def master(self, scale: float) -> tuple[list[float], list[float]] | None:
        """GLOP on the columns so far: the duals of slots and memory (money / `scale`, memory in GiB), or None.

        The LP is kept between calls and only the new columns are added, so GLOP starts from its last basis."""
        if self._lp is None:
            lp = pywraplp.Solver.CreateSolver("GLOP")
            inf = lp.infinity()
            self._lp = lp
            self._rows = (
                [lp.Constraint(-inf, p.slots) for p in self.book.providers],
                [lp.Constraint(-inf, p.memory_bytes / GIB) for p in self.book.providers],
                {i: lp.Constraint(-inf, 1) for i in self.jobs},
            )
            lp.Objective().SetMaximization()
        lp, (slots, memory, once) = self._lp, self._rows
        objective = lp.Objective()
        for i, placements in self.columns.items():
            job = self.book.jobs[i]
            for placement in placements - self._in_lp.setdefault(i, set()):
                self._in_lp[i].add(placement)
                z = lp.NumVar(0, 1, "")
                once[i].SetCoefficient(z, 1)
                gain = contribution(self.book, i, placement) + job.bonus(self.priority_bps)
                objective.SetCoefficient(z, gain / scale)
                for j, s in zip(placement, job.shards, strict=True):
                    slots[j].SetCoefficient(z, 1)
                    memory[j].SetCoefficient(z, s.memory_bytes / GIB)
        if lp.Solve() != pywraplp.Solver.OPTIMAL:
            return None
        return [max(0.0, c.dual_value()) for c in slots], [max(0.0, c.dual_value()) for c in memory]

    def assign(self, seconds: float, hint: Assignment, num_workers: int) -> Assignment:
        """CP-SAT over the columns found, from `hint` (whose placements join the columns): the best it finds."""
        self.add(hint)
        model = cp_model.CpModel()
        chosen: list[tuple[int, Placement, cp_model.IntVar]] = []
        on_provider: dict[int, list[tuple[cp_model.IntVar, int]]] = {}
        for i, placements in self.columns.items():
            once = []
            for placement in sorted(placements):
                z = model.new_bool_var("")
                once.append(z)
                chosen.append((i, placement, z))
                model.add_hint(z, hint.get(i) == placement)
                for j, s in zip(placement, self.book.jobs[i].shards, strict=True):
                    on_provider.setdefault(j, []).append((z, s.memory_bytes))
            if len(once) > 1:
                model.add(cp_model.LinearExpr.sum(once) <= 1)
        for j, used in on_provider.items():
            provider = self.book.providers[j]
            if len(used) > provider.slots:
                model.add(cp_model.LinearExpr.sum([z for z, _ in used]) <= provider.slots)
            if sum(m for _, m in used) > provider.memory_bytes:
                model.add(
                    cp_model.LinearExpr.weighted_sum([z for z, _ in used], [m for _, m in used])
                    <= provider.memory_bytes
                )
        gains = [contribution(self.book, i, p) + self.book.jobs[i].bonus(self.priority_bps) for i, p, _ in chosen]
        money = Money(gains)
        model.maximize(cp_model.LinearExpr.weighted_sum([z for _, _, z in chosen], [money.nearest(g) for g in gains]))
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(0.001, seconds)
        solver.parameters.num_workers = num_workers or 1
        if solver.solve(model) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return dict(hint)
        return {i: p for i, p, z in chosen if solver.boolean_value(z)}
