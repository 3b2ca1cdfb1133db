"""Families of hard books, for the auction's tests and bench/auction.py: each is `family(n_jobs, n_providers, seed)`.

Every family keeps the book's rules (`book.py`): a job wins all its shards or none, each on a different
provider, and only when v ≥ Σ ask·work + 1. They differ in what makes the round hard:

- "random": the market as bench/auction.py has always modelled it (SmolLM2-135M in 3 shards, 40 % browser
  tabs, 60 % headless agents; bids 1-3× the median ask; a fifth of the jobs cap their speed).
- "memory": memory binds, not slots. Providers have many slots and a few GiB; a large model's short jobs bid
  high per layer-token (dense by v/√W) but take 5-20× the memory of a small model's long jobs.
- "holders": providers hold only some shards; the cheap ones are the few that hold the rare middle shard, and
  they also hold the big first shard, which a shard-by-shard greedy places first.
- "knife": a "random" or "memory" book whose values are one unit above or below the cheapest placement of the
  job alone (v = c + 1 wins only there; v = c or c − 1 never wins), and some at 5 % above it.
- "speed": every job caps its pipeline's ns per token at 1-4× the fastest pipeline; fast providers ask more.
- "symmetric": identical providers and two kinds of identical jobs (two memory sizes): a packing problem full
  of ties.
- "huge": a "random" or "memory" book with every amount multiplied by an odd K that brings the largest value
  near 2⁶⁰. Welfare scales by exactly K (the rule v ≥ c + 1 reads v > c either way), so the optimum is K
  times the base book's: `huge_base` returns that base book and K.
"""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import Callable
from functools import cache

from market.auction.book import Book, JobBid, ProviderOffer, ShardDemand
from market.auction.capacity import Capacity

MIB = 1 << 20
GIB = 1 << 30
BASE_ASK = 1_000_000  # base units per layer-token of a median agent
MEDIAN_NS = 700_000  # ns per layer-token of a headless agent on 2 cores
HUGE = 1 << 60

Family = Callable[[int, int, int], Book]


def model(name: str, memory_mib: tuple[int, ...], layers: int = 10) -> tuple[ShardDemand, ...]:
    """A model in len(memory_mib) shards of `layers` layers, the k-th taking memory_mib[k] MiB."""
    return tuple(
        ShardDemand(f"{name}:{k * layers}-{(k + 1) * layers}", layers, m * MIB) for k, m in enumerate(memory_mib)
    )


SMOLLM = model("smollm2-135m", (270, 160, 270))


def random_book(n_jobs: int, n_providers: int, seed: int) -> Book:
    rng = random.Random(seed)
    providers = []
    for j in range(n_providers):
        browser = rng.random() < 0.4
        ns = max(1, int(rng.lognormvariate(0, 0.5) * MEDIAN_NS * (3 if browser else 1)))
        ask = max(1, int(BASE_ASK * (MEDIAN_NS / ns) ** 0.5 * rng.uniform(0.9, 1.0) * rng.uniform(0.9, 1.1)))
        if browser:
            providers.append(ProviderOffer(f"p{j}", rng.randint(1, 2), rng.choice([512, 1024, 2048]) * MIB, ask, ns))
        else:
            providers.append(ProviderOffer(f"p{j}", rng.randint(2, 8), rng.choice([2, 4, 8, 16]) * GIB, ask, ns))
    median_ask = statistics.median(p.ask for p in providers)
    jobs = []
    for i in range(n_jobs):
        tokens = rng.randint(16, 512)
        bid = int(median_ask * rng.uniform(1.0, 3.0))
        cap = int(30 * MEDIAN_NS * rng.uniform(1.0, 3.0)) if rng.random() < 0.2 else None
        jobs.append(JobBid(f"j{i}", SMOLLM, tokens, bid * 30 * tokens, max_ns_per_token=cap))
    return Book(jobs, providers)


def memory_book(n_jobs: int, n_providers: int, seed: int) -> Book:
    rng = random.Random(seed)
    ratio = rng.uniform(3, 8)  # how much more memory the large model's shards take
    small = model("small", (200, 160, 200))
    large = model("large", tuple(int(m * ratio) for m in (200, 160, 200)))
    providers = [
        ProviderOffer(
            f"p{j}",
            rng.randint(8, 16),
            int(rng.uniform(2.0, 4.0) * 200 * ratio) * MIB,  # room for 2-4 large shards or many small ones
            max(1, int(BASE_ASK * rng.lognormvariate(0, 0.2))),
            int(MEDIAN_NS * rng.lognormvariate(0, 0.3)),
        )
        for j in range(n_providers)
    ]
    jobs = []
    for i in range(n_jobs):
        if rng.random() < 0.5:  # short, dense by v/√W, memory-hungry
            tokens, shards, bid = int(2 ** rng.uniform(2, 5)), large, rng.uniform(10.0, 40.0)
        else:  # long, light, more welfare per byte
            tokens, shards, bid = int(2 ** rng.uniform(8, 11)), small, rng.uniform(1.2, 2.5)
        jobs.append(JobBid(f"j{i}", shards, tokens, int(BASE_ASK * bid) * 30 * tokens))
    return Book(jobs, providers)


def holders_book(n_jobs: int, n_providers: int, seed: int) -> Book:
    rng = random.Random(seed)
    shards = model("held", (600, 150, 300))
    ids = [s.shard_id for s in shards]
    providers = []
    for j in range(n_providers):
        rare = rng.random() < 0.25  # holds the middle shard: few providers, the cheapest ones
        held = {ids[1]} if rare else set()
        held |= {ids[0]} if rare or rng.random() < 0.6 else set()
        held |= {ids[2]} if rng.random() < 0.6 else set()
        held = held or {ids[2]}
        ask = int(BASE_ASK * rng.uniform(0.5, 0.8) if rare else BASE_ASK * rng.uniform(0.8, 1.6))
        slots, memory = rng.randint(1, 4), rng.choice([1, 2, 4]) * GIB
        providers.append(ProviderOffer(f"p{j}", slots, memory, ask, MEDIAN_NS, frozenset(held)))
    plain = [JobBid(f"j{i}", shards, rng.randint(16, 512), 0) for i in range(n_jobs)]
    jobs = []
    for job, cost in zip(plain, cheapest_alone(tuple(providers), plain), strict=True):
        value = int(cost * rng.uniform(1.02, 1.6)) if cost is not None else BASE_ASK * 30 * job.tokens
        jobs.append(JobBid(job.job_id, shards, job.tokens, value))
    return Book(jobs, providers)


def knife_book(n_jobs: int, n_providers: int, seed: int) -> Book:
    rng = random.Random(seed)
    base = (random_book if seed % 2 == 0 else memory_book)(n_jobs, n_providers, seed)
    plain = [JobBid(j.job_id, j.shards, j.tokens, 0) for j in base.jobs]
    jobs = []
    for job, cost in zip(plain, cheapest_alone(base.providers, plain), strict=True):
        if cost is None:
            jobs.append(job)
            continue
        value = cost + cost // 20 if rng.random() < 0.3 else cost + rng.choice([-1, 0, 1, 1, 1, 2])
        jobs.append(JobBid(job.job_id, job.shards, job.tokens, max(0, value)))
    return Book(jobs, base.providers)


def speed_book(n_jobs: int, n_providers: int, seed: int) -> Book:
    rng = random.Random(seed)
    providers = []
    for j in range(n_providers):
        ns = max(1, int(MEDIAN_NS * rng.lognormvariate(0, 0.7)))
        ask = max(1, int(BASE_ASK * (MEDIAN_NS / ns) * rng.uniform(0.8, 1.2)))  # twice as fast: twice the ask
        providers.append(ProviderOffer(f"p{j}", rng.randint(1, 6), rng.choice([2, 4, 8]) * GIB, ask, ns))
    fastest = sorted(p.ns_per_layer_token for p in providers)[: len(SMOLLM)]
    plain = []
    for i in range(n_jobs):
        cap = int(sum(fastest) * 10 * 2 ** rng.uniform(0.0, 2.0))
        plain.append(JobBid(f"j{i}", SMOLLM, rng.randint(16, 512), 0, max_ns_per_token=cap))
    jobs = []
    for job, cost in zip(plain, cheapest_alone(tuple(providers), plain), strict=True):
        value = int(cost * rng.uniform(1.05, 2.0)) if cost is not None else BASE_ASK * 30 * job.tokens
        jobs.append(JobBid(job.job_id, SMOLLM, job.tokens, value, max_ns_per_token=job.max_ns_per_token))
    return Book(jobs, providers)


def symmetric_book(n_jobs: int, n_providers: int, seed: int) -> Book:
    rng = random.Random(seed)
    light, heavy = model("light", (300, 300, 300)), model("heavy", (1000, 1000, 1000))
    providers = [ProviderOffer(f"p{j}", 4, 2400 * MIB, BASE_ASK, MEDIAN_NS) for j in range(n_providers)]
    tokens = rng.choice([64, 128, 256])
    light_bid, heavy_bid = rng.uniform(1.2, 2.0), rng.uniform(2.0, 4.0)
    jobs = []
    for i in range(n_jobs):
        shards, bid = (heavy, heavy_bid) if i % 2 else (light, light_bid)
        jobs.append(JobBid(f"j{i}", shards, tokens, int(BASE_ASK * bid) * 30 * tokens))
    return Book(jobs, providers)


def huge_base(n_jobs: int, n_providers: int, seed: int) -> tuple[Book, int]:
    """The base book of "huge" and the odd factor K that its amounts are multiplied by."""
    base = (random_book if seed % 2 == 0 else memory_book)(n_jobs, n_providers, seed)
    largest = max([j.max_price for j in base.jobs] + [p.ask for p in base.providers] + [1])
    return base, (HUGE // largest) | 1


def huge_book(n_jobs: int, n_providers: int, seed: int) -> Book:
    base, k = huge_base(n_jobs, n_providers, seed)
    jobs = [JobBid(j.job_id, j.shards, j.tokens, j.max_price * k, j.priority, j.max_ns_per_token) for j in base.jobs]
    providers = [
        ProviderOffer(p.provider_id, p.slots, p.memory_bytes, p.ask * k, p.ns_per_layer_token, p.shard_ids)
        for p in base.providers
    ]
    return Book(jobs, providers)


FAMILIES: dict[str, Family] = {
    "random": random_book,
    "memory": memory_book,
    "holders": holders_book,
    "knife": knife_book,
    "speed": speed_book,
    "symmetric": symmetric_book,
    "huge": huge_book,
}


def cheapest_alone(providers: tuple[ProviderOffer, ...], jobs: list[JobBid]) -> list[int | None]:
    """Per job, Σ ask·work of its cheapest placement on the empty market (distinct providers, its speed cap).

    `Capacity.place` on an empty market, for copies of the jobs that could pay anything: exact on books of up
    to `MAX_OPTIONS` providers per shard, the cheapest it finds on larger ones.
    """
    rich = [JobBid(i, j.shards, j.tokens, 1 << 100, max_ns_per_token=j.max_ns_per_token) for i, j in enumerate(jobs)]
    capacity = Capacity(Book(rich, providers), 0, memory_aware=False)
    return [None if (found := capacity.place(i)) is None else found[1] for i in range(len(rich))]


def exhaustive(book: Book, priority_bps: int = 0) -> int:
    """The best objective (welfare + bonuses) over every assignment, each placement checked on the book itself.

    Independent of the solvers, for the tests' and bench/auction.py's small books: per job, every placement
    (a permutation of distinct providers); then every choice per job over the capacity left, memoised on it.
    Exponential: books of a few jobs and providers only.
    """
    providers = book.providers
    choices: list[list[tuple[int, tuple[tuple[int, int], ...]]]] = []
    for job in book.jobs:
        best: dict[tuple[tuple[int, int], ...], int] = {}  # per use of each provider's (slots, memory): best gain
        for perm in itertools.permutations(range(len(providers)), len(job.shards)):
            placed = list(zip(perm, job.shards, strict=True))
            if not all(providers[j].can_serve(s) for j, s in placed):
                continue
            cost = sum(providers[j].ask * job.work(s) for j, s in placed)
            ns = sum(providers[j].ns_per_layer_token * s.layers for j, s in placed)
            if job.max_price - cost < 1 or (job.max_ns_per_token is not None and ns > job.max_ns_per_token):
                continue
            use = [(0, 0)] * len(providers)
            for j, s in placed:
                use[j] = (1, s.memory_bytes)
            gain = job.max_price - cost + job.bonus(priority_bps)
            best[tuple(use)] = max(best.get(tuple(use), gain), gain)
        choices.append([(g, u) for u, g in best.items()])

    @cache
    def best_from(k: int, left: tuple[tuple[int, int], ...]) -> int:
        if k == len(choices):
            return 0
        result = best_from(k + 1, left)
        for gain, use in choices[k]:
            after = tuple((s - a, m - b) for (s, m), (a, b) in zip(left, use, strict=True))
            if all(s >= 0 and m >= 0 for s, m in after):
                result = max(result, gain + best_from(k + 1, after))
        return result

    return best_from(0, tuple((p.slots, p.memory_bytes) for p in providers))
