"""Properties of the auction on random books, for both solvers: feasibility, individual rationality on both
sides, weak budget balance, CP-SAT against brute force, and greedy against CP-SAT.

Every check is exact integer arithmetic on the book itself, independent of the solvers' own bookkeeping.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.auction import PRIORITY_STEP_BPS, Allocation, Book, Id, JobBid, ProviderOffer, ShardDemand, solve

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Choice = tuple[int, ...] | None  # one job's providers per shard, or None: it loses


@st.composite
def books(draw: st.DrawFn, max_jobs: int = 8, max_providers: int = 6, max_shards: int = 3) -> Book:
    n_types = draw(st.integers(1, 4))
    types = [
        ShardDemand(f"m:{t}", draw(st.integers(1, 6)), draw(st.sampled_from([0, 10, 40, 100]))) for t in range(n_types)
    ]
    jobs = []
    for i in range(draw(st.integers(1, max_jobs))):
        picked = draw(st.lists(st.sampled_from(types), min_size=1, max_size=min(max_shards, n_types), unique=True))
        tokens = draw(st.integers(1, 20))
        work = sum(s.layers for s in picked) * tokens
        # Bids per unit around the asks (0..20 per layer-token): some far above, some below.
        value = draw(st.one_of(st.integers(0, 25 * work), st.integers(0, 10**6)))
        speed_cap = draw(st.one_of(st.none(), st.none(), st.integers(0, 200)))
        jobs.append(JobBid(f"j{i}", tuple(picked), tokens, value, draw(st.integers(-1, 6)), speed_cap))
    providers = []
    for j in range(draw(st.integers(1, max_providers))):
        served = draw(st.one_of(st.none(), st.none(), st.frozensets(st.sampled_from([s.shard_id for s in types]))))
        providers.append(
            ProviderOffer(
                f"p{j}",
                slots=draw(st.sampled_from([0, 1, 1, 2, 2, 3, 3])),
                memory_bytes=draw(st.sampled_from([0, 50, 100, 150, 200, 300, 10**9, 10**9])),
                ask=draw(st.integers(0, 20)),
                ns_per_layer_token=draw(st.integers(0, 10)),
                shard_ids=served,
            )
        )
    return Book(jobs, providers)


def assert_valid(book: Book, allocation: Allocation) -> None:
    """Every constraint and property, checked from the book alone."""
    jobs = {j.job_id: j for j in book.jobs}
    providers = {p.provider_id: p for p in book.providers}
    assert set(allocation.winners).isdisjoint(allocation.losers)
    assert set(allocation.winners) | set(allocation.losers) == set(jobs)
    slots_used: Counter[Id] = Counter()
    memory_used: Counter[Id] = Counter()
    welfare = bonuses = 0
    for job_id, trades in allocation.winners.items():
        job = jobs[job_id]
        # Every shard assigned exactly once, each to a different provider that can serve it.
        assert [t.shard_id for t in trades] == [s.shard_id for s in job.shards]
        assert len({t.provider_id for t in trades}) == len(trades)
        pipeline_ns = 0
        for trade, shard in zip(trades, job.shards, strict=True):
            provider = providers[trade.provider_id]
            assert provider.shard_ids is None or shard.shard_id in provider.shard_ids
            assert trade.work == shard.layers * job.tokens
            assert trade.ask == provider.ask
            assert trade.payment == trade.unit_price * trade.work
            # Provider individual rationality, with the fee taken.
            assert trade.unit_price >= provider.ask
            assert trade.provider_receipt >= provider.ask * trade.work
            # The trade's money adds up: what the buyer pays is the provider's receipt plus a fee >= 0.
            assert trade.fee >= 0
            assert trade.payment == trade.provider_receipt + trade.fee
            assert trade.fee <= trade.payment * allocation.fee_bps // 10_000
            slots_used[provider.provider_id] += 1
            memory_used[provider.provider_id] += shard.memory_bytes
            pipeline_ns += provider.ns_per_layer_token * shard.layers
        if job.max_ns_per_token is not None:
            assert pipeline_ns <= job.max_ns_per_token
        # Buyer individual rationality: the bundle costs at most the escrowed maximum.
        assert sum(t.payment for t in trades) <= job.max_price
        # When every ask is at most the bid per unit b = v / W, each trade is at floor((ask + b) / 2), whatever
        # the job's priority.
        if all(t.ask * job.total_work <= job.max_price for t in trades):
            assert all(t.unit_price == (t.ask * job.total_work + job.max_price) // (2 * job.total_work) for t in trades)
        contribution = job.max_price - sum(t.ask * t.work for t in trades)
        assert contribution > 0
        welfare += contribution
        bonuses += job.bonus(allocation.priority_bps)
    for provider_id, used in slots_used.items():
        assert used <= providers[provider_id].slots
        assert memory_used[provider_id] <= providers[provider_id].memory_bytes
    assert allocation.welfare == welfare
    assert allocation.objective == welfare + bonuses
    # Weak budget balance of the round: the platform never pays out more than buyers pay in.
    assert allocation.buyer_payments >= allocation.provider_receipts
    assert allocation.buyer_payments - allocation.provider_receipts == allocation.fees >= 0


@pytest.mark.parametrize("solver", ["greedy", "cpsat", "auto"])
@SETTINGS
@given(book=books(), fee_bps=st.sampled_from([0, 1, 250, 3333, 10_000]))
def test_allocation_is_feasible_rational_and_budget_balanced(solver: str, book: Book, fee_bps: int) -> None:
    allocation = solve(book, solver=solver, fee_bps=fee_bps, time_limit_s=5, num_workers=1)  # type: ignore[arg-type]
    assert_valid(book, allocation)
    assert allocation.solver == ("greedy" if solver == "greedy" else "cpsat")
    assert allocation.counts()["winners"] + allocation.counts()["losers"] == len(book.jobs)


@SETTINGS
@given(book=books(max_jobs=40, max_providers=10), fee_bps=st.sampled_from([0, 250]))
def test_greedy_stays_valid_on_crowded_books(book: Book, fee_bps: int) -> None:
    # Many jobs per provider: capacity runs out, so the greedy's repair moves winners' shards around.
    assert_valid(book, solve(book, solver="greedy", fee_bps=fee_bps))


def choices(book: Book, job: JobBid) -> Iterator[Choice]:
    """Every way to place `job`: lose, or an injective shard -> provider map onto providers that serve them."""
    yield None
    for perm in itertools.permutations(range(len(book.providers)), len(job.shards)):
        if all(book.providers[j].can_serve(s) for j, s in zip(perm, job.shards, strict=True)):
            yield perm


def brute_force(book: Book, priority_bps: int) -> int:
    """The best objective (welfare + bonuses) over every assignment of every job, checked constraint by constraint."""
    best = 0
    for combo in itertools.product(*(list(choices(book, job)) for job in book.jobs)):
        slots: Counter[int] = Counter()
        memory: Counter[int] = Counter()
        objective = 0
        feasible = True
        for job, perm in zip(book.jobs, combo, strict=True):
            if perm is None:
                continue
            placed = list(zip(perm, job.shards, strict=True))
            speed = sum(book.providers[j].ns_per_layer_token * s.layers for j, s in placed)
            contribution = job.max_price - sum(book.providers[j].ask * job.work(s) for j, s in placed)
            if contribution <= 0 or (job.max_ns_per_token is not None and speed > job.max_ns_per_token):
                feasible = False
                break
            for j, s in placed:
                slots[j] += 1
                memory[j] += s.memory_bytes
            objective += contribution + job.bonus(priority_bps)
        if feasible and all(
            slots[j] <= book.providers[j].slots and memory[j] <= book.providers[j].memory_bytes for j in slots
        ):
            best = max(best, objective)
    return best


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(book=books(max_jobs=4, max_providers=3, max_shards=2), priority_bps=st.sampled_from([0, PRIORITY_STEP_BPS]))
def test_cpsat_objective_equals_brute_force_on_tiny_books(book: Book, priority_bps: int) -> None:
    allocation = solve(book, solver="cpsat", priority_bps=priority_bps, num_workers=1)
    assert allocation.status == "optimal"
    assert allocation.optimality_gap == 0.0
    assert allocation.objective == allocation.best_bound == brute_force(book, priority_bps)
    if priority_bps == 0:
        assert allocation.welfare == allocation.objective


@SETTINGS
@given(book=books(), priority_bps=st.sampled_from([0, PRIORITY_STEP_BPS]))
def test_greedy_never_beats_cpsat(book: Book, priority_bps: int) -> None:
    greedy = solve(book, solver="greedy", priority_bps=priority_bps)
    exact = solve(book, solver="cpsat", priority_bps=priority_bps, num_workers=1)
    assert exact.status == "optimal"
    assert greedy.objective <= exact.objective
    if priority_bps == 0:
        assert greedy.welfare <= exact.welfare
    assert greedy.status == "heuristic" and greedy.optimality_gap is None and greedy.best_bound is None
