"""The auction on hard books (`market.auction.families`), against an exhaustive optimum.

`families.exhaustive` is independent of the solvers: every way to place every job (or not), over the capacity
left, memoised on that capacity. The greedy must reach 0.95 of it at the median and 0.80 at the worst on every
family; "auto" (CP-SAT on books this small) must reach it exactly. Also: the exact placement of one job,
huge money, and the capacity journal the local search undoes with.
"""

from __future__ import annotations

import itertools
import statistics

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.auction import (
    AUTO_CPSAT_MAX_PAIRS,
    COLUMNS_MAX_PAIRS,
    PRIORITY_STEP_BPS,
    Book,
    JobBid,
    ProviderOffer,
    ShardDemand,
    solve,
)
from market.auction.book import contribution
from market.auction.bound import MARGIN, lp_bound
from market.auction.capacity import Capacity
from market.auction.clear import _Round
from market.auction.columns import Columns
from market.auction.families import FAMILIES, exhaustive, huge_base
from tests.market.test_auction import assert_valid, books

SEEDS = range(6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_reaches_the_targets_and_auto_the_optimum_on_small_books(family: str) -> None:
    ratios = []
    for seed in SEEDS:
        book = FAMILIES[family](6, 4, seed)
        optimum = exhaustive(book)
        greedy = solve(book, solver="greedy", priority_bps=0)
        auto = solve(book, priority_bps=0, num_workers=1)
        assert_valid(book, greedy)
        assert_valid(book, auto)
        assert auto.welfare == optimum and (auto.status, auto.best_bound) == ("optimal", optimum)
        ratios.append(greedy.welfare / optimum if optimum else 1.0)
    assert statistics.median(ratios) >= 0.95 and min(ratios) >= 0.80, ratios


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_medium_books_are_valid_and_cpsat_only_improves_on_the_greedy(family: str) -> None:
    book = FAMILIES[family](40, 12, 1)
    greedy = solve(book, solver="greedy")
    exact = solve(book, solver="cpsat", time_limit_s=1, num_workers=1)
    assert_valid(book, greedy)
    assert_valid(book, exact)
    assert exact.objective >= greedy.objective
    assert exact.best_bound is not None and exact.best_bound >= exact.objective


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(book=books(max_jobs=1, max_providers=5, max_shards=3))
def test_a_job_alone_on_an_empty_market_wins_whenever_a_profitable_placement_exists(book: Book) -> None:
    # The trap of placing shard by shard: the first shard takes the only provider of a later one, or lands
    # on a dearer provider so that the bundle costs more than v. The greedy places a job's shards together.
    assert solve(book, solver="greedy", priority_bps=0).welfare == exhaustive(book)


def cheapest_placement(book: Book, i: int) -> int | None:
    """The least Σ ask·work over every placement of job i alone (distinct providers, cap, v − 1), or None."""
    job, best = book.jobs[i], None
    for perm in itertools.permutations(range(len(book.providers)), len(job.shards)):
        placed = list(zip(perm, job.shards, strict=True))
        if not all(book.providers[j].can_serve(s) for j, s in placed):
            continue
        cost = sum(book.providers[j].ask * job.work(s) for j, s in placed)
        ns = sum(book.providers[j].ns_per_layer_token * s.layers for j, s in placed)
        if cost < job.max_price and (job.max_ns_per_token is None or ns <= job.max_ns_per_token):
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("family", ["random", "holders", "speed", "memory"])
def test_the_placement_of_one_job_is_the_cheapest_there_is(family: str) -> None:
    for seed in range(3):
        book = FAMILIES[family](25, 9, seed)
        capacity = Capacity(book, 0)
        for i in range(len(book.jobs)):
            found = capacity.place(i)
            assert (None if found is None else found[1]) == cheapest_placement(book, i)


def test_a_memory_trap_goes_to_the_light_long_jobs() -> None:
    # "big" jobs are short and bid 40 per layer-token: by v/sqrt(W) (12,000 / 35 ≈ 346 against 30,000 / 173 ≈
    # 173) they come first and each one's three 1,000-byte shards fill a provider's memory. The light jobs add
    # more per byte and per slot: the optimum runs all four light ones and no big one.
    big = tuple(ShardDemand(f"big:{k}", 10, 1000) for k in range(3))
    light = tuple(ShardDemand(f"light:{k}", 10, 250) for k in range(3))
    jobs = [JobBid(f"b{n}", big, 10, 12_000) for n in range(2)] + [
        JobBid(f"l{n}", light, 100, 30_000) for n in range(4)
    ]
    providers = [ProviderOffer(f"p{j}", 4, 1000, 1, 1) for j in range(3)]
    book = Book(jobs, providers)
    greedy = solve(book, solver="greedy")
    assert set(greedy.winners) == {"l0", "l1", "l2", "l3"}
    assert greedy.welfare == exhaustive(book) == 4 * (30_000 - 3_000)


@pytest.mark.parametrize("solver", ["greedy", "cpsat"])
@pytest.mark.parametrize(("above", "wins"), [(1, True), (0, False), (-1, False)])
def test_a_value_one_unit_above_the_cheapest_placement_wins_and_none_at_or_below(
    solver: str, above: int, wins: bool
) -> None:
    # P is the cheapest provider of both shards but the only one of the small shard: a greedy that gives the
    # big shard the cheapest provider first strands the small one. The one placement is big on Q, small on P.
    big, small = ShardDemand("m:0", 1, 400), ShardDemand("m:1", 1, 100)
    providers = [ProviderOffer("P", 1, 1000, 1, 1), ProviderOffer("Q", 1, 1000, 3, 1, frozenset({"m:0"}))]
    cheapest = 10 * 3 + 10 * 1
    book = Book([JobBid("A", (big, small), 10, cheapest + above)], providers)
    allocation = solve(book, solver=solver, num_workers=1)  # type: ignore[arg-type]
    assert ("A" in allocation.winners) is wins
    assert allocation.welfare == (above if wins else 0)


@pytest.mark.parametrize("seed", [0, 2, 4])  # even seeds: a "random" base book, which CP-SAT proves quickly
def test_huge_money_that_is_a_multiple_is_solved_exactly(seed: int) -> None:
    # Every amount of a "huge" book is K times the base book's, K odd and near 2^60 / the largest value: CP-SAT
    # divides each money expression by its gcd, so it proves the optimum, K times the base book's, exactly.
    base, k = huge_base(24, 8, seed)
    huge = FAMILIES["huge"](24, 8, seed)
    assert max(j.max_price for j in huge.jobs) > 2**58
    exact_base = solve(base, solver="cpsat", num_workers=1, time_limit_s=10)
    exact = solve(huge, solver="cpsat", num_workers=1, time_limit_s=10)
    assert exact_base.status == exact.status == "optimal"
    assert exact.welfare == exact.best_bound == k * exact_base.welfare
    greedy = solve(huge, solver="greedy")
    assert_valid(huge, greedy)
    assert greedy.welfare >= 0.95 * exact.welfare


@st.composite
def huge_books(draw: st.DrawFn) -> Book:
    """Small books with amounts near 2^60 that share no common factor: CP-SAT must round."""
    book = draw(books(max_jobs=5, max_providers=4, max_shards=3))
    scale = draw(st.integers(2**40, 2**42))
    jobs = [
        JobBid(j.job_id, j.shards, j.tokens, j.max_price * scale + draw(st.integers(0, 2**30)), j.priority)
        for j in book.jobs
    ]
    providers = [
        ProviderOffer(p.provider_id, p.slots, p.memory_bytes, p.ask * scale + draw(st.integers(0, 999)), 1, p.shard_ids)
        for p in book.providers
    ]
    return Book(jobs, providers)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(book=huge_books())
def test_huge_money_stays_exact_valid_and_bounded(book: Book) -> None:
    optimum = exhaustive(book, PRIORITY_STEP_BPS)  # the objective: welfare and the priority bonuses
    greedy = solve(book, solver="greedy")
    exact = solve(book, solver="cpsat", num_workers=1)
    auto = solve(book, num_workers=1)
    for allocation in (greedy, exact, auto):
        assert_valid(book, allocation)  # welfare, prices and the budget in exact integers
        assert allocation.objective <= optimum
    assert exact.best_bound is not None and exact.best_bound >= optimum  # a proved bound even when rounded
    assert exact.objective >= 0.999 * optimum
    assert greedy.objective >= 0.8 * optimum


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(book=books(max_jobs=10, max_providers=5), moves=st.lists(st.integers(0, 9), min_size=1, max_size=30))
def test_undo_restores_the_capacity_exactly(book: Book, moves: list[int]) -> None:
    capacity = Capacity(book, 0)
    start = (list(capacity.slots), list(capacity.memory), {t: list(a) for t, a in capacity.alive.items()})
    trees = {t: list(tree.tree) for t, tree in capacity.trees.items()}
    mark = capacity.mark()
    for i in moves:
        i %= len(book.jobs)
        if i in capacity.won:
            capacity.remove(i)
        elif (found := capacity.place(i)) is not None:
            capacity.add(i, found[0])
    capacity.undo(mark)
    assert (capacity.slots, capacity.memory, capacity.alive) == start
    assert {t: tree.tree for t, tree in capacity.trees.items()} == trees
    assert capacity.won == {} and all(not hosted for hosted in capacity.hosted)
    # Placements that failed while capacity shrank are forgotten once it grows again (`Capacity.failed`).
    fresh = Capacity(book, 0)
    assert [capacity.place(i) for i in range(len(book.jobs))] == [fresh.place(i) for i in range(len(book.jobs))]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_placement_bound_bounds_the_optimum_and_is_tighter_than_the_compact_one(family: str) -> None:
    for seed in range(4):
        book = FAMILIES[family](6, 4, seed)
        for priority_bps in (0, PRIORITY_STEP_BPS):
            optimum = exhaustive(book, priority_bps)
            columns = Columns.of(book, priority_bps)
            assert columns is not None
            bound = columns.generate(30)
            assert columns.converged and bound >= optimum
            compact = lp_bound(book, priority_bps)
            assert compact is not None and bound <= compact + compact * 2 * MARGIN + 2  # both rounded up
            found = columns.assign(5, {}, 1)  # CP-SAT over the columns alone, with no hint to start from
            gains = [contribution(book, i, ps) + book.jobs[i].bonus(priority_bps) for i, ps in found.items()]
            assert sum(gains) <= optimum


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(book=huge_books())
def test_price_and_branch_keeps_huge_money_exact(book: Book) -> None:
    optimum = exhaustive(book, PRIORITY_STEP_BPS)
    columns = Columns.of(book, PRIORITY_STEP_BPS)
    assert columns is not None
    assert columns.generate(30) >= optimum
    found = columns.assign(5, {}, 1)
    allocation = _Round(book, 0, PRIORITY_STEP_BPS).allocation(found, "cpsat", "auto", "feasible", None, 0.0)
    assert_valid(book, allocation)
    assert allocation.objective <= optimum


def test_price_and_branch_finds_what_the_greedy_misses_on_speed_capped_books() -> None:
    # 150 jobs × 50 providers × 3 shards is 22,500 pairs: "auto" runs price and branch from the greedy's
    # allocation. On speed-capped books the greedy gives fast providers to jobs that could have done without.
    book = FAMILIES["speed"](150, 50, 0)
    assert AUTO_CPSAT_MAX_PAIRS < book.n_pairs <= COLUMNS_MAX_PAIRS
    greedy = solve(book, solver="greedy", priority_bps=0)
    auto = solve(book, priority_bps=0, time_limit_s=10)
    assert_valid(book, auto)
    assert auto.solver == "cpsat" and auto.objective > greedy.objective
    assert auto.best_bound is not None and auto.objective <= auto.best_bound
    compact = lp_bound(book, 0)
    assert compact is not None and auto.best_bound < compact
    assert auto.optimality_gap is not None and auto.optimality_gap < 0.02


def test_a_failed_placement_is_forgotten_when_capacity_grows() -> None:
    # P is cheap with one slot; Q is too dear for either job. Once A holds P, B's search fails and is remembered.
    shard = ShardDemand("m:0", 1, 100)
    jobs = [JobBid("A", (shard,), 10, 1_000), JobBid("B", (shard,), 10, 1_000)]
    book = Book(jobs, [ProviderOffer("P", 1, 100, 1, 1), ProviderOffer("Q", 1, 100, 500, 1)])
    capacity = Capacity(book, 0)
    assert capacity.place(0) == ((0,), 10)
    capacity.add(0, (0,))
    assert capacity.place(1) is None and capacity.failed
    capacity.remove(0)
    assert capacity.place(1) == ((0,), 10)
