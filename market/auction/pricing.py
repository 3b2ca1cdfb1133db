"""Prices of the trades the auction matched, in integer base units, and the platform fee.

A job's bid per unit is b = v / W (its escrowed maximum over the layer-tokens of the whole bundle). Each
(job, provider, shard) trades at a unit price per layer-token:

    price = ask + floor(λ · max(0, b − ask)),    λ = 1/2 normally,

that is the midpoint of the provider's ask and the job's bid per unit, clipped into [ask, bid], rounded
down to an integer. Two corner cases keep the properties exact:

- a shard whose provider asks more than b (the job wins because its other shards are cheap) trades at the
  ask: the provider's floor wins over the buyer's per-unit bid, and the job's surplus on its other shards
  pays for it;
- if those other shards' midpoint markups would then push the job's total over v, λ shrinks for this job
  to S / G (S = v − Σ ask·w, the job's surplus; G = Σ max(0, b − ask)·w), so the total is at most v.

Rounding down keeps both ends: price ≥ ask because the ask is an integer, and Σ price·w ≤ v because the
exact (rational) total is. The unit price is an integer so that settlement can pay `price × work done`
for a job that stopped early and keep every property per layer-token.

The platform fee is taken out of the provider's revenue: fee = floor(payment × fee_bps / 10 000), but never
more than the provider's markup (payment − ask × work), so the provider still nets at least its ask (the
platform sets asks as what a provider must earn). The buyer pays `payment`, the provider receives
`payment − fee`, the platform keeps `fee`: budget balance holds with equality and never costs the
platform anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from market.auction.book import BPS


def unit_prices(value: int, works: Sequence[int], asks: Sequence[int]) -> list[int]:
    """Unit prices (base units per layer-token) of one winning job's shards, in the order given.

    `value` is the job's escrowed maximum v, `works[k]` the layer-tokens of shard k, `asks[k]` the ask of the
    provider that serves it. Requires v ≥ Σ ask·w (the solvers only accept such jobs).
    """
    if len(works) != len(asks) or not works:
        raise ValueError("works and asks must be non-empty and of the same length")
    if any(w < 1 for w in works) or any(a < 0 for a in asks) or value < 0:
        raise ValueError("works must be >= 1, asks and value >= 0")
    total_work = sum(works)
    surplus = value - sum(a * w for a, w in zip(asks, works, strict=True))
    if surplus < 0:
        raise ValueError(f"the asks cost more than the job's value ({-surplus} base units over)")
    # d_k = (b − ask_k) · W, an integer; its positive part is shard k's gap between bid and ask.
    gaps = [max(0, value - a * total_work) for a in asks]
    spread = sum(w * d for w, d in zip(works, gaps, strict=True))  # G · W
    if spread == 0:
        return list(asks)
    if 2 * surplus * total_work >= spread:  # λ = 1/2 fits within the surplus: the plain midpoint
        return [a + d // (2 * total_work) for a, d in zip(asks, gaps, strict=True)]
    # λ = S / G: markup_k = λ · d_k / W = S · d_k / (G · W).
    return [a + surplus * d // spread for a, d in zip(asks, gaps, strict=True)]


def platform_fee(payment: int, ask_cost: int, fee_bps: int) -> int:
    """The platform's cut of one trade's `payment`, never eating into the provider's `ask_cost` (ask × work)."""
    if not 0 <= fee_bps <= BPS:
        raise ValueError(f"fee_bps must be in [0, {BPS}], got {fee_bps}")
    if payment < ask_cost or ask_cost < 0:
        raise ValueError("payment must be >= ask_cost >= 0")
    return min(payment * fee_bps // BPS, payment - ask_cost)


def platform_ask(
    *, ns_per_layer_token: int, reliability_permille: int, per_compute_second: int, floor_permille: int
) -> int:
    """The ask the platform sets for a provider, in base units per layer-token (docs/pricing.md):

        ask = ceil(per_compute_second × t / ρ),   t = ns_per_layer_token / 10⁹,   ρ = max(reliability, floor) / 1000

    `t` is what one layer-token costs the provider in compute time (its benchmark), priced at the platform's
    rate per compute-second; dividing by the reliability ρ prices the work a flaky provider will not deliver
    (a share 1 − ρ of its steps must be done again elsewhere), so at equal speed the reliable provider is the
    cheaper one. At least 1: no work is free.
    """
    if ns_per_layer_token < 0 or per_compute_second < 0:
        raise ValueError("ns_per_layer_token and per_compute_second must be >= 0")
    if not 1 <= floor_permille <= 1000:
        raise ValueError("floor_permille must be in [1, 1000]")
    rho = min(max(reliability_permille, floor_permille), 1000)
    numerator = per_compute_second * ns_per_layer_token * 1000
    denominator = 10**9 * rho
    return max(1, -(-numerator // denominator))
