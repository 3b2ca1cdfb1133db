"""Quotes: the price at which a bid for a model would clear now, from the providers free at this moment.

A job needs every shard of its model, each on a different provider (docs/pricing.md). The cheapest feasible
pipeline is a tiny assignment problem (a handful of shards, the cheapest few providers per shard); its cost per
token is the sum over shards of the provider's ask × the shard's layers. A bid whose maximum covers that cost for
all its tokens clears when it is alone in the book (the auction maximises value minus asks, and prices at the
midpoint between ask and bid, so the buyer pays at most its bid). The same figure explains a losing bid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from django.conf import settings

from market import selectors
from market.models import LanguageModel, Provider, Shard

CANDIDATES_PER_SHARD = 3  # beyond the cheapest few per shard, no cheaper distinct assignment exists


@dataclass(frozen=True)
class QuoteLine:
    shard: str
    layers: int
    provider: int
    provider_name: str
    ask: int  # base units per layer-token
    ns_per_layer_token: int


@dataclass(frozen=True)
class Quote:
    """The cheapest pipeline free now: `per_token` base units per token (every layer of every shard)."""

    lines: tuple[QuoteLine, ...]

    @property
    def per_token(self) -> int:
        return sum(line.ask * line.layers for line in self.lines)

    def price(self, tokens: int) -> int:
        """What the pipeline's asks come to for `tokens` tokens (the prompt plus the new ones)."""
        return self.per_token * tokens

    def bid(self, tokens: int) -> int:
        """A maximum price that clears: the asks plus QUOTE_MARGIN_BPS (room for asks that move before the round)."""
        return self.price(tokens) * (10_000 + settings.QUOTE_MARGIN_BPS) // 10_000

    @property
    def ms_per_token(self) -> float:
        """Compute time per token through the pipeline, from the providers' benchmarks (no network)."""
        return sum(line.ns_per_layer_token * line.layers for line in self.lines) / 1e6


class NoPipeline(Exception):
    """No pipeline can be placed now; the message names the shard nobody free can serve."""


def _fits(provider: Provider, shard: Shard) -> bool:
    if not provider.memory_bytes:
        return True  # no budget reported: limited by its slots alone
    free = provider.slots - provider.busy_slots
    return provider.memory_bytes * free // max(provider.slots, 1) >= shard.size_bytes


def cheapest_pipeline(*, model: LanguageModel, providers: list[Provider] | None = None) -> Quote:
    """The cheapest assignment of distinct free providers to the model's shards; NoPipeline when there is none."""
    chain = selectors.shard_chain(model=model, plan=None)
    if providers is None:
        providers = [p for p in selectors.providers_free(exclude=set()) if p.ns_per_layer_token is not None]
    asks = {p.pk: selectors.provider_ask(p) for p in providers}
    candidates = []
    for shard in chain:
        fitting = sorted((p for p in providers if _fits(p, shard)), key=lambda p: (asks[p.pk], p.pk))
        if not fitting:
            raise NoPipeline(f"no provider free now can serve shard {shard.shard_id}")
        candidates.append(fitting[: CANDIDATES_PER_SHARD + len(chain)])
    best: tuple[int, tuple[Provider, ...]] | None = None
    for choice in itertools.product(*candidates):
        if len({p.pk for p in choice}) < len(choice):
            continue  # one provider per shard
        cost = sum(asks[p.pk] * s.n_layers for p, s in zip(choice, chain, strict=True))
        if best is None or cost < best[0]:
            best = (cost, choice)
    if best is None:
        raise NoPipeline(f"fewer free providers than the {len(chain)} shards of {model.name} need")
    return Quote(
        tuple(
            QuoteLine(
                shard=s.shard_id,
                layers=s.n_layers,
                provider=p.pk,
                provider_name=p.name,
                ask=asks[p.pk],
                ns_per_layer_token=int(p.speed_ns_per_layer_token or 0),
            )
            for p, s in zip(best[1], chain, strict=True)
        )
    )
