"""Greedy winner determination by bid density (Lehmann, O'Callaghan and Shoham, 2002), then two repairs.

Pass 1, the LOS greedy. Jobs are taken in order of weight / sqrt(total work), weight = v + priority bonus
(`JobBid.bonus`), then higher priority, then input order. The shards of a job, largest memory first (then
the one with the fewest candidate providers), go one by one to the provider that can still take them at
the least effective cost: a free slot and enough memory, not already serving another shard of the same
job, and fast enough that the job's speed cap can still be met if the shards left go to the fastest
providers that could serve them. The job is kept only if every shard is placed and v − Σ ask·work ≥ 1;
otherwise its tentative placements are rolled back.

The effective cost is ask × work, scaled up when the shard would take more than its share of what the
provider has left: × max(1, shard memory / (free memory / free slots)). The plain cheapest ask puts big
shards on memory-poor providers and strands their other slots. Measured against proved optima (100-200
jobs): where memory binds (0.25-1 GiB browser tabs, shards of 150-260 MiB) the scaling lifts the greedy
from 0.968 to 0.986 of the optimum on average; on bench/auction.py's roomier books it costs 0.2 %. It only
chooses between providers: acceptance and welfare always use the true asks.

Pass 2, re-placement. The LOS order picks the winners well but places them in that order, so a short job
that comes early takes a cheap provider that a long one needs more: a shard costs ask × work, while it
takes one slot whatever its work. Pass 2 places the same winners again on empty capacity, largest total
work first (so the largest works meet the lowest asks), and keeps whichever of the two placements scores
higher. On bench/auction.py's books (100-200 jobs, proved optima) this lifts the greedy from 0.972 to 0.989
of the optimum on average, and its worst case from 0.954 to 0.972.

Pass 3, repair. What capacity is left is scattered: free slots on a provider the job already uses, or
slots without memory for a big shard. For the losers, in LOS order, each shard that finds no provider may
take one relocation: a shard of a winner moves from provider X to a provider Y with room (that winner
keeps distinct providers, its speed cap and a positive contribution) and the loser's shard takes its place
on X. The loser is kept if its contribution plus bonus exceeds what the moves add to the winners' costs.
Pass 2 uses the same relocations for a winner that no longer fits. The repair stops after
`REPAIR_PATIENCE` losers in a row fail: on bench/auction.py's books every insertion came among the first
few losers tried, and the bound keeps the pass cheap on big books.

Speed: each shard id keeps its candidate providers sorted by ask in a singly linked list. A provider that
cannot take a shard now is unlinked the first time a scan meets it: capacity mostly only shrinks, and
where the repair gives some back, unlinking only hides an option, it never admits an infeasible one. Scans
also stop once the ask alone costs more than the best option found or than the job can pay, so a scan
touches a few providers and 10,000 jobs × 1,000 providers × 3 shards clear in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

from market.auction.book import PRIORITY_STEP_BPS, Book, JobBid, ShardDemand, candidates_by_shard, contribution

# Job index -> provider index for each of its shards, in the job's shard order.
Assignment = dict[int, tuple[int, ...]]
REPAIR_PATIENCE = 32  # consecutive failed insertions after which the repair stops


def job_order(book: Book, priority_bps: int = PRIORITY_STEP_BPS) -> list[int]:
    """Job indexes by (v + bonus) / sqrt(W), compared as (v + bonus)² / W, then priority, then input order."""
    jobs = book.jobs

    def key(i: int) -> tuple[float, int, int]:
        weight = jobs[i].max_price + jobs[i].bonus(priority_bps)
        return -(weight * weight / jobs[i].total_work), -jobs[i].priority, i

    return sorted(range(len(jobs)), key=key)


def greedy_assign(book: Book, *, priority_bps: int = PRIORITY_STEP_BPS) -> Assignment:
    """Winners of `book` by the bid-density greedy and its repairs; every job not in the result loses."""
    order = job_order(book, priority_bps)
    first = _Greedy(book, priority_bps)
    for i in order:
        first.try_job(i, relocate=False)
    second = _Greedy(book, priority_bps)
    for i in sorted(first.won, key=lambda i: (-book.jobs[i].total_work, i)):
        second.try_job(i, relocate=True)
    best = second if second.objective() > first.objective() else first
    best.repair(order)
    return best.won


@dataclass(frozen=True, slots=True)
class _Move:
    """Shard `shard` of winner `job` moves from provider `source` to `target`, costing `delta` more."""

    job: int
    shard: int
    source: int
    target: int
    delta: int


class _Greedy:
    """Mutable state of one greedy run: capacity left per provider, candidate lists per shard id, winners."""

    def __init__(self, book: Book, priority_bps: int) -> None:
        self.book = book
        self.priority_bps = priority_bps
        providers = book.providers
        self.asks = [p.ask for p in providers]
        self.speeds = [p.ns_per_layer_token for p in providers]
        self.slots = [p.slots for p in providers]
        self.memory = [p.memory_bytes for p in providers]
        self.lists = candidates_by_shard(book)
        self.nexts = {t: [*range(1, len(c)), -1] for t, c in self.lists.items()}
        self.heads = {t: (0 if c else -1) for t, c in self.lists.items()}
        # Static lower bounds for the look-ahead: the cheapest ask and the fastest speed for each shard id.
        self.cheapest = {t: self.asks[c[0]] for t, c in self.lists.items() if c}
        self.fastest = {t: min(self.speeds[j] for j in c) for t, c in self.lists.items() if c}
        self.won: Assignment = {}
        self.hosted: list[list[tuple[int, int]]] = [[] for _ in providers]  # (job, shard index) per provider

    def objective(self) -> int:
        return sum(
            contribution(self.book, i, ps) + self.book.jobs[i].bonus(self.priority_bps) for i, ps in self.won.items()
        )

    def repair(self, order: list[int]) -> None:
        """Pass 3: retry the losers in `order`, with relocations, until `REPAIR_PATIENCE` fail in a row."""
        failures = 0
        for i in order:
            if failures >= REPAIR_PATIENCE:
                break
            if i not in self.won and not self.hopeless(self.book.jobs[i]):
                failures = 0 if self.try_job(i, relocate=True) else failures + 1

    def hopeless(self, job: JobBid) -> bool:
        """Whether no capacity at all could make the job win: a shard nobody serves, asks or speed out of reach."""
        if any(s.shard_id not in self.cheapest for s in job.shards):
            return True
        least = sum(self.cheapest[s.shard_id] * s.layers * job.tokens for s in job.shards)
        quickest = sum(self.fastest[s.shard_id] * s.layers for s in job.shards)
        return least >= job.max_price or (job.max_ns_per_token is not None and quickest > job.max_ns_per_token)

    def try_job(self, i: int, *, relocate: bool) -> bool:
        """Place every shard of job `i` (moving winners' shards if `relocate`) and keep it, or change nothing."""
        job = self.book.jobs[i]
        if self.hopeless(job):
            return False
        shards = job.shards
        order = sorted(range(len(shards)), key=lambda k: (-shards[k].memory_bytes, len(self.lists[shards[k].shard_id])))
        works = [s.layers * job.tokens for s in shards]
        rest_cost, rest_time = self.lookahead(job, order, works)
        chosen = [-1] * len(shards)
        moves: list[_Move] = []
        cost = elapsed = 0
        for pos, k in enumerate(order):
            budget = job.max_price - 1 - cost - rest_cost[pos]
            limit = None if job.max_ns_per_token is None else job.max_ns_per_token - elapsed - rest_time[pos]
            j = -1
            if budget >= 0 and (limit is None or limit >= 0):
                j = self.provider_for(shards[k], works[k], budget, limit, chosen, moves if relocate else None)
            if j < 0:
                self.roll_back(job, chosen, moves)
                return False
            chosen[k] = j
            self.take(j, shards[k])
            cost += self.asks[j] * works[k]
            elapsed += self.speeds[j] * shards[k].layers
        if job.max_price - cost + job.bonus(self.priority_bps) <= sum(m.delta for m in moves):
            self.roll_back(job, chosen, moves)
            return False
        self.won[i] = tuple(chosen)
        for k, j in enumerate(chosen):
            self.hosted[j].append((i, k))
        return True

    def provider_for(
        self, shard: ShardDemand, work: int, budget: int, limit: int | None, taken: list[int], moves: list[_Move] | None
    ) -> int:
        """A provider for `shard` with room now, else (when `moves` is a list) one freed by a relocation, or -1."""
        j = self.cheapest_for(shard, work, budget, limit, taken)
        if j < 0 and moves is not None and (move := self.relocation(shard, work, budget, limit, taken)):
            self.apply(move)
            moves.append(move)
            j = move.source
        return j

    def lookahead(self, job: JobBid, order: list[int], works: list[int]) -> tuple[list[int], list[int]]:
        """Least cost and least time the shards after each position of `order` can still add."""
        rest_cost = [0] * len(order)
        rest_time = [0] * len(order)
        for pos in range(len(order) - 1, 0, -1):
            shard = job.shards[order[pos]]
            rest_cost[pos - 1] = rest_cost[pos] + self.cheapest[shard.shard_id] * works[order[pos]]
            rest_time[pos - 1] = rest_time[pos] + self.fastest[shard.shard_id] * shard.layers
        return rest_cost, rest_time

    def cheapest_for(self, shard: ShardDemand, work: int, budget: int, limit: int | None, taken: list[int]) -> int:
        """The provider that can take `shard` now at the least effective cost, or -1 (see the module docstring)."""
        candidates = self.lists[shard.shard_id]
        nxt = self.nexts[shard.shard_id]
        asks, speeds, slots, memory = self.asks, self.speeds, self.slots, self.memory
        need = shard.memory_bytes
        best, best_cost = -1, 0.0
        prev, pos = -1, self.heads[shard.shard_id]
        while pos >= 0:
            j = candidates[pos]
            cost = asks[j] * work
            if cost > budget or (best >= 0 and cost >= best_cost):
                break  # sorted by ask: every later provider costs at least as much
            if slots[j] == 0 or memory[j] < need:
                if j not in taken:  # a job's own tentative use is given back if it fails: keep it linked
                    pos = nxt[pos]
                    if prev < 0:
                        self.heads[shard.shard_id] = pos
                    else:
                        nxt[prev] = pos
                    continue
            elif j not in taken and (limit is None or speeds[j] * shard.layers <= limit):
                effective = cost * max(1.0, need * slots[j] / memory[j]) if need else float(cost)
                if best < 0 or effective < best_cost:
                    best, best_cost = j, effective
            prev, pos = pos, nxt[pos]
        return best

    def relocation(
        self, shard: ShardDemand, work: int, budget: int, limit: int | None, taken: list[int]
    ) -> _Move | None:
        """The cheapest provider X, within `budget` and `limit`, that `shard` can have by moving a winner's shard."""
        for x in self.lists[shard.shard_id]:
            if self.asks[x] * work > budget:
                return None
            if x in taken or (limit is not None and self.speeds[x] * shard.layers > limit):
                continue
            best: _Move | None = None
            for job_index, k in self.hosted[x]:
                if self.memory[x] + self.book.jobs[job_index].shards[k].memory_bytes < shard.memory_bytes:
                    continue
                move = self.new_home(job_index, k, x)
                if move is not None and (best is None or move.delta < best.delta):
                    best = move
            if best is not None:
                return best
        return None

    def new_home(self, i: int, k: int, x: int) -> _Move | None:
        """Where shard `k` of winner `i` could move off provider `x`, keeping that winner valid."""
        job = self.book.jobs[i]
        shard = job.shards[k]
        providers = self.won[i]
        work = shard.layers * job.tokens
        cost = sum(self.asks[j] * s.layers * job.tokens for j, s in zip(providers, job.shards, strict=True))
        budget = job.max_price - 1 - cost + self.asks[x] * work
        limit = None
        if job.max_ns_per_token is not None:
            elapsed = sum(self.speeds[j] * s.layers for j, s in zip(providers, job.shards, strict=True))
            limit = job.max_ns_per_token - elapsed + self.speeds[x] * shard.layers
        y = self.cheapest_for(shard, work, budget, limit, list(providers))
        return None if y < 0 else _Move(i, k, x, y, (self.asks[y] - self.asks[x]) * work)

    def apply(self, move: _Move, *, undo: bool = False) -> None:
        source, target = (move.target, move.source) if undo else (move.source, move.target)
        shard = self.book.jobs[move.job].shards[move.shard]
        self.give_back(source, shard)
        self.take(target, shard)
        self.hosted[source].remove((move.job, move.shard))
        self.hosted[target].append((move.job, move.shard))
        providers = list(self.won[move.job])
        providers[move.shard] = target
        self.won[move.job] = tuple(providers)

    def roll_back(self, job: JobBid, chosen: list[int], moves: list[_Move]) -> None:
        for j, shard in zip(chosen, job.shards, strict=True):
            if j >= 0:
                self.give_back(j, shard)
        for move in reversed(moves):
            self.apply(move, undo=True)

    def take(self, j: int, shard: ShardDemand) -> None:
        self.slots[j] -= 1
        self.memory[j] -= shard.memory_bytes

    def give_back(self, j: int, shard: ShardDemand) -> None:
        self.slots[j] += 1
        self.memory[j] += shard.memory_bytes
