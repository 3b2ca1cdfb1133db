"""The stake mirror: each linked wallet's stake on the Staking contract, read into its row, so that placement reads
the database and never waits on the node. And what every chain service shares: the chain, or a Conflict without one.

Below the outbox (which refreshes a provider's stake once its slash is mined) and ledger/services/chain.py (which
re-exports these): it imports neither.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from django.utils import timezone
from eth_utils import to_checksum_address

from config.errors import Conflict
from ledger.chain import bridge
from ledger.chain.client import Chain
from ledger.chain.errors import ChainError
from ledger.chain.models import ChainCursor, Wallet

log = logging.getLogger(__name__)
INT64_MAX = 2**63 - 1  # the largest value a BigIntegerField holds: chain amounts beyond it are clamped


def no_chain() -> Conflict:
    return Conflict("this market runs without a chain (CHAIN_RPC_URL is not set)", code="chain_disabled")


def require_chain() -> Chain:
    chain = bridge.connect()
    if chain is None:
        raise no_chain()
    return chain


def stakes_refresh(*, addresses: Iterable[str] | None = None) -> list[Wallet]:
    """Read the stakes of these wallets (all wallets with an address when None) from the chain into the mirror.
    ChainUnavailable when the node does not answer: the mirror keeps its old read time and goes stale."""
    chain = require_chain()
    wallets = Wallet.objects.exclude(address=None)
    if addresses is not None:
        wallets = wallets.filter(address__in=[to_checksum_address(a) for a in addresses])
    now = timezone.now()
    refreshed = []
    for wallet in wallets:
        active, unbonding, release_at, slashed = chain.call(chain.staking.functions.stakeOf(wallet.address))
        fields = {
            "stake_active": min(int(active), INT64_MAX),
            "stake_unbonding": min(int(unbonding), INT64_MAX),
            "unbond_release_at": datetime.fromtimestamp(int(release_at), tz=UTC) if release_at else None,
            "stake_slashed": min(int(slashed), INT64_MAX),
            "stake_read_at": now,
        }
        Wallet.objects.filter(pk=wallet.pk).update(**fields)
        wallet.refresh_from_db()
        refreshed.append(wallet)
    min_stake = int(chain.call(chain.staking.functions.minStake()))
    ChainCursor.objects.update_or_create(name="staking:min_stake", defaults={"value": min(min_stake, INT64_MAX)})
    return refreshed


def stakes_refresh_quietly(*, addresses: Iterable[str] | None = None) -> None:
    try:
        stakes_refresh(addresses=addresses)
    except ChainError as exc:
        log.warning("stake refresh failed: %s", exc)
