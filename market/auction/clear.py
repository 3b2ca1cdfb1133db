"""Clear one auction round: pick a solver, run it, price the matches, and report the round.

`solve(book)` is the one entry point. "auto" runs CP-SAT when the book has at most `AUTO_CPSAT_MAX_PAIRS`
(job shard, provider) pairs and the greedy otherwise (see that constant for how it was chosen). CP-SAT
always starts from the greedy's allocation as a hint, and the round keeps whichever of the two scores
higher (the greedy's on a tie, so that equal books clear alike: CP-SAT on several workers may return any of
equally good allocations), so asking for CP-SAT never returns less than the greedy; if CP-SAT finds nothing
within the time limit, the greedy's allocation is returned and the round says so (`solver == "greedy"`,
`requested == "cpsat"`).

Between `AUTO_CPSAT_MAX_PAIRS` and `COLUMNS_MAX_PAIRS` pairs "auto" runs price and branch (`columns`) from the
greedy's allocation instead: whole placements as columns, their relaxation's bound, CP-SAT over them.

A round that was not proved optimal ("auto" or "cpsat") on a book of up to `bound.LP_MAX_PAIRS` pairs also
gets the compact linear relaxation's bound (`bound.lp_bound`, within half the time limit) unless the placement
bound converged, and reports the tightest: CP-SAT's own bound at a short time limit is often far looser than the
gap it leaves.

Both solvers maximise the objective welfare + the winners' priority bonuses (`JobBid.bonus`); `welfare`
is reported without the bonuses, and prices never depend on priority.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from market.auction.book import BPS, PRIORITY_STEP_BPS, Book, Id, contribution
from market.auction.bound import LP_MAX_PAIRS, lp_bound
from market.auction.columns import Columns
from market.auction.cpsat import cpsat_assign
from market.auction.greedy import Assignment, greedy_assign
from market.auction.pricing import platform_fee, unit_prices

# "auto" uses CP-SAT up to this many (job shard, provider) pairs, `Book.n_pairs`: below, it mostly proves the
# optimum within the market's time limit; above, its compact model rarely beats the greedy in that time and
# takes long to build (bench/auction.py compares solver="cpsat" with "auto" on its 200 × 50 books).
AUTO_CPSAT_MAX_PAIRS = 20_000
# Above that and up to this many pairs, "auto" runs price and branch (`columns`) after the greedy, half the time
# limit generating columns and the rest in CP-SAT over them: on books with speed caps (bench/auction.py's
# "speed" family) it finds what the greedy and the compact model miss, and its bound is the tighter one.
COLUMNS_MAX_PAIRS = 60_000

SolverName = Literal["auto", "cpsat", "greedy"]
Status = Literal["optimal", "feasible", "heuristic"]


@dataclass(frozen=True, slots=True)
class Trade:
    """One shard of a winning job on one provider, in base units.

    The buyer pays `payment = unit_price × work`; the provider receives `provider_receipt = payment − fee`,
    at least `ask × work`; the platform keeps `fee`.
    """

    job_id: Id
    shard_id: str
    provider_id: Id
    work: int  # layer-tokens
    ask: int  # the provider's ask per layer-token
    unit_price: int  # base units per layer-token
    payment: int
    fee: int
    provider_receipt: int


@dataclass(frozen=True, slots=True)
class Allocation:
    """The outcome of one round: who runs where at what price, and how good the solution is known to be.

    `status` is "optimal" (CP-SAT proved it), "feasible" (CP-SAT stopped at its time limit) or "heuristic"
    (greedy alone). `best_bound` is the tightest of CP-SAT's bound, the placement bound (`columns`) and the
    linear relaxation's (`bound`, for books of up to `LP_MAX_PAIRS` pairs that are not proved optimal; never
    when solver="greedy" is asked for), and
    `optimality_gap` says how far the objective may be from it; both None when no bound was computed.
    """

    winners: dict[Id, tuple[Trade, ...]]  # job id -> its trades, in the job's shard order
    losers: tuple[Id, ...]  # in book order
    welfare: int  # Σ over winners of (v_i − Σ ask × work), base units
    objective: int  # welfare + the winners' priority bonuses: what the solvers maximise
    solver: Literal["cpsat", "greedy"]  # "cpsat": CP-SAT decided the round (its allocation, the greedy's on a tie)
    requested: SolverName
    status: Status
    wall_time_s: float
    best_bound: int | None  # upper bound on the objective (CP-SAT's or the LP relaxation's), base units
    optimality_gap: float | None  # (best_bound − objective) / best_bound, 0.0 when optimal
    fee_bps: int
    priority_bps: int
    n_jobs: int
    n_providers: int

    @property
    def trades(self) -> list[Trade]:
        return [t for ts in self.winners.values() for t in ts]

    @property
    def buyer_payments(self) -> int:
        return sum(t.payment for t in self.trades)

    @property
    def provider_receipts(self) -> int:
        return sum(t.provider_receipt for t in self.trades)

    @property
    def fees(self) -> int:
        return sum(t.fee for t in self.trades)

    def counts(self) -> dict[str, int]:
        return {
            "jobs": self.n_jobs,
            "providers": self.n_providers,
            "winners": len(self.winners),
            "losers": len(self.losers),
            "trades": sum(len(ts) for ts in self.winners.values()),
        }

    def record(self) -> dict[str, object]:
        """The round as plain JSON-ready data, for the round log: outcome, proof, counts, money and prices."""
        return {
            "solver": self.solver,
            "requested": self.requested,
            "status": self.status,
            "wall_time_s": round(self.wall_time_s, 4),
            "welfare": self.welfare,
            "objective": self.objective,
            "best_bound": self.best_bound,
            "optimality_gap": self.optimality_gap,
            "fee_bps": self.fee_bps,
            "priority_bps": self.priority_bps,
            "counts": self.counts(),
            "buyer_payments": self.buyer_payments,
            "provider_receipts": self.provider_receipts,
            "fees": self.fees,
            "trades": [
                {
                    "job": t.job_id,
                    "shard": t.shard_id,
                    "provider": t.provider_id,
                    "work": t.work,
                    "ask": t.ask,
                    "unit_price": t.unit_price,
                    "payment": t.payment,
                    "fee": t.fee,
                }
                for t in self.trades
            ],
        }


def solve(
    book: Book,
    *,
    solver: SolverName = "auto",
    time_limit_s: float = 5.0,
    fee_bps: int = 0,
    priority_bps: int = PRIORITY_STEP_BPS,
    num_workers: int = 0,
) -> Allocation:
    """Decide which jobs of `book` run on which providers and at what prices.

    `time_limit_s` bounds CP-SAT's search or price and branch (model building and the greedy come on top, and
    the linear relaxation's bound gets at most half as long again); `fee_bps` is the platform's cut of each
    trade in basis points (see `pricing`); `priority_bps` what each priority level adds to a job's weight
    (`JobBid.bonus`; 0 ignores priority); `num_workers` CP-SAT's threads (0: one per core).
    """
    if solver not in ("auto", "cpsat", "greedy"):
        raise ValueError(f"unknown solver {solver!r}; use 'auto', 'cpsat' or 'greedy'")
    if not 0 <= fee_bps <= BPS:
        raise ValueError(f"fee_bps must be in [0, {BPS}], got {fee_bps}")
    if not 0 <= priority_bps <= BPS:
        raise ValueError(f"priority_bps must be in [0, {BPS}], got {priority_bps}")
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be positive, got {time_limit_s}")
    started = time.perf_counter()
    assignment = greedy_assign(book, priority_bps=priority_bps)
    used: Literal["cpsat", "greedy"] = "greedy"
    status: Status = "heuristic"
    bound: int | None = None
    converged = False  # whether the placement bound (`columns`) is its relaxation's optimum
    if solver == "cpsat" or (solver == "auto" and book.n_pairs <= AUTO_CPSAT_MAX_PAIRS):
        result = cpsat_assign(
            book, time_limit_s=time_limit_s, priority_bps=priority_bps, num_workers=num_workers, hint=assignment
        )
        if result.status != "unknown":
            status, bound, used = result.status, result.best_bound, "cpsat"
            proved, kept = _objective(book, result.assignment, priority_bps), _objective(book, assignment, priority_bps)
            if proved > kept:
                assignment = result.assignment
            elif proved < kept:  # CP-SAT stopped on something worse than its hint: the greedy's, with CP-SAT's bound
                status, used = "feasible", "greedy"
            # On a tie the greedy's allocation stays: CP-SAT, on several workers, may return any of equally good
            # allocations, and equal books must clear the same way (a provider keeps the shard it already holds).
    elif solver == "auto" and book.n_pairs <= COLUMNS_MAX_PAIRS:
        columns = Columns.of(book, priority_bps)
        if columns is not None:
            columns.add(assignment)
            status, bound = "feasible", columns.generate(time_limit_s / 2)
            left = time_limit_s - (time.perf_counter() - started)
            found = columns.assign(left, assignment, num_workers)
            if _objective(book, found, priority_bps) > _objective(book, assignment, priority_bps):
                assignment, used = found, "cpsat"
            converged = columns.converged
    if solver != "greedy" and status != "optimal" and not converged and book.n_pairs <= LP_MAX_PAIRS:
        relaxed = lp_bound(book, priority_bps, time_limit_s / 2)  # often far tighter than CP-SAT's own bound
        if relaxed is not None:
            bound = relaxed if bound is None else min(bound, relaxed)
    return _Round(book, fee_bps, priority_bps).allocation(
        assignment, used, solver, status, bound, time.perf_counter() - started
    )


def _objective(book: Book, assignment: Assignment, priority_bps: int) -> int:
    return sum(contribution(book, i, ps) + book.jobs[i].bonus(priority_bps) for i, ps in assignment.items())


@dataclass(frozen=True, slots=True)
class _Round:
    """Turns a solver's assignment into priced trades and the round's `Allocation`."""

    book: Book
    fee_bps: int
    priority_bps: int

    def allocation(
        self,
        assignment: Assignment,
        used: Literal["cpsat", "greedy"],
        requested: SolverName,
        status: Status,
        bound: int | None,
        elapsed: float,
    ) -> Allocation:
        book = self.book
        winners = {book.jobs[i].job_id: self.trades(i, assignment[i]) for i in sorted(assignment)}
        welfare = sum(contribution(book, i, ps) for i, ps in assignment.items())
        objective = _objective(book, assignment, self.priority_bps)
        gap = None
        if status == "optimal":
            gap = 0.0
        elif bound is not None:
            gap = max(0.0, (bound - objective) / bound) if bound > 0 else 0.0
        losers = tuple(job.job_id for i, job in enumerate(book.jobs) if i not in assignment)
        return Allocation(
            winners=winners,
            losers=losers,
            welfare=welfare,
            objective=objective,
            solver=used,
            requested=requested,
            status=status,
            wall_time_s=elapsed,
            best_bound=bound,
            optimality_gap=gap,
            fee_bps=self.fee_bps,
            priority_bps=self.priority_bps,
            n_jobs=len(book.jobs),
            n_providers=len(book.providers),
        )

    def trades(self, i: int, providers: tuple[int, ...]) -> tuple[Trade, ...]:
        job = self.book.jobs[i]
        offers = [self.book.providers[j] for j in providers]
        works = [job.work(s) for s in job.shards]
        prices = unit_prices(job.max_price, works, [p.ask for p in offers])
        trades = []
        for shard, offer, work, price in zip(job.shards, offers, works, prices, strict=True):
            payment = price * work
            fee = platform_fee(payment, offer.ask * work, self.fee_bps)
            trades.append(
                Trade(
                    job.job_id, shard.shard_id, offer.provider_id, work, offer.ask, price, payment, fee, payment - fee
                )
            )
        return tuple(trades)
