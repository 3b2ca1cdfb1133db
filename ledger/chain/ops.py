"""The operator's ops as rows: queued once per key, named on chain by their key's hash, summed by kind and state.

Below the bridge, the outbox and the services, which all queue ops (the bridge the backing of an older ledger when it
deploys on a fresh chain, the services the ops that go with their postings) or count them (reconcile.py); it imports
nothing of theirs. Also here: which deployment the market's contracts are (`epoch`), which mined ops carry.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q
from eth_utils import keccak

from ledger.chain.models import ChainCursor, ChainOp

IN_FLIGHT = (ChainOp.State.QUEUED, ChainOp.State.SENT)


def epoch() -> int:
    """Which deployment the market's contracts are: 1 for the first, one more for each fresh chain under this
    database. Mined ops and credited deposits carry it, so the checks compare the ledger with the chain it is on."""
    return int(ChainCursor.objects.filter(name="chain:epoch").values_list("value", flat=True).first() or 0)


def op_id(key: str) -> bytes:
    """The bytes32 an op names on chain (issue id, withdrawal id): keccak256 of its idempotency key."""
    return keccak(text=key)


def enqueue(*, kind: str, key: str, args: dict[str, Any], user: Any = None) -> ChainOp:
    """Queue an op (inside the caller's atomic block, with the ledger change it belongs to); once per key."""
    op, _ = ChainOp.objects.get_or_create(key=key, defaults={"kind": kind, "args": args, "user": user})
    return op


def ops_total(kind: str, states: tuple[str, ...]) -> int:
    """The amounts of ops of `kind` in `states`; mined ones only of the current deployment (epoch())."""
    ops = ChainOp.objects.filter(kind=kind, state__in=states)
    if ChainOp.State.MINED in states:
        ops = ops.exclude(~Q(epoch=epoch()), state=ChainOp.State.MINED)
    return sum(int(op.args["amount"]) for op in ops)
