"""Winner determination and pricing for the combinatorial double auction, free of Django.

Build a `Book` of `JobBid`s and `ProviderOffer`s and call `solve(book)`; the `Allocation` it returns says
which jobs run on which providers, at what integer unit prices, and how good the solution is known to be
(`Allocation.record()` is the round's log entry).

- Winner determination (`greedy` on `capacity`, `cpsat`): maximise welfare, Σ over winners of v_i − Σ ask ×
  work, subject to slots, memory, distinct providers per job and the buyers' speed caps, all or nothing per
  job. `families` builds the hard books the tests and bench/auction.py measure them on.
- Priority: the market raises a job's `priority` when it loses a round or its provider fails. Each level
  adds a bonus of `priority_bps` basis points of v_i (5 % by default, 4 levels at most) to the job's weight
  in the solvers' objective and in the greedy's order; it is never charged and never relaxes the rule that
  a winner's v_i exceeds the asks it uses, so priority cannot break individual rationality. It changes
  who wins, not what anybody pays: the welfare given up for it is at most the winners' bonuses.
- Prices (`pricing`): midpoint of ask and bid per unit, clipped into [ask, bid], integer base units; the
  platform fee comes out of the provider's markup. Buyers pay at most v_i, providers get at least their
  ask, and what buyers pay equals what providers and the platform receive.
"""

from market.auction.book import PRIORITY_MAX_LEVEL, PRIORITY_STEP_BPS, Book, Id, JobBid, ProviderOffer, ShardDemand
from market.auction.clear import AUTO_CPSAT_MAX_PAIRS, COLUMNS_MAX_PAIRS, Allocation, Trade, solve
from market.auction.pricing import platform_fee, unit_prices

__all__ = [
    "AUTO_CPSAT_MAX_PAIRS",
    "COLUMNS_MAX_PAIRS",
    "PRIORITY_MAX_LEVEL",
    "PRIORITY_STEP_BPS",
    "Allocation",
    "Book",
    "Id",
    "JobBid",
    "ProviderOffer",
    "ShardDemand",
    "Trade",
    "platform_fee",
    "solve",
    "unit_prices",
]
