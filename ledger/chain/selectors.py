"""Reads of the bridge: who may take work by its stake, a user's chain view, a job's settlement proof."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Q
from django.utils import timezone
from eth_utils import to_checksum_address

from ledger.chain import bridge
from ledger.chain.errors import ChainError
from ledger.chain.merkle import MerkleTree
from ledger.chain.models import ChainCursor, ChainDeployment, ChainOp, SettlementLeaf, Wallet


def min_stake() -> int:
    """The contract's minimum stake as last read (the deploy-time setting until the first read)."""
    value = ChainCursor.objects.filter(name="staking:min_stake").values_list("value", flat=True).first()
    return int(value) if value is not None else settings.CHAIN_MIN_STAKE


def staked_users_q(prefix: str = "user__") -> Q:
    """A filter for rows whose user may take work: with a chain, a stake mirror read within
    CHAIN_STAKE_MAX_AGE_SECONDS whose active stake reaches the minimum (a stake that cannot be read does not
    count); without a chain, everyone."""
    if not bridge.enabled():
        return Q()
    fresh = timezone.now() - timedelta(seconds=settings.CHAIN_STAKE_MAX_AGE_SECONDS)
    return Q(
        **{
            f"{prefix}wallet__stake_read_at__gte": fresh,
            f"{prefix}wallet__stake_active__gte": max(min_stake(), 1),
        }
    )


def stake_view(*, user: User) -> dict[str, Any]:
    """The user's chain-side state for the API: wallet, stake mirror, whether it may take work, pending ops."""
    wallet = Wallet.objects.filter(user=user).first()
    pending = ChainOp.objects.filter(user=user).exclude(state=ChainOp.State.MINED).order_by("-pk")[:20]
    stale_after = timedelta(seconds=settings.CHAIN_STAKE_MAX_AGE_SECONDS)
    read_at = wallet.stake_read_at if wallet else None
    fresh = read_at is not None and timezone.now() - read_at <= stale_after
    enabled = bridge.enabled()
    minimum = min_stake() if enabled else 0
    return {
        "enabled": enabled,
        "address": wallet.address if wallet else None,
        "deposit_ref": wallet.deposit_ref if wallet else None,
        "dev_wallet": bool(wallet and wallet.dev_key),
        "stake": wallet.stake_active if wallet else 0,
        "unbonding": wallet.stake_unbonding if wallet else 0,
        "unbond_release_at": wallet.unbond_release_at if wallet else None,
        "slashed": wallet.stake_slashed if wallet else 0,
        "stake_read_at": read_at,
        "stake_fresh": fresh,
        "min_stake": minimum,
        # The rule of staked_users_q, for this one user.
        "can_take_work": not enabled or (fresh and wallet is not None and wallet.stake_active >= max(minimum, 1)),
        "pending_ops": [op_view(op) for op in pending],
    }


def wallet_balance(*, user: User) -> int | None:
    """The market tokens the user's wallet holds on chain, read from the node now (the market mirrors stakes, not
    wallets); None without a chain, without a wallet, or when the node does not answer."""
    address = Wallet.objects.filter(user=user).values_list("address", flat=True).first()
    if not address:
        return None
    try:
        chain = bridge.connect()
        if chain is None:
            return None
        return int(chain.call(chain.token.functions.balanceOf(to_checksum_address(address))))
    except ChainError:
        return None


def op_view(op: ChainOp) -> dict[str, Any]:
    return {
        "id": op.pk,
        "kind": op.kind,
        "state": op.state,
        "amount": int(op.args.get("amount", 0)),
        "to": op.args.get("to"),
        "tx_hash": op.tx_hash or None,
        "attempts": op.attempts,
        "last_error": op.last_error,
        "created_at": op.created_at,
        "mined_at": op.mined_at,
    }


def settlement_proof(*, job_ref: str) -> dict[str, Any] | None:
    """A job's settlement leaf, its Merkle proof and its batch's anchor, or None if it is in no batch yet."""
    leaf = SettlementLeaf.objects.filter(job_ref=job_ref).select_related("batch", "batch__op").first()
    if leaf is None:
        return None
    batch = leaf.batch
    tree = MerkleTree.of_leaves([bytes.fromhex(h[2:]) for h in batch.leaves.values_list("leaf", flat=True)])
    chain_addresses = dict(ChainDeployment.objects.filter(name="SettlementAnchor").values_list("chain_id", "address"))
    return {
        "job_ref": job_ref,
        "leaf_types": ["string", "uint256", "uint256", "uint256", "uint256", "bytes32"],
        "values": leaf.values,
        "leaf": leaf.leaf,
        "proof": ["0x" + p.hex() for p in tree.proof(bytes.fromhex(leaf.leaf[2:]))],
        "batch_id": batch.batch_id,
        "root": batch.root,
        "count": batch.count,
        "total": batch.total,
        "anchor_state": batch.op.state,
        "anchor_tx": batch.op.tx_hash or None,
        "anchor_block": batch.op.block_number,
        "contracts": {str(chain_id): address for chain_id, address in chain_addresses.items()},
    }
