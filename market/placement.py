"""Where a job's hops run: the provider for each shard, with one of its slots claimed for the job.

The runner (`market.orchestrator`) asks its placement for a provider hop by hop, and again for each replacement
after a failure. Jobs run where the auction put them (`AuctionPlacement`); `FastestFreePlacement` needs no round
(the tests drive the orchestrator with it, and it is the fallback for replacements).
"""

from __future__ import annotations

from typing import Any, Protocol

from market import services
from market.models import Assignment, Job, Provider


class Placement(Protocol):
    """Picks the provider for one hop of a job, with one of its slots claimed for the job."""

    def place(self, *, job: Job, shard: dict[str, Any], exclude: set[int]) -> Provider | None: ...

    def release_unused(self) -> None:
        """Give back slots held for the job that no hop took (the job ended before every hop was placed)."""


class FastestFreePlacement:
    """The fastest online provider with a free slot that is not excluded (the job's other hops, and providers
    that already failed this job); for a job taken over from a lost runner, only one heard from since the runner
    was found lost (one connected to a live server)."""

    def place(self, *, job: Job, shard: dict[str, Any], exclude: set[int]) -> Provider | None:
        return services.provider_claim_for_shard(exclude=exclude, heard_since=job.runner_lost_at)

    def release_unused(self) -> None:
        return None


class AuctionPlacement:
    """Each hop on the provider the job's auction round assigned it, whose slot the round already claimed. A hop
    whose provider has gone since (offline, reconnected, or excluded) gives that slot back and, like every
    replacement after a failure, falls back to the fastest free provider; the hop keeps its cleared price
    (`market.services.settlement`)."""

    def __init__(self) -> None:
        self.assigned: dict[str, Assignment] | None = None

    def place(self, *, job: Job, shard: dict[str, Any], exclude: set[int]) -> Provider | None:
        if self.assigned is None:
            terms = Assignment.objects.filter(job=job, auction_round_id=job.auction_round_id)
            self.assigned = {a.shard.shard_id: a for a in terms.select_related("shard", "provider")}
        term = self.assigned.pop(shard["id"], None)
        if term is not None:
            provider = term.provider
            if (
                provider.pk not in exclude
                and provider.state == Provider.State.ONLINE
                and provider.channel_name == term.channel_name
            ):
                return provider
            services.provider_release(provider_id=term.provider_id, channel_name=term.channel_name)
        return services.provider_claim_for_shard(exclude=exclude)

    def release_unused(self) -> None:
        for term in (self.assigned or {}).values():
            services.provider_release(provider_id=term.provider_id, channel_name=term.channel_name)
        self.assigned = {}
