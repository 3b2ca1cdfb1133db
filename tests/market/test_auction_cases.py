"""Hand-built auction books with known answers: the solvers, priority, edge cases, pricing and validation."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.auction import (
    AUTO_CPSAT_MAX_PAIRS,
    COLUMNS_MAX_PAIRS,
    PRIORITY_MAX_LEVEL,
    Allocation,
    Book,
    JobBid,
    ProviderOffer,
    ShardDemand,
    platform_fee,
    solve,
    unit_prices,
)

S1 = ShardDemand("m:0-10", layers=1, memory_bytes=100)
S2 = ShardDemand("m:10-20", layers=1, memory_bytes=100)
S3 = ShardDemand("m:20-30", layers=1, memory_bytes=400)
SOLVERS = ["greedy", "cpsat"]


def provider(
    name: str, *, slots: int = 1, memory: int = 1000, ask: int = 1, speed: int = 1, serves: set[str] | None = None
) -> ProviderOffer:
    held = None if serves is None else frozenset(serves)
    return ProviderOffer(name, slots=slots, memory_bytes=memory, ask=ask, ns_per_layer_token=speed, shard_ids=held)


def job(
    name: str,
    shards: tuple[ShardDemand, ...],
    value: int,
    *,
    tokens: int = 10,
    priority: int = 0,
    cap: int | None = None,
) -> JobBid:
    return JobBid(name, shards, tokens, value, priority=priority, max_ns_per_token=cap)


def clear(book: Book, solver: str, **kw: int) -> Allocation:
    return solve(book, solver=solver, num_workers=1, **kw)  # type: ignore[arg-type]


def placement(allocation: Allocation) -> dict[object, list[object]]:
    return {j: [t.provider_id for t in ts] for j, ts in allocation.winners.items()}


def test_greedy_orders_jobs_by_profit_per_slot_not_by_value_over_root_work() -> None:
    # By v/sqrt(W) A (100/sqrt(20) ≈ 22.4) would come before B and C (60/sqrt(10) ≈ 19.0) and take both
    # providers; per slot, B and C (50 each) beat A (80 for two), and together they add more welfare.
    book = Book([job("A", (S1, S2), 100), job("B", (S1,), 60), job("C", (S2,), 60)], [provider("P"), provider("Q")])
    greedy = clear(book, "greedy")
    assert set(greedy.winners) == {"B", "C"} and greedy.losers == ("A",)
    exact = clear(book, "cpsat")
    assert set(exact.winners) == {"B", "C"} and greedy.welfare == exact.welfare == 100
    assert exact.status == "optimal" and exact.best_bound == 100


def test_greedy_gives_each_shard_the_cheapest_feasible_provider() -> None:
    # S3 (the biggest) is placed first: "cheap" lacks memory for it, so it goes to "mid"; then S1 to "cheap",
    # and S2 to "dear", the cheapest provider not already serving this job.
    book = Book(
        [job("A", (S1, S2, S3), 1000)],
        [provider("dear", ask=5, slots=3), provider("cheap", ask=1, slots=3, memory=300), provider("mid", ask=3)],
    )
    allocation = clear(book, "greedy")
    assert placement(allocation) == {"A": ["cheap", "dear", "mid"]}
    assert allocation.welfare == 1000 - 10 * (1 + 5 + 3)


def test_greedy_keeps_big_shards_off_memory_poor_providers() -> None:
    # "poor" is cheapest but holds one S3 (400 of 500 bytes) or four small shards; "rich" has one slot. The
    # plain cheapest ask would put S3 on "poor" and strand three of its slots: two jobs would lose.
    big = ShardDemand("big", layers=1, memory_bytes=400)
    small = ShardDemand("small", layers=1, memory_bytes=100)
    jobs = [job("B", (big,), 200), *(job(f"s{n}", (small,), 100) for n in range(4))]
    book = Book(jobs, [provider("poor", slots=4, memory=500, ask=1), provider("rich", ask=2, memory=10**9)])
    greedy = clear(book, "greedy")
    assert placement(greedy)["B"] == ["rich"]
    assert len(greedy.winners) == 5
    assert greedy.welfare == clear(book, "cpsat").welfare == 200 - 20 + 4 * (100 - 10)


def test_greedy_gives_the_cheapest_provider_to_the_longest_winner() -> None:
    # A (1000 / sqrt(10) ≈ 316) comes before B (3000 / sqrt(100) = 300) and would take the cheap provider;
    # B's 100 layer-tokens save more there (4 × 100 against 4 × 10), so pass 2 places B first.
    book = Book(
        [job("A", (S1,), 1000, tokens=10), job("B", (S1,), 3000, tokens=100)], [provider("P"), provider("Q", ask=5)]
    )
    greedy = clear(book, "greedy")
    assert placement(greedy) == {"A": ["Q"], "B": ["P"]}
    assert greedy.welfare == clear(book, "cpsat").welfare == (1000 - 5 * 10) + (3000 - 1 * 100)


def test_greedy_repair_moves_a_winner_to_let_a_speed_capped_job_in() -> None:
    # A (no cap) first takes P and Q; B needs two fast providers, but only P is free and R is too slow for it.
    # The repair moves A's second shard from Q to R (10 more base units) so that B gets P and Q.
    book = Book(
        [job("A", (S1, S2), 1000), job("B", (S1, S2), 900, cap=5)],
        [provider("P", slots=2, ask=1), provider("Q", ask=2), provider("R", ask=3, speed=50)],
    )
    greedy = clear(book, "greedy")
    assert placement(greedy) == {"A": ["P", "R"], "B": ["P", "Q"]}
    assert greedy.welfare == clear(book, "cpsat").welfare == 1000 - 10 * (1 + 3) + 900 - 10 * (1 + 2)


def test_greedy_repair_rejects_a_move_that_costs_more_than_the_newcomer_adds() -> None:
    # Same shape, but R asks 50: moving A's shard there costs 480 more, and B only adds 300 - 30 = 270.
    book = Book(
        [job("A", (S1, S2), 1000), job("B", (S1, S2), 300, cap=5)],
        [provider("P", slots=2, ask=1), provider("Q", ask=2), provider("R", ask=50, speed=50)],
    )
    greedy = clear(book, "greedy")
    assert placement(greedy) == {"A": ["P", "Q"]}
    assert greedy.welfare == clear(book, "cpsat").welfare == 1000 - 10 * (1 + 2)


def test_greedy_repair_never_moves_a_winner_into_a_loss() -> None:
    # A wins first on priority (its bonus, 20 % of 1000, beats B's extra 100). Letting B in would move A's
    # shard to R at ask 99: A would pay 10 + 990 = its whole value, a contribution of 0, so A stays put.
    book = Book(
        [job("A", (S1, S2), 1000, priority=PRIORITY_MAX_LEVEL), job("B", (S1, S2), 1100, cap=5)],
        [provider("P", slots=2, ask=1), provider("Q", ask=2), provider("R", ask=99, speed=50)],
    )
    greedy = clear(book, "greedy")
    assert placement(greedy) == {"A": ["P", "Q"]}
    assert greedy.objective == clear(book, "cpsat").objective == 1000 - 30 + 200


def test_greedy_places_the_most_constrained_shard_first() -> None:
    # S2 can only run on P and S1 on P or R: placing S1 first would take P from S2 and lose the job.
    book = Book([job("B", (S1, S2), 900)], [provider("P", ask=1), provider("R", ask=3, serves={"m:0-10"})])
    assert placement(clear(book, "greedy")) == {"B": ["R", "P"]}


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_job_that_cannot_place_every_shard_loses_entirely(solver: str) -> None:
    # Only one provider, "tiny", and it has memory for S1 but not for S3: the big job loses as a whole.
    book = Book([job("big", (S1, S3), 10_000), job("small", (S1,), 50)], [provider("tiny", memory=100)])
    allocation = clear(book, solver)
    assert "big" in allocation.losers
    assert placement(allocation) == {"small": ["tiny"]}


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_job_that_needs_two_shards_on_one_provider_loses(solver: str) -> None:
    allocation = clear(Book([job("A", (S1, S2), 10_000)], [provider("only", slots=4)]), solver)
    assert allocation.winners == {} and allocation.losers == ("A",) and allocation.welfare == 0


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_shard_bigger_than_every_memory_budget_loses(solver: str) -> None:
    book = Book([job("A", (S3,), 10_000), job("B", (S1,), 100)], [provider("P", slots=2, memory=399)])
    allocation = clear(book, solver)
    assert allocation.losers == ("A",) and list(allocation.winners) == ["B"]


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_bid_below_every_ask_loses_and_leaves_the_capacity_to_others(solver: str) -> None:
    # A bids 4 per layer-token, below both asks (5 and 6); B pays for the cheaper provider.
    book = Book([job("A", (S1,), 40), job("B", (S1,), 100)], [provider("P", ask=5), provider("Q", ask=6)])
    allocation = clear(book, solver)
    assert allocation.losers == ("A",) and placement(allocation) == {"B": ["P"]}


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_job_whose_value_only_covers_the_asks_does_not_win(solver: str) -> None:
    allocation = clear(Book([job("A", (S1,), 10, priority=9)], [provider("P", ask=1)]), solver)
    assert allocation.losers == ("A",)


@pytest.mark.parametrize("solver", [*SOLVERS, "auto"])
def test_empty_books_clear_to_nothing(solver: str) -> None:
    for book in (Book([], []), Book([], [provider("P")]), Book([job("A", (S1,), 100)], [])):
        allocation = clear(book, solver)
        assert allocation.winners == {} and allocation.welfare == allocation.objective == 0
        assert allocation.losers == tuple(j.job_id for j in book.jobs)


@pytest.mark.parametrize("solver", SOLVERS)
def test_priority_wins_between_equal_bids(solver: str) -> None:
    jobs = [job("first", (S1,), 100), job("again", (S1,), 100, priority=1), job("late", (S1,), 100)]
    allocation = clear(Book(jobs, [provider("P")]), solver)
    assert list(allocation.winners) == ["again"] and allocation.losers == ("first", "late")
    assert allocation.objective == allocation.welfare + 100 * 500 // 10_000


@pytest.mark.parametrize("solver", SOLVERS)
def test_priority_beats_a_slightly_better_bid_but_not_a_much_better_one(solver: str) -> None:
    # Priority 2 adds 10 % of 100 = 10 to "back"'s contribution 90 (ask 1 × 10): 100 beats 95, not 105.
    for rival, winner in ((105, "back"), (115, "rival")):
        book = Book([job("rival", (S1,), rival), job("back", (S1,), 100, priority=2)], [provider("P")])
        assert list(clear(book, solver).winners) == [winner]


@pytest.mark.parametrize("solver", SOLVERS)
def test_priority_changes_who_wins_never_what_they_pay(solver: str) -> None:
    book = Book([job("A", (S1, S2), 1000, priority=3)], [provider("P", ask=2), provider("Q", ask=7)])
    plain = Book([job("A", (S1, S2), 1000)], book.providers)
    expected = [(2 * 20 + 1000) // 40, (7 * 20 + 1000) // 40]  # floor((ask + b) / 2), b = 1000 / 20
    for priced in (clear(book, solver), clear(plain, solver)):
        assert sorted(t.unit_price for t in priced.trades) == expected


def test_priority_levels_above_the_cap_add_nothing_and_zero_bps_ignores_them() -> None:
    capped, higher = job("A", (S1,), 1000, priority=PRIORITY_MAX_LEVEL), job("B", (S1,), 1000, priority=99)
    assert capped.bonus(500) == higher.bonus(500) == 1000 * PRIORITY_MAX_LEVEL * 500 // 10_000
    assert job("C", (S1,), 1000, priority=-3).bonus(500) == 0 and higher.bonus(0) == 0


@pytest.mark.parametrize("solver", SOLVERS)
def test_speed_cap_moves_a_shard_to_the_faster_dearer_provider(solver: str) -> None:
    # 2 shards of 1 layer: slow+slow = 20 ns/token > 15; fast+slow = 11 fits.
    book = Book(
        [job("A", (S1, S2), 1000, cap=15)],
        [provider("slow1", speed=10), provider("slow2", speed=10), provider("fast", ask=4, speed=1)],
    )
    allocation = clear(book, solver)
    assert "fast" in placement(allocation)["A"]
    assert allocation.welfare == 1000 - 10 * (1 + 4)


@pytest.mark.parametrize("solver", SOLVERS)
def test_slots_and_memory_both_bind(solver: str) -> None:
    # P has two slots but memory for one S3 only (400 of 500), so the two S3 jobs need P and Q.
    book = Book(
        [job("A", (S3,), 100), job("B", (S3,), 100), job("C", (S3,), 100)],
        [provider("P", slots=2, memory=500), provider("Q", ask=2, memory=400)],
    )
    allocation = clear(book, solver)
    assert sorted(t.provider_id for t in allocation.trades) == ["P", "Q"]
    assert allocation.welfare == 2 * 100 - 10 * (1 + 2)


def test_auto_uses_cpsat_up_to_the_size_limit_then_columns_then_the_greedy_alone() -> None:
    # One good job among hopeless ones: CP-SAT prunes the rest, so the model stays tiny either way.
    def book(n_jobs: int, n_providers: int) -> Book:
        jobs = [job("good", (S1,), 100), *(job(f"j{i}", (S1,), 0) for i in range(n_jobs - 1))]
        return Book(jobs, [provider(f"p{j}") for j in range(n_providers)])

    at_limit, over = book(AUTO_CPSAT_MAX_PAIRS // 100, 100), book(AUTO_CPSAT_MAX_PAIRS // 100 + 1, 100)
    assert at_limit.n_pairs == AUTO_CPSAT_MAX_PAIRS
    assert (clear(at_limit, "auto").solver, clear(at_limit, "auto").status) == ("cpsat", "optimal")
    middle = clear(over, "auto")  # price and branch: nothing to add to the greedy's, but a bound
    assert (middle.solver, middle.requested, middle.status) == ("greedy", "auto", "feasible")
    assert middle.best_bound is not None and middle.welfare <= middle.best_bound <= middle.welfare + 2
    beyond = book(COLUMNS_MAX_PAIRS // 100 + 1, 100)
    assert beyond.n_pairs > COLUMNS_MAX_PAIRS
    allocation = clear(beyond, "auto")
    assert (allocation.solver, allocation.requested, allocation.status) == ("greedy", "auto", "heuristic")
    assert list(allocation.winners) == list(middle.winners) == ["good"]


def test_cpsat_scales_amounts_beyond_int64_and_says_the_answer_is_not_proved() -> None:
    # Values near 10^19 base units overflow CP-SAT's int64 sums: it solves a rounded model, and the round
    # reports "feasible" with a bound widened for the rounding, while welfare and prices stay exact.
    e = 10**18
    book = Book(
        [job("A", (S1, S2), 9 * e), job("B", (S1,), 3 * e), job("C", (S2,), 3 * e + 7)],
        [provider("P", ask=e // 100), provider("Q", ask=e // 50)],
    )
    allocation = clear(book, "cpsat")
    assert (allocation.solver, allocation.status) == ("cpsat", "feasible")
    assert placement(allocation) == {"A": ["P", "Q"]} and allocation.welfare == 9 * e - 10 * (e // 100 + e // 50)
    assert allocation.best_bound is not None and allocation.best_bound >= allocation.objective
    assert allocation.buyer_payments <= 9 * e


def test_the_round_record_is_json_and_adds_up() -> None:
    book = Book([job("A", (S1, S2), 1000), job("B", (S1,), 5)], [provider("P", ask=10), provider("Q", ask=20)])
    record = json.loads(json.dumps(clear(book, "cpsat", fee_bps=100).record()))
    assert (record["solver"], record["status"], record["optimality_gap"]) == ("cpsat", "optimal", 0.0)
    assert record["welfare"] == record["best_bound"] == 1000 - 10 * (10 + 20)
    assert record["counts"] == {"jobs": 2, "providers": 2, "winners": 1, "losers": 1, "trades": 2}
    assert sorted(t["unit_price"] for t in record["trades"]) == [30, 35]
    assert record["buyer_payments"] == 650 == record["provider_receipts"] + record["fees"]


def test_unit_price_is_the_floored_midpoint_of_ask_and_bid() -> None:
    # b = 100 / 20 = 5 per layer-token: asks 2 and 3 trade at floor(3.5) = 3 and floor(4) = 4.
    assert unit_prices(100, [10, 10], [2, 3]) == [3, 4]


def test_a_shard_asked_above_the_bid_trades_at_its_ask_paid_by_the_other_shards() -> None:
    # b = 5; ask 7 > b trades at 7; surplus 20 leaves room for the plain midpoint on the other shard.
    assert unit_prices(100, [10, 10], [1, 7]) == [3, 7]
    # Ask 8: surplus 10 < half the gap on shard 1 (20), so λ shrinks and the job pays exactly its value.
    assert unit_prices(100, [10, 10], [1, 8]) == [2, 8]


@settings(max_examples=300, deadline=None)
@given(
    works=st.lists(st.integers(1, 10**4), min_size=1, max_size=4),
    asks=st.lists(st.integers(0, 10**6), min_size=4, max_size=4),
    extra=st.integers(0, 10**10),
)
def test_unit_prices_keep_both_individual_rationalities(works: list[int], asks: list[int], extra: int) -> None:
    asks = asks[: len(works)]
    value = sum(a * w for a, w in zip(asks, works, strict=True)) + extra
    prices = unit_prices(value, works, asks)
    assert all(p >= a for p, a in zip(prices, asks, strict=True))
    assert sum(p * w for p, w in zip(prices, works, strict=True)) <= value
    # Where the ask is at most the bid b = value / W, the price is within [ask, b] (exact: price × W <= value).
    assert all(p * sum(works) <= value for p, a in zip(prices, asks, strict=True) if a * sum(works) <= value)


def test_fee_is_a_cut_of_the_payment_capped_at_the_providers_markup() -> None:
    assert platform_fee(10_000, 5_000, 250) == 250
    assert platform_fee(10_000, 9_900, 250) == 100  # the provider still nets its ask
    assert platform_fee(10_000, 10_000, 10_000) == 0


def test_fee_is_reported_per_trade() -> None:
    allocation = clear(Book([job("A", (S1,), 1000)], [provider("P", ask=10)]), "greedy", fee_bps=100)
    (trade,) = allocation.trades
    assert (trade.unit_price, trade.payment, trade.fee, trade.provider_receipt) == (55, 550, 5, 545)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: JobBid("A", (), 10, 100), "at least one shard"),
        (lambda: JobBid("A", (S1,), 10, -1), "max_price"),
        (lambda: JobBid("A", (S1,), 0, 100), "tokens"),
        (lambda: JobBid("A", (S1, S1), 10, 100), "twice"),
        (lambda: JobBid("A", (S1,), 10, 100, max_ns_per_token=-5), "max_ns_per_token"),
        (lambda: JobBid("A", (S1,), 10, 100.0), "max_price"),  # type: ignore[arg-type]
        (lambda: ShardDemand("x", 0, 10), "layers"),
        (lambda: ShardDemand("x", 1, -10), "memory_bytes"),
        (lambda: ProviderOffer("P", -1, 10, 1, 1), "slots"),
        (lambda: ProviderOffer("P", 1, 10, -1, 1), "ask"),
        (lambda: ProviderOffer("P", True, 10, 1, 1), "slots"),
        (lambda: Book([JobBid("A", (S1,), 1, 1), JobBid("A", (S2,), 1, 1)], []), "duplicate job_id"),
        (lambda: Book([], [provider("P"), provider("P")]), "duplicate provider_id"),
        (
            lambda: Book([JobBid("A", (S1,), 1, 1), JobBid("B", (ShardDemand(S1.shard_id, 2, 100),), 1, 1)], []),
            "differ",
        ),
        (lambda: solve(Book([], []), fee_bps=10_001), "fee_bps"),
        (lambda: solve(Book([], []), priority_bps=-1), "priority_bps"),
        (lambda: solve(Book([], []), solver="simplex"), "unknown solver"),  # type: ignore[arg-type]
        (lambda: solve(Book([], []), time_limit_s=0), "time_limit_s"),
        (lambda: unit_prices(10, [10], [2]), "cost more"),
    ],
)
def test_bad_input_raises_a_clear_value_error(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()
