"""The market's one connection to its chain: settings in, a `Chain` with the contracts' addresses out.

`connect()` finds the contracts this database recorded for the node's chain id and checks their code is there; a
chain that lacks them (a fresh node) gets them deployed and recorded, so a second start reuses them (idempotent
deployment). It returns None when no chain is configured (CHAIN_RPC_URL empty). A fresh chain starts a new epoch,
and the ops it needs (the vault's backing of what the ledger already holds) are queued as rows (ops.py, below the
bridge); sending them is the outbox's work, above it.
"""

from __future__ import annotations

import logging
import threading
import uuid

from django.conf import settings
from django.db import transaction
from eth_account import Account

from ledger.chain.client import Addresses, Chain, StakingParams
from ledger.chain.models import ChainCursor, ChainDeployment, ChainOp
from ledger.chain.ops import IN_FLIGHT, enqueue, ops_total
from ledger.chain.ops import epoch as epoch  # which deployment this is: defined below the bridge, for ops_total
from ledger.selectors import ledger_held

log = logging.getLogger(__name__)
_NAMES = {"token": "MarketToken", "vault": "MarketVault", "staking": "Staking", "anchor": "SettlementAnchor"}
_lock = threading.Lock()
_cached: dict[str, Chain] = {}


def enabled() -> bool:
    return bool(settings.CHAIN_RPC_URL)


def staking_params() -> StakingParams:
    treasury = settings.CHAIN_TREASURY or Account.from_key(settings.CHAIN_OPERATOR_KEY).address
    return StakingParams(
        treasury=treasury,
        unbonding_period=settings.CHAIN_UNBONDING_SECONDS,
        min_stake=settings.CHAIN_MIN_STAKE,
        challenger_share_bps=settings.CHAIN_CHALLENGER_SHARE_BPS,
    )


def connect() -> Chain | None:
    """The chain with the market's contracts (deployed on first use), or None without CHAIN_RPC_URL.
    ChainUnavailable when the node does not answer."""
    if not enabled():
        return None
    url = settings.CHAIN_RPC_URL
    with _lock:
        chain = _cached.get(url)
        if chain is None:
            chain = Chain(url, settings.CHAIN_OPERATOR_KEY)
        if chain.addresses is None:
            chain.addresses = _ensure_deployed(chain)
            _cached[url] = chain
        return chain


def forget() -> None:
    """Drop the cached connection (tests that restart or replace the node)."""
    with _lock:
        _cached.clear()


def _ensure_deployed(chain: Chain) -> Addresses:
    chain_id = chain.chain_id()
    recorded = dict(ChainDeployment.objects.filter(chain_id=chain_id).values_list("name", "address"))
    if set(recorded) == set(_NAMES.values()) and all(chain.has_code(recorded[n], n) for n in _NAMES.values()):
        return Addresses(**{field: recorded[name] for field, name in _NAMES.items()})
    if recorded:
        log.warning("chain %s lacks the contracts recorded for it (a fresh node?): deploying them again", chain_id)
    addresses = chain.deploy_market(staking_params())
    with transaction.atomic():
        ChainDeployment.objects.filter(chain_id=chain_id).delete()
        ChainDeployment.objects.bulk_create(
            ChainDeployment(chain_id=chain_id, name=name, address=getattr(addresses, field))
            for field, name in _NAMES.items()
        )
        # A new chain: its nonces and logs start afresh, transactions signed for the old one are signed again, and
        # the vault is issued what the ledger holds (none of it is on this chain yet).
        ChainCursor.objects.filter(name__startswith=f"{chain_id}:").delete()
        _backfill(addresses)
    log.info("deployed the market's contracts on chain %s: %s", chain_id, addresses.as_dict())
    return addresses


def _backfill(addresses: Addresses) -> None:
    counter, _ = ChainCursor.objects.get_or_create(name="chain:epoch")
    ChainCursor.objects.filter(pk=counter.pk).update(value=counter.value + 1)
    unsent = {"raw_tx": "", "tx_hash": "", "nonce": None, "block_number": None, "gas_used": None, "mined_at": None}
    ChainOp.objects.filter(state=ChainOp.State.SENT).update(state=ChainOp.State.QUEUED, **unsent)
    # Settlement batches are numbered from 0 on each anchor contract: every batch is anchored again, in order.
    ChainOp.objects.filter(kind=ChainOp.Kind.ANCHOR).update(state=ChainOp.State.QUEUED, last_error="", **unsent)
    held = ledger_held() + ops_total(ChainOp.Kind.WITHDRAW, IN_FLIGHT) - ops_total(ChainOp.Kind.ISSUE, IN_FLIGHT)
    if held > 0:
        # A fresh node under the same operator key puts the vault at the same address: the key names this deployment.
        key = f"issue:backfill:{addresses.vault}:{uuid.uuid4().hex}"
        enqueue(kind=ChainOp.Kind.ISSUE, key=key, args={"amount": str(held)})


def cursor_name(chain: Chain, what: str) -> str:
    """A cursor's name, scoped to the chain id and (for per-contract cursors) the address."""
    return f"{chain.chain_id()}:{what}"
