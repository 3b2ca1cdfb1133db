"""Reads of the provider side: what a provider (an agent or a browser tab) looks up to fetch its work, and the
provider console's figures (the /provide/ page and GET /api/provider/console/ read the same)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User

from config.errors import NotFound
from ledger import selectors as ledger_selectors
from ledger.chain import selectors as chain_selectors
from market import selectors as market_selectors
from market.models import Provider, Shard
from verification import selectors as verification_selectors


def shard_by_sha256(*, sha256: str) -> Shard:
    """The shard whose file has this SHA-256 (hex, either case); NotFound when no shard has it."""
    shard = Shard.objects.filter(sha256=sha256.lower()).first()
    if shard is None:
        raise NotFound(f"no shard has SHA-256 {sha256}", code="shard_unavailable")
    return shard


def capacity_row(provider: Provider) -> dict[str, Any]:
    """One of the user's agents as the market sees it: its capacity, the speed it is priced by (ns per
    layer-token), the ask the book uses and the platform's floor (base units per layer-token; None before the
    benchmark), its reliability (per mille) and whether it is online."""
    priced = provider.speed_ns_per_layer_token is not None
    return {
        "id": provider.pk,
        "name": provider.name,
        "kind": provider.kind,
        "backend": provider.backend,
        "slots": provider.slots,
        "busy_slots": provider.busy_slots,
        "speed_ns_per_layer_token": provider.speed_ns_per_layer_token,
        "ask": market_selectors.provider_ask(provider) if priced else None,
        "platform_ask": market_selectors.platform_floor(provider) if priced else None,
        "reliability_permille": provider.reliability_permille,
        "online": provider.state == Provider.State.ONLINE,
        "barred": provider.barred,
    }


def provider_console(*, user: User) -> dict[str, Any]:
    """Everything the provider console shows, in base units: the agents' capacity and asks, earnings pending and
    released (the ledger's balances) and per day over 30 days, stake and unbonding (None without a chain), audits
    passed and failed over all agents (verification's record), their mean reliability (per mille; None without
    agents)."""
    agents = list(market_selectors.providers_of_user(user=user))
    balances = ledger_selectors.balances_of(user=user)
    chain = chain_selectors.stake_view(user=user)
    audits = verification_selectors.provider_audits(user=user)["providers"]
    series = market_selectors.provider_earnings_series(provider=user)
    return {
        "capacity": [capacity_row(provider) for provider in agents],
        "pending": balances.pending,
        "earnings": balances.earnings,
        "series": series,
        "earned_in_series": any(point["amount"] for point in series),
        "chain_enabled": chain["enabled"],
        "stake": chain["stake"] if chain["enabled"] else None,
        "unbonding": chain["unbonding"] if chain["enabled"] else None,
        "audits_passed": sum(a["audits_passed"] for a in audits),
        "audits_failed": sum(a["audits_failed"] for a in audits),
        "reliability_permille": sum(p.reliability_permille for p in agents) // len(agents) if agents else None,
    }
