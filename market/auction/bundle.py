"""The exact cheapest bundle of one job from each shard's options, and the speed tree that finds those options.

`branch_and_bound` picks one option per shard: distinct providers, Σ ask·work within the job's budget, Σ ns
within its speed cap, least selection cost. Each shard's options are sorted by selection cost, so every loop
stops as soon as its partial sum plus the least the later shards can add reaches the best found; up to three
shards (the usual case) run as plain loops, and with a cap the last shard's option comes from a table by
speed in O(log m). `SpeedTree` is a min-segment tree over a shard's candidates in ask order.
"""

from __future__ import annotations

from bisect import bisect_right

Option = tuple[float, int, int, int]  # (selection cost, ask·work, ns per token it adds, provider)
Placement = tuple[tuple[int, ...], int]  # providers per shard, Σ ask·work
SLOW = 1 << 62  # the speed tree's value for a provider that cannot take the shard now; also "no cap"


class SpeedTree:
    """Min-segment tree over a shard's candidates in ask order: their speeds, `SLOW` where one cannot take it
    now. `first(r, most)` is the next candidate from position r at most that slow, in O(log P)."""

    __slots__ = ("size", "tree")

    def __init__(self, speeds: list[int]) -> None:
        size = 1
        while size < len(speeds):
            size *= 2
        tree = [SLOW] * (2 * size)
        tree[size : size + len(speeds)] = speeds
        for pos in range(size - 1, 0, -1):
            tree[pos] = min(tree[2 * pos], tree[2 * pos + 1])
        self.size, self.tree = size, tree

    def set(self, r: int, value: int) -> None:
        tree = self.tree
        pos = r + self.size
        tree[pos] = value
        pos //= 2
        while pos:
            tree[pos] = min(tree[2 * pos], tree[2 * pos + 1])
            pos //= 2

    def first(self, r: int, most: int) -> int:
        """The first position ≥ r whose speed is at most `most`, or -1."""
        size, tree = self.size, self.tree
        if r >= size or most < 0:
            return -1
        pos = r + size
        while tree[pos] > most:
            while pos & 1:  # a right child: climb until the next subtree to the right exists
                pos >>= 1
            if pos == 0:
                return -1
            pos += 1
        while pos < size:
            pos *= 2
            if tree[pos] > most:
                pos += 1
        return pos - size


_NONE: list[Option] = [(0.0, 0, 0, -1)]  # the one option of a shard that does not exist: selects nothing


def branch_and_bound(options: list[list[Option]], budget: int, cap: int | None) -> Placement | None:
    """The least selection cost over one option per shard: distinct providers, Σ cost ≤ budget, Σ ns ≤ cap."""
    if len(options) > 3:
        return _deep(options, budget, cap)
    n = len(options)
    o0, o1, o2 = (options + [_NONE, _NONE])[:3]
    least1, least2 = o1[0][0], o2[0][0]
    cost1, cost2 = min(o[1] for o in o1), min(o[1] for o in o2)
    ns1, ns2 = min(o[2] for o in o1), min(o[2] for o in o2)
    limit = cap if cap is not None else SLOW
    last = _Quickest(o2) if cap is not None and len(o2) > 3 else None
    best = float("inf")
    found: Placement | None = None
    for c0, t0, s0, j0 in o0:
        if c0 + least1 + least2 >= best:
            break
        if t0 + cost1 + cost2 > budget or s0 + ns1 + ns2 > limit:
            continue
        for c1, t1, s1, j1 in o1:
            if c0 + c1 + least2 >= best:
                break
            if (j1 == j0 and j1 >= 0) or t0 + t1 + cost2 > budget or s0 + s1 + ns2 > limit:
                continue
            for c2, t2, s2, j2 in o2 if last is None else last.within(limit - s0 - s1):
                total = c0 + c1 + c2
                if total >= best:
                    break
                if (j2 >= 0 and j2 in (j0, j1)) or t0 + t1 + t2 > budget or s0 + s1 + s2 > limit:
                    continue
                best, found = total, ((j0, j1, j2)[:n], t0 + t1 + t2)
                break
    return found


class _Quickest:
    """A shard's options by speed: the three least selection costs among those within a time, in O(log m)."""

    def __init__(self, options: list[Option]) -> None:
        by_speed = sorted(options, key=lambda o: o[2])
        self.speeds = [o[2] for o in by_speed]
        self.prefix: list[list[Option]] = []
        top: list[Option] = []
        for o in by_speed:
            top = sorted([*top, o])[:3]  # three: the other two shards can take at most two of them
            self.prefix.append(top)

    def within(self, ns: int) -> list[Option]:
        k = bisect_right(self.speeds, ns)
        return self.prefix[k - 1] if k else []


def _deep(options: list[list[Option]], budget: int, cap: int | None) -> Placement | None:
    """`branch_and_bound` for more than three shards, depth first."""
    n = len(options)
    rest_chosen, rest_cost, rest_ns = [0.0] * (n + 1), [0] * (n + 1), [0] * (n + 1)
    for k in range(n - 1, -1, -1):
        rest_chosen[k] = rest_chosen[k + 1] + options[k][0][0]
        rest_cost[k] = rest_cost[k + 1] + min(o[1] for o in options[k])
        rest_ns[k] = rest_ns[k + 1] + min(o[2] for o in options[k])
    limit = cap if cap is not None else SLOW
    best: list[float] = [float("inf")]
    found: list[Placement | None] = [None]
    picked: list[int] = [-1] * n

    def search(k: int, chosen: float, cost: int, ns: int) -> None:
        if k == n:
            best[0], found[0] = chosen, (tuple(picked), cost)
            return
        for c, true, t, j in options[k]:
            if chosen + c + rest_chosen[k + 1] >= best[0]:
                return
            if j in picked[:k] or cost + true + rest_cost[k + 1] > budget or ns + t + rest_ns[k + 1] > limit:
                continue
            picked[k] = j
            search(k + 1, chosen + c, cost + true, ns + t)

    search(0, 0.0, 0, 0)
    return found[0]
