"""Anchoring settlements: batches of settled jobs whose Merkle root the operator posts on chain.

A job's leaf comes from its settlement transaction alone (the ledger, not the market): what it took from escrow,
what its providers earned, the fee, the refund, and a hash of who earned what. So `manage.py verify_anchors`
recomputes every anchored batch from the ledger and compares it with the chain.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from eth_abi import encode
from eth_utils import keccak

from ledger.chain import bridge
from ledger.chain.merkle import MerkleTree, leaf_hash
from ledger.chain.models import ChainCursor, ChainOp, SettlementBatch, SettlementLeaf
from ledger.chain.ops import enqueue
from ledger.models import Account, Transaction

LEAF_TYPES = ("string", "uint256", "uint256", "uint256", "uint256", "bytes32")
Kind = Account.Kind


def settlement_values(tx: Transaction) -> list[Any]:
    """[jobRef, escrow, providers, fee, refund, payoutsHash] of one settlement transaction, from its entries:
    payoutsHash = keccak256(abi.encode(uint256[] provider user ids ascending, uint256[] their earnings))."""
    escrow = providers = fee = refund = 0
    payouts: dict[int, int] = {}
    for entry in tx.entries.all():  # prefetched with their accounts by anchor_pending
        kind, amount = entry.account.kind, entry.amount
        if kind == Kind.USER_ESCROW:
            escrow -= amount
        elif kind == Kind.PROVIDER_PENDING:
            providers += amount
            owner = int(entry.account.owner_id or 0)
            payouts[owner] = payouts.get(owner, 0) + amount
        elif kind == Kind.PLATFORM_FEES:
            fee += amount
        elif kind == Kind.USER_AVAILABLE:
            refund += amount
    ids = sorted(payouts)
    payouts_hash = keccak(encode(["uint256[]", "uint256[]"], [ids, [payouts[i] for i in ids]]))
    return [tx.job_ref, escrow, providers, fee, refund, "0x" + payouts_hash.hex()]


def values_leaf(values: list[Any]) -> bytes:
    job_ref, escrow, providers, fee, refund, payouts = values
    return leaf_hash(LEAF_TYPES, [job_ref, escrow, providers, fee, refund, bytes.fromhex(payouts[2:])])


def anchor_pending(*, max_leaves: int | None = None) -> SettlementBatch | None:
    """Put the settlements not anchored yet (oldest first, at most `max_leaves`) into the next batch and queue its
    anchor; None when there are none or no chain. Batches are numbered in order under a lock, as the contract
    requires."""
    if not bridge.enabled():
        return None
    limit = max_leaves or settings.CHAIN_ANCHOR_MAX_LEAVES
    with transaction.atomic():
        counter, _ = ChainCursor.objects.get_or_create(name="anchor:next_batch")
        counter = ChainCursor.objects.select_for_update().get(pk=counter.pk)
        unanchored = Transaction.objects.filter(kind=Transaction.Kind.SETTLEMENT, anchor_leaf__isnull=True)
        pending = list(unanchored.order_by("pk").prefetch_related("entries__account")[:limit])
        if not pending:
            return None
        values = [settlement_values(tx) for tx in pending]
        leaves = [values_leaf(v) for v in values]
        tree = MerkleTree.of_leaves(leaves)
        total = sum(v[2] + v[3] for v in values)
        batch_id = counter.value
        args: dict[str, Any] = {
            "batch_id": batch_id,
            "root": "0x" + tree.root.hex(),
            "count": len(pending),
            "total": str(total),
        }
        op = enqueue(kind=ChainOp.Kind.ANCHOR, key=f"anchor:{batch_id}", args=args)
        batch = SettlementBatch.objects.create(
            batch_id=batch_id, root=args["root"], count=len(pending), total=total, op=op
        )
        SettlementLeaf.objects.bulk_create(
            SettlementLeaf(settlement=tx, job_ref=tx.job_ref, batch=batch, values=v, leaf="0x" + leaf.hex())
            for tx, v, leaf in zip(pending, values, leaves, strict=True)
        )
        ChainCursor.objects.filter(pk=counter.pk).update(value=batch_id + 1)
    return batch
