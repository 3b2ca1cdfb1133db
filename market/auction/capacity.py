"""Capacity left on each provider during a heuristic round, and the exact cheapest placement of one job on it.

`Capacity` holds the slots and memory each provider has left and the jobs placed so far (`won`, `hosted`). For
each shard id it keeps the providers that could take that shard now, in ask order, two ways: `alive`, their
positions in the shard's candidate list, sorted (bisect), and `trees`, a min-segment tree of their speeds over
the same positions, which finds the next provider at most so slow in O(log P). Both follow every change of
capacity, in both directions, so the local search can take jobs out again (`mark`, `undo`).

`place(i)` finds job i's cheapest placement on what is left (least Σ ask·work; `bundle` does the search):
- each shard keeps the providers that could be in the best bundle. Scanned in ask order, a provider costs at
  least as much as every one kept before it, so it is needed only while fewer than n kept ones (n: the job's
  shard count) are also at least as cheap and as fast: one of those is always free for this shard whatever
  the job's other shards take. Without a speed cap that is the n cheapest (and `TIE_SCAN` more, to break
  ties); with one, the speed tree jumps straight to the next provider faster than the n-th fastest kept, all
  of them up to `EXACT_OPTIONS`, then only ones an eighth faster than any kept, up to `MAX_OPTIONS`;
- a branch and bound over those picks one provider per shard, all distinct, within the speed cap and with
  v − Σ ask·work ≥ 1. A capped job first tries its best placement without the cap (often within it anyway),
  then bounds its scans by the cheapest each shard could cost within the cap and by a first placement that
  meets it.
So the placement is exact without a cap, and with one wherever a shard's frontier has at most
`EXACT_OPTIONS` providers (every book of up to that many providers). A job of the same shards that can wait no
longer and pay no more per token than one that found nothing finds nothing either, while capacity only shrinks:
`place` remembers the failures (`failed`) until a job is taken out again. On large books with speed caps most
jobs lose, and most of them are answered so.

Between placements of equal cost, the selection cost prefers the provider the shard's memory presses least
(memory × slots left / memory left); with `memory_aware` that pressure, where above 1, multiplies the cost,
so a big shard does not strand a memory-poor provider's other slots. It only ranks providers: whether a job
can win always uses the true asks.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, insort
from dataclasses import dataclass

from market.auction.book import PRIORITY_STEP_BPS, Book, candidates_by_shard
from market.auction.bundle import SLOW, Option, Placement, SpeedTree, branch_and_bound

# Job index -> provider index for each of its shards, in the job's shard order.
Assignment = dict[int, tuple[int, ...]]
EXACT_OPTIONS = 24  # a capped shard keeps every provider of its frontier up to this many (exact on small books)
MAX_OPTIONS = 40  # then only ones an eighth faster than any kept, up to this many
TIE = 1e-4  # between providers that cost the same, the one this shard's memory presses least
TIE_SCAN = 8  # providers scanned beyond the n cheapest for a lower selection cost (ties, memory pressure)


class Capacity:
    """Mutable state of a heuristic round: capacity left, live candidates per shard id, the jobs placed."""

    def __init__(self, book: Book, priority_bps: int = PRIORITY_STEP_BPS, *, memory_aware: bool = False) -> None:
        self.book = book
        self.memory_aware = memory_aware
        providers = book.providers
        self.asks = [p.ask for p in providers]
        self.speeds = [p.ns_per_layer_token for p in providers]
        self.slots = [p.slots for p in providers]
        self.memory = [p.memory_bytes for p in providers]
        self.lists = candidates_by_shard(book)
        self.need = {t: s.memory_bytes for t, s in book.shard_types.items()}
        self.alive = {t: list(range(len(c))) for t, c in self.lists.items()}
        self.trees = {t: SpeedTree([self.speeds[j] for j in c]) for t, c in self.lists.items()}
        self.ranks: list[list[tuple[str, int]]] = [[] for _ in providers]  # per provider: (shard id, position)
        for t, c in self.lists.items():
            for r, j in enumerate(c):
                self.ranks[j].append((t, r))
        self.cheapest = {t: self.asks[c[0]] for t, c in self.lists.items() if c}
        self.fastest = {t: min(self.speeds[j] for j in c) for t, c in self.lists.items() if c}
        self.values = [j.max_price + j.bonus(priority_bps) for j in book.jobs]  # what winning adds, before costs
        self.plans: dict[int, _Plan | None] = {}
        # Per tuple of shard ids, the (speed cap, budget per token) of jobs `place` found no placement for, the
        # maximal ones: a job asking no more on both has none either, while capacity only shrinks.
        self.failed: dict[tuple[str, ...], list[tuple[int, int]]] = {}
        self.won: Assignment = {}
        self.costs: dict[int, int] = {}  # Σ ask·work of each placed job
        self.hosted: list[set[int]] = [set() for _ in providers]  # jobs with a shard on each provider
        self.journal: list[tuple[bool, int, tuple[int, ...]]] = []  # (added, job, providers), for `undo`

    def objective(self) -> int:
        """Σ over the placed jobs of v − Σ ask·work + bonus, in base units."""
        return sum(self.values[i] - c for i, c in self.costs.items())

    # --- changes -------------------------------------------------------------------------------------------------

    def add(self, i: int, providers: tuple[int, ...]) -> None:
        job = self.book.jobs[i]
        cost = 0
        for j, shard in zip(providers, job.shards, strict=True):
            self.slots[j] -= 1
            self.memory[j] -= shard.memory_bytes
            self.hosted[j].add(i)
            cost += self.asks[j] * shard.layers * job.tokens
            self.refresh(j)
        self.won[i] = providers
        self.costs[i] = cost
        self.journal.append((True, i, providers))

    def remove(self, i: int) -> None:
        self.failed.clear()  # capacity grows: a placement that failed may exist now
        providers = self.won.pop(i)
        del self.costs[i]
        for j, shard in zip(providers, self.book.jobs[i].shards, strict=True):
            self.slots[j] += 1
            self.memory[j] += shard.memory_bytes
            self.hosted[j].discard(i)
            self.refresh(j)
        self.journal.append((False, i, providers))

    def mark(self) -> int:
        """A point to `undo` back to."""
        return len(self.journal)

    def undo(self, mark: int) -> None:
        """Reverse every change since `mark`, latest first."""
        while len(self.journal) > mark:
            added, i, providers = self.journal.pop()
            if added:
                self.remove(i)
            else:
                self.add(i, providers)
            self.journal.pop()  # the reversal's own entry

    def refresh(self, j: int) -> None:
        """Put provider j in or out of the live candidates of each shard id it serves, after its capacity changed."""
        slots, memory, speed = self.slots[j], self.memory[j], self.speeds[j]
        for t, r in self.ranks[j]:
            live = self.alive[t]
            pos = bisect_left(live, r)
            present = pos < len(live) and live[pos] == r
            if slots >= 1 and memory >= self.need[t]:
                if not present:
                    live.insert(pos, r)
                    self.trees[t].set(r, speed)
            elif present:
                del live[pos]
                self.trees[t].set(r, SLOW)

    # --- the placement of one job ----------------------------------------------------------------------------------

    def plan(self, i: int) -> _Plan | None:
        """Job i's static facts, or None when it can never win (a shard nobody serves, asks or speed out of reach)."""
        if i in self.plans:
            return self.plans[i]
        job = self.book.jobs[i]
        plan = None
        if all(s.shard_id in self.cheapest for s in job.shards):
            works = tuple(s.layers * job.tokens for s in job.shards)
            least = tuple(self.cheapest[s.shard_id] * w for s, w in zip(job.shards, works, strict=True))
            quickest = tuple(self.fastest[s.shard_id] * s.layers for s in job.shards)
            cap = job.max_ns_per_token
            if sum(least) < job.max_price and (cap is None or sum(quickest) <= cap):
                plan = _Plan(tuple(s.shard_id for s in job.shards), works, least, quickest, job.max_price - 1, cap)
        self.plans[i] = plan
        return plan

    def place(self, i: int) -> Placement | None:
        """Job i's best placement on the capacity left, as (providers per shard, Σ ask·work), or None if it has
        none: distinct providers, within its speed cap, v − Σ ask·work ≥ 1, least selection cost."""
        plan = self.plan(i)
        job = self.book.jobs[i]
        if plan is None or any(not self.alive[s.shard_id] for s in job.shards):
            return None
        key, cap, per_token = plan.shards, SLOW if plan.cap is None else plan.cap, plan.budget // job.tokens
        if any(cap <= c and per_token <= b for c, b in self.failed.get(key, ())):
            return None  # a job of these shards that could wait as long and pay as much per token found nothing
        found = self._place(i, plan)
        if found is None:  # for as long as capacity only shrinks: `remove` forgets
            front = [(c, b) for c, b in self.failed.get(key, ()) if not (c <= cap and b <= per_token)]
            self.failed[key] = [*front, (cap, per_token)]
        return found

    def _place(self, i: int, plan: _Plan) -> Placement | None:
        best = self.search(i, plan, None, plan.budget)
        if best is None or plan.cap is None or self.elapsed(i, best[0]) <= plan.cap:
            return best  # the best placement without the cap meets it
        least = self.least_within(i, plan)
        if least is None or sum(least) > plan.budget:
            return None
        first = self.first_fit(i, plan)
        return self.search(i, plan, plan.cap, plan.budget if first is None else first, least)

    def alternatives(self, i: int, count: int) -> list[tuple[int, ...]]:
        """Up to `count` placements of job i on the capacity left, least selection cost first: each shard among
        its n + 2 cheapest live providers fast enough, all distinct, within the cap and v − 1."""
        plan = self.plan(i)
        if plan is None:
            return []
        shards = self.book.jobs[i].shards
        spare = None if plan.cap is None else plan.cap - sum(plan.quickest)
        per_shard: list[list[Option]] = []
        for k, shard in enumerate(shards):
            most = SLOW - 1 if spare is None else (spare + plan.quickest[k]) // shard.layers
            found: list[Option] = []
            r = self.trees[shard.shard_id].first(0, most)
            while r >= 0 and len(found) < len(shards) + 2:
                j = self.lists[shard.shard_id][r]
                cost = self.asks[j] * plan.works[k]
                found.append((self.selection(shard.shard_id, j, cost), cost, self.speeds[j] * shard.layers, j))
                r = self.trees[shard.shard_id].first(r + 1, most)
            per_shard.append(found)
        combos = []
        for combo in itertools.product(*per_shard):
            providers = tuple(o[3] for o in combo)
            if len(set(providers)) < len(providers) or sum(o[1] for o in combo) > plan.budget:
                continue
            if plan.cap is not None and sum(o[2] for o in combo) > plan.cap:
                continue
            combos.append((sum(o[0] for o in combo), providers))
        combos.sort()
        return [providers for _, providers in combos[:count]]

    def least_now(self, i: int) -> int | None:
        """A lower bound on Σ ask·work of job i's placement now (each shard on its cheapest live provider that is
        fast enough), or None when it has no placement."""
        plan = self.plan(i)
        if plan is None:
            return None
        shards = self.book.jobs[i].shards
        if plan.cap is not None:
            least = self.least_within(i, plan)
            total = None if least is None else sum(least)
        else:
            total = 0
            for shard, work in zip(shards, plan.works, strict=True):
                live = self.alive[shard.shard_id]
                if not live:
                    return None
                total += self.asks[self.lists[shard.shard_id][live[0]]] * work
        return None if total is None or total > plan.budget else total

    def least_within(self, i: int, plan: _Plan) -> list[int] | None:
        """Per shard, the ask·work of the cheapest live provider fast enough if the other shards get the fastest
        live ones; None when even the fastest live ones miss the cap (capacity only shrinks while a round fills, so
        such a job is done)."""
        assert plan.cap is not None
        shards = self.book.jobs[i].shards
        quickest = [self.trees[s.shard_id].tree[1] * s.layers for s in shards]  # the root: the fastest live one
        spare = plan.cap - sum(quickest)
        if spare < 0:
            return None
        least = []
        for k, shard in enumerate(shards):
            r = self.trees[shard.shard_id].first(0, (spare + quickest[k]) // shard.layers)
            if r < 0:
                return None
            least.append(self.asks[self.lists[shard.shard_id][r]] * plan.works[k])
        return least

    def elapsed(self, i: int, providers: tuple[int, ...]) -> int:
        """ns per token of job i's pipeline on these providers."""
        return sum(self.speeds[j] * s.layers for j, s in zip(providers, self.book.jobs[i].shards, strict=True))

    def search(
        self, i: int, plan: _Plan, cap: int | None, budget: int, least: list[int] | None = None
    ) -> Placement | None:
        """The branch and bound over each shard's options, none costing more than `budget` allows given the least
        the other shards can cost (`least`, per shard; the cheapest asks by default)."""
        shards = self.book.jobs[i].shards
        least = least or list(plan.least)
        total_least, total_quickest = sum(least), sum(plan.quickest)
        options: list[list[Option]] = []
        for k, shard in enumerate(shards):
            most = budget - (total_least - least[k])
            if cap is None:
                found = self.cheapest_options(shard.shard_id, plan.works[k], len(shards), most)
            else:
                limit = cap - (total_quickest - plan.quickest[k])
                found = self.fast_options(shard.shard_id, plan.works[k], shard.layers, len(shards), most, limit)
            if not found:
                return None
            options.append(found)
        return branch_and_bound(options, plan.budget, cap)

    def cheapest_options(self, t: str, work: int, n: int, budget: int) -> list[Option]:
        """Shard id t's live providers among the n least selection costs, scanned while their ask could compete."""
        candidates, asks = self.lists[t], self.asks
        kept: list[Option] = []
        nth: list[float] = []  # the n least selection costs kept so far
        extra = 0  # providers scanned since n were kept: at equal asks, only a few more to break ties
        for r in self.alive[t]:
            j = candidates[r]
            cost = asks[j] * work
            if cost > budget or (len(nth) == n and (nth[-1] <= cost or extra >= TIE_SCAN)):
                break  # every later provider costs at least `cost`, which selects for at least as much
            extra += len(nth) == n
            chosen = self.selection(t, j, cost)
            if len(nth) < n or chosen < nth[-1]:
                kept.append((chosen, cost, 0, j))
                insort(nth, chosen)
                del nth[n:]
        kept.sort()
        return kept

    def fast_options(self, t: str, work: int, layers: int, n: int, budget: int, limit: int) -> list[Option]:
        """Shard id t's live providers within `limit` ns per token that fewer than n cheaper ones are as fast as."""
        candidates, asks, speeds, tree = self.lists[t], self.asks, self.speeds, self.trees[t]
        kept: list[Option] = []
        fast: list[int] = []  # the kept providers' ns per token, sorted
        r = 0
        while len(kept) < MAX_OPTIONS:
            most = limit if len(fast) < n else min(limit, fast[n - 1] - 1)  # strictly faster than the n-th
            if len(kept) >= EXACT_OPTIONS:  # from here on, only steps of an eighth faster, up to the fastest
                most = min(most, fast[0] - fast[0] // 8 - 1)
            r = tree.first(r, most // layers)
            if r < 0:
                break
            j = candidates[r]
            cost = asks[j] * work
            if cost > budget:
                break
            ns = speeds[j] * layers
            kept.append((self.selection(t, j, cost), cost, ns, j))
            insort(fast, ns)
            r += 1
        kept.sort()
        return kept

    def selection(self, t: str, j: int, cost: int) -> float:
        need, memory = self.need[t], self.memory[j]
        pressure = need * self.slots[j] / memory if memory else 0.0  # > 1: more than its share per free slot
        if self.memory_aware and pressure > 1:
            return cost * pressure
        return cost * (1 + TIE * pressure)

    def first_fit(self, i: int, plan: _Plan) -> int | None:
        """Σ ask·work of a placement within the cap found shard by shard (the cheapest provider fast enough if the
        shards after it get the fastest), or None: a bound on how far the exact search must scan."""
        assert plan.cap is not None
        used: set[int] = set()
        cost = elapsed = 0
        rest = sum(plan.quickest)
        for k, shard in enumerate(self.book.jobs[i].shards):
            rest -= plan.quickest[k]
            most = (plan.cap - elapsed - rest) // shard.layers
            candidates, tree = self.lists[shard.shard_id], self.trees[shard.shard_id]
            r = tree.first(0, most)
            while r >= 0 and candidates[r] in used:
                r = tree.first(r + 1, most)
            if r < 0:
                return None
            j = candidates[r]
            used.add(j)
            cost += self.asks[j] * plan.works[k]
            elapsed += self.speeds[j] * shard.layers
        return min(cost, plan.budget)


@dataclass(frozen=True, slots=True)
class _Plan:
    shards: tuple[str, ...]  # the job's shard ids
    works: tuple[int, ...]  # layer-tokens per shard
    least: tuple[int, ...]  # the cheapest ask among each shard's providers × its work
    quickest: tuple[int, ...]  # the fastest of each shard's providers × its layers: ns per token
    budget: int  # v − 1: the most the bundle may cost
    cap: int | None  # the job's speed cap
