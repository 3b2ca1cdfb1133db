"""The order book the auction clears: jobs that bid for bundles of shards, providers that offer capacity.

Units, all integers so that money and the constraints are checked exactly:
- money in base units (like wei): a job's `max_price` (its escrow, the valuation v_i) and a provider's
  `ask` per layer-token;
- work in layer-tokens: a shard of `layers` layers run for `tokens` tokens is `layers * tokens`;
- memory in bytes; speed in nanoseconds (ns) per layer-token for a provider (its benchmark, as
  `market.models.Provider.ns_per_layer_token`), and a job's optional speed floor as the most ns per
  generated token its whole pipeline may take.

Assumptions this module fixes for both solvers (and for `families`, the hard books they are measured on):
- a job wins all its shards or none;
- distinct providers: the shards of one job run on different providers (a pipeline of one provider per
  hop), even where one provider has slots and memory for two of them;
- value ≥ cost + 1: a job wins only if v − Σ ask·work ≥ 1 base unit on the providers it gets, so a bid
  equal to its cheapest placement's asks loses, and priority never lowers that bar;
- every assignment of a shard to a provider takes one of the provider's slots and the shard's
  `memory_bytes` of its memory budget (each job has its own KV cache, so weights are not counted as
  shared between jobs);
- a provider can serve a shard when the shard fits in its memory budget and, if it lists the shards it
  holds (`shard_ids`), the shard is in that list;
- a pipeline's time per token is the sum over its shards of (provider ns per layer-token × shard layers);
- all amounts are Python integers, of any size: the solvers compare money exactly (CP-SAT's int64 is
  handled in `cpsat`).

Priority enters the objective as a bonus, never the prices: see `JobBid.bonus`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Id = int | str
BPS = 10_000  # basis points in 1
PRIORITY_STEP_BPS = 500  # default objective bonus per priority level: 5 % of the job's value
PRIORITY_MAX_LEVEL = 4  # levels above this add nothing more


@dataclass(frozen=True, slots=True)
class ShardDemand:
    """One shard of a model as a job needs it: `layers` decoder layers that take `memory_bytes` to serve."""

    shard_id: str
    layers: int
    memory_bytes: int

    def __post_init__(self) -> None:
        _require(bool(self.shard_id), "shard_id must be a non-empty string")
        _require(_is_int(self.layers) and self.layers >= 1, f"shard {self.shard_id}: layers must be an int >= 1")
        _require(
            _is_int(self.memory_bytes) and self.memory_bytes >= 0,
            f"shard {self.shard_id}: memory_bytes must be an int >= 0",
        )


@dataclass(frozen=True, slots=True)
class JobBid:
    """A buyer's bid: run every shard of `shards` for `tokens` tokens, paying at most `max_price` in total.

    `priority` is raised by the market when the job lost a round or its provider failed (see `bonus`).
    `max_ns_per_token`, when set, caps the pipeline's time per generated token.
    """

    job_id: Id
    shards: tuple[ShardDemand, ...]
    tokens: int
    max_price: int
    priority: int = 0
    max_ns_per_token: int | None = None

    def __post_init__(self) -> None:
        name = f"job {self.job_id!r}"
        _require(isinstance(self.shards, tuple), f"{name}: shards must be a tuple")
        _require(len(self.shards) >= 1, f"{name}: needs at least one shard")
        _require(all(isinstance(s, ShardDemand) for s in self.shards), f"{name}: shards must be ShardDemand")
        ids = [s.shard_id for s in self.shards]
        _require(len(set(ids)) == len(ids), f"{name}: the same shard appears twice")
        _require(_is_int(self.tokens) and self.tokens >= 1, f"{name}: tokens must be an int >= 1")
        _require(_is_int(self.max_price) and self.max_price >= 0, f"{name}: max_price must be an int >= 0")
        _require(_is_int(self.priority), f"{name}: priority must be an int")
        _require(
            self.max_ns_per_token is None or (_is_int(self.max_ns_per_token) and self.max_ns_per_token >= 0),
            f"{name}: max_ns_per_token must be None or an int >= 0",
        )

    def work(self, shard: ShardDemand) -> int:
        """Layer-tokens of one shard of this job."""
        return shard.layers * self.tokens

    @property
    def total_work(self) -> int:
        """Layer-tokens of the whole bundle; the bid per unit is `max_price / total_work`."""
        return sum(s.layers for s in self.shards) * self.tokens

    def bonus(self, step_bps: int) -> int:
        """What winning this job adds to the solvers' objective on top of its welfare, in base units.

        Each priority level is worth `step_bps` basis points of v, up to `PRIORITY_MAX_LEVEL` levels (at
        the default step, +5 % per level, +20 % at most), so a job that keeps losing, or that comes back
        after its provider failed, beats an equal or slightly better bid. It is only a weight: prices
        still come from v and the asks, and a winner still needs v > Σ ask·work, so priority can neither
        charge the buyer more nor pay a provider below its ask. Negative priorities count as 0.
        """
        level = min(max(self.priority, 0), PRIORITY_MAX_LEVEL)
        return self.max_price * level * step_bps // BPS


@dataclass(frozen=True, slots=True)
class ProviderOffer:
    """Free capacity of one provider and the ask the platform set for it.

    `slots` is how many shard assignments it can hold at once, `memory_bytes` the budget they share,
    `ask` the base units it must earn per layer-token, `ns_per_layer_token` its benchmarked speed.
    `shard_ids` lists the shards it can serve; None means any shard that fits in its memory.
    """

    provider_id: Id
    slots: int
    memory_bytes: int
    ask: int
    ns_per_layer_token: int
    shard_ids: frozenset[str] | None = None

    def __post_init__(self) -> None:
        name = f"provider {self.provider_id!r}"
        _require(_is_int(self.slots) and self.slots >= 0, f"{name}: slots must be an int >= 0")
        _require(_is_int(self.memory_bytes) and self.memory_bytes >= 0, f"{name}: memory_bytes must be an int >= 0")
        _require(_is_int(self.ask) and self.ask >= 0, f"{name}: ask must be an int >= 0")
        _require(
            _is_int(self.ns_per_layer_token) and self.ns_per_layer_token >= 0,
            f"{name}: ns_per_layer_token must be an int >= 0",
        )
        _require(
            self.shard_ids is None or isinstance(self.shard_ids, frozenset),
            f"{name}: shard_ids must be None or a frozenset",
        )

    def can_serve(self, shard: ShardDemand) -> bool:
        """Whether this provider could hold `shard` on an empty machine (capacity left is the solver's business)."""
        return (
            self.slots >= 1
            and shard.memory_bytes <= self.memory_bytes
            and (self.shard_ids is None or shard.shard_id in self.shard_ids)
        )


class Book:
    """The jobs and providers of one auction round, validated. Input order is the last tie-break (FIFO).

    `shard_types` maps each shard id to its demand; a shard id must mean the same layers and memory in
    every job that names it.
    """

    __slots__ = ("jobs", "providers", "shard_types")

    def __init__(self, jobs: Sequence[JobBid], providers: Sequence[ProviderOffer]) -> None:
        self.jobs: tuple[JobBid, ...] = tuple(jobs)
        self.providers: tuple[ProviderOffer, ...] = tuple(providers)
        _require(all(isinstance(j, JobBid) for j in self.jobs), "jobs must be JobBid instances")
        _require(all(isinstance(p, ProviderOffer) for p in self.providers), "providers must be ProviderOffer instances")
        _require(len({j.job_id for j in self.jobs}) == len(self.jobs), "duplicate job_id in the book")
        _require(
            len({p.provider_id for p in self.providers}) == len(self.providers), "duplicate provider_id in the book"
        )
        self.shard_types: dict[str, ShardDemand] = {}
        for job in self.jobs:
            for shard in job.shards:
                known = self.shard_types.setdefault(shard.shard_id, shard)
                _require(known == shard, f"shard {shard.shard_id!r} has different layers or memory in different jobs")

    @property
    def n_pairs(self) -> int:
        """(job shard, provider) pairs before any pruning: the size of CP-SAT's model, and what "auto" looks at."""
        return sum(len(j.shards) for j in self.jobs) * len(self.providers)

    def __repr__(self) -> str:
        return f"Book({len(self.jobs)} jobs, {len(self.providers)} providers, {len(self.shard_types)} shard types)"


def candidates_by_shard(book: Book) -> dict[str, list[int]]:
    """For each shard id, the indexes of the providers that can serve it, cheapest first (then fastest, then FIFO)."""
    order = sorted(
        range(len(book.providers)), key=lambda j: (book.providers[j].ask, book.providers[j].ns_per_layer_token, j)
    )
    return {
        shard_id: [j for j in order if book.providers[j].can_serve(shard)]
        for shard_id, shard in book.shard_types.items()
    }


def contribution(book: Book, i: int, providers: tuple[int, ...]) -> int:
    """Job i's welfare contribution v − Σ ask·work on these providers, in base units."""
    job = book.jobs[i]
    return job.max_price - sum(book.providers[j].ask * job.work(s) for j, s in zip(providers, job.shards, strict=True))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
