"""Greedy winner determination: jobs by profit per scarce resource, each placed exactly, then a local search.

Order. A job uses one slot and its shard's memory on each of its providers; its work only sets its cost. So jobs
go by density = (v + bonus − c) / size, where c is what its cheapest placement costs and size weighs its slots
and bytes by how scarce each resource is in the book (demand over supply, both summed over the book):

    size_i = ρ_slots · n_i / S + ρ_memory · M_i / M,    ρ = what all jobs ask of the resource / what is offered.

(The LOS order v / √W, Lehmann, O'Callaghan and Shoham 2002, treats work as the resource: short jobs that bid
high per layer-token then fill the memory that long, light jobs would have paid more for.)

Construction. Densities start from c on the empty market (an upper bound) and are re-evaluated lazily on the
capacity left: a job popped from the heap first gets a cheap bound (each shard on its cheapest live provider),
then its exact placement (`Capacity.place`: the best assignment of its few shards to distinct providers, within
its speed cap and v − 1), and is placed unless its density fell below `ACCEPT_WITHIN` of the next job's bound,
in which case it goes back into the heap. Capacity only shrinks meanwhile, so a job with no placement is done.

Pass 2. Construction places winners in density order, so a short job can take a cheap provider that a long one
needs more (ask × work, while both take a slot). The same winners are placed again on empty capacity, most
work first, then the losers by density; the better of the two is kept.

Two runs. One ranks providers by ask × work alone (ties: the provider the shard's memory presses least), one
charges memory-poor providers more (`Capacity.memory_aware`); the better is kept. Books over `BIG_PAIRS`
(job shard, provider) pairs get the first only, to stay fast.

Local search (books of up to `SEARCH_JOBS` jobs). Ruin and recreate: take every winner off a few providers —
the cheapest ones a loser would need, or a random few — put that loser in first (each of its few best
placements in turn: 1,200 / jobs of them, 4 to 24), refill by density from the evicted and the best losers,
and keep the best result only if the objective rose; otherwise undo. It stops after `SEARCH_MOVES` moves or
`PATIENCE` fruitless ones in a row. Unlike moving
shards only, this evicts winners, which is what memory-bound books need.

Nothing here compares floating point money: profits and acceptance use integers; densities and the selection
cost are floats that only order choices.
"""

from __future__ import annotations

import heapq
import itertools
import random

from market.auction.book import PRIORITY_STEP_BPS, Book
from market.auction.bundle import Option, branch_and_bound
from market.auction.capacity import Assignment, Capacity

__all__ = ["Assignment", "greedy_assign"]

ACCEPT_WITHIN = 0.75  # a re-evaluated job is placed if its density is at least this share of the next bound
BIG_PAIRS = 3_000_000  # above this many (job shard, provider) pairs, one run instead of two
SEARCH_JOBS = 2_000  # books of up to this many jobs get the local search
SEARCH_MOVES = 100  # ruin-and-recreate moves at most
PATIENCE = 30  # the search stops after this many moves in a row that did not raise the objective
NEAR_LOSERS = 30  # losers offered to each refill, best density first
ALTERNATIVES = (4, 24, 1_200)  # placements of the loser a targeted move tries: 1,200 / jobs, within [4, 24]


def greedy_assign(book: Book, *, priority_bps: int = PRIORITY_STEP_BPS) -> Assignment:
    """Winners of `book` and their providers; every job not in the result loses."""
    best: _Greedy | None = None
    for memory_aware in (False, True) if book.n_pairs <= BIG_PAIRS else (False,):
        run = _Greedy(book, priority_bps, memory_aware)
        run.fill(run.order)
        run.replace()
        if best is None or run.cap.objective() > best.cap.objective():
            best = run
    assert best is not None
    if len(book.jobs) <= SEARCH_JOBS:
        best.search(SEARCH_MOVES, seed=len(book.jobs))
    return dict(best.cap.won)


def sizes(book: Book) -> list[float]:
    """Each job's slots and memory, weighted by how scarce each resource is over the whole book."""
    slots = sum(p.slots for p in book.providers) or 1
    memory = sum(p.memory_bytes for p in book.providers) or 1
    rho_slots = sum(len(j.shards) for j in book.jobs) / slots
    rho_memory = sum(s.memory_bytes for j in book.jobs for s in j.shards) / memory
    result = []
    for job in book.jobs:
        weight = rho_slots * len(job.shards) / slots + rho_memory * sum(s.memory_bytes for s in job.shards) / memory
        result.append(weight or 1.0)
    return result


def least_costs(cap: Capacity) -> dict[tuple[str, ...], int]:
    """Per tuple of shard ids: the least Σ ask·layers of a placement on distinct providers of the empty market.

    The shards' layers are fixed and their work is layers × tokens, so the same assignment is cheapest for
    every job of that tuple: its cost is this × tokens.
    """
    result: dict[tuple[str, ...], int] = {}
    for job in cap.book.jobs:
        key = tuple(s.shard_id for s in job.shards)
        if key in result:
            continue
        options: list[list[Option]] = []
        for s in job.shards:
            cheapest = cap.lists[s.shard_id][: len(key)]
            options.append([(float(cap.asks[j] * s.layers), cap.asks[j] * s.layers, 0, j) for j in cheapest])
        found = branch_and_bound(options, 1 << 126, None) if all(options) else None
        result[key] = -1 if found is None else found[1]
    return result


class _Greedy:
    """One run: the capacity state, the jobs' densities on the empty market and their order."""

    def __init__(self, book: Book, priority_bps: int, memory_aware: bool) -> None:
        self.book = book
        self.cap = Capacity(book, priority_bps, memory_aware=memory_aware)
        self.size = sizes(book)
        costs = least_costs(self.cap)
        self.estimate: dict[int, float] = {}
        for i, job in enumerate(book.jobs):
            cost = costs[tuple(s.shard_id for s in job.shards)]
            profit = self.cap.values[i] - cost * job.tokens
            if cost >= 0 and profit > 0 and self.cap.plan(i) is not None:
                self.estimate[i] = profit / self.size[i]
        self.order = sorted(self.estimate, key=lambda i: (-self.estimate[i], i))

    def fill(self, candidates: list[int]) -> None:
        """Place the candidates by density, lazily re-evaluated on the capacity left (the module docstring)."""
        cap, size = self.cap, self.size
        heap = [(-self.estimate[i], i, False) for i in candidates if i not in cap.won]
        heapq.heapify(heap)
        while heap:
            _, i, bounded = heapq.heappop(heap)
            if not bounded:  # a cheap bound first: each shard on its cheapest live provider
                least = cap.least_now(i)
                if least is None:
                    continue
                density = (cap.values[i] - least) / size[i]
                if heap and density < -heap[0][0] * ACCEPT_WITHIN:
                    heapq.heappush(heap, (-density, i, True))
                    continue
            found = cap.place(i)
            if found is None:
                continue
            density = (cap.values[i] - found[1]) / size[i]
            if heap and density < -heap[0][0] * ACCEPT_WITHIN:
                heapq.heappush(heap, (-density, i, True))
                continue
            cap.add(i, found[0])

    def replace(self) -> None:
        """Pass 2: the same winners again on empty capacity, most work first, then the losers; kept if better."""
        cap = self.cap
        before, mark = cap.objective(), cap.mark()
        winners = sorted(cap.won, key=lambda i: (-self.book.jobs[i].total_work, i))
        for i in winners:
            cap.remove(i)
        for i in winners:
            found = cap.place(i)
            if found is not None:
                cap.add(i, found[0])
        self.fill(self.order)
        if cap.objective() <= before:
            cap.undo(mark)

    def search(self, moves: int, seed: int) -> None:
        """Ruin and recreate, alternately around the next loser and around a few random providers."""
        cap = self.cap
        rng = random.Random(seed)
        providers = range(len(self.book.providers))
        turn = failed = 0
        for move in range(moves):
            losers = [i for i in self.order if i not in cap.won]
            if not losers or not cap.won or failed >= PATIENCE:
                return
            if move % 2 == 0:
                target = losers[turn % len(losers)]
                turn += 1
                area = self.cheapest_fit(target)
                improved = self.ruin_and_recreate(area, target, losers[:NEAR_LOSERS])
            else:
                area = set(rng.sample(providers, min(3, len(providers))))
                improved = self.ruin_and_recreate(area, None, losers[:NEAR_LOSERS])
            failed = 0 if improved else failed + 1

    def cheapest_fit(self, i: int) -> set[int]:
        """The providers job i would like most on an empty market: per shard, its n + 1 cheapest that are fast
        enough for the job's speed cap if its other shards got the fastest (n: its shard count)."""
        cap, job = self.cap, self.book.jobs[i]
        n, plan = len(job.shards), cap.plan(i)
        spare = None if plan is None or plan.cap is None else plan.cap - sum(plan.quickest)
        area: set[int] = set()
        for k, shard in enumerate(job.shards):
            most = None if spare is None or plan is None else spare + plan.quickest[k]
            fit = (j for j in cap.lists[shard.shard_id] if most is None or cap.speeds[j] * shard.layers <= most)
            area.update(itertools.islice(fit, n + 1))
        return area

    def ruin_and_recreate(self, area: set[int], first: int | None, losers: list[int]) -> bool:
        """Evict every winner on `area`, place `first` (each of its few best placements in turn), refill by
        density, and keep the best outcome only if the objective rose."""
        cap = self.cap
        before, mark = cap.objective(), cap.mark()
        best, best_first = before, None
        tries: list[tuple[int, ...] | None] = [None]
        low, high, total = ALTERNATIVES
        count = max(low, min(high, total // len(self.book.jobs)))
        for attempt in range(count if first is not None else 1):
            evicted = sorted({i for j in area for i in cap.hosted[j]})
            for i in evicted:
                cap.remove(i)
            if first is not None:
                if attempt == 0:
                    tries = list(cap.alternatives(first, count))
                if attempt >= len(tries):
                    cap.undo(mark)
                    break
                cap.add(first, tries[attempt])  # type: ignore[arg-type]
            self.fill(sorted(set(evicted) | set(losers)))
            if cap.objective() > best:
                best, best_first = cap.objective(), attempt
            cap.undo(mark)
        if best_first is None:
            return False
        evicted = sorted({i for j in area for i in cap.hosted[j]})
        for i in evicted:
            cap.remove(i)
        if first is not None:
            cap.add(first, tries[best_first])  # type: ignore[arg-type]
        self.fill(sorted(set(evicted) | set(losers)))
        return True
