"""The ledger's tokens behind the vault: a mint's backing queued for the vault to issue, a withdrawal the vault
refused returned to its user.

Below the outbox (which returns a refused withdrawal when the op ends), the mints (issuance.py, jobs.py) and
ledger/services/chain.py (which re-exports these): it imports none of them.
"""

from __future__ import annotations

from ledger.chain import bridge
from ledger.chain.models import ChainOp
from ledger.chain.ops import enqueue
from ledger.models import Transaction
from ledger.services.posting import Kind, TxKind, accounts_for, post_lines


def issue_backing(*, mint_tx: Transaction, amount: int) -> ChainOp | None:
    """Queue the vault's issue of `amount` tokens behind a ledger mint (call in the mint's atomic block)."""
    if not bridge.enabled():
        return None
    args = {"amount": str(amount), "mint_tx": mint_tx.pk}
    return enqueue(kind=ChainOp.Kind.ISSUE, key=f"issue:{mint_tx.idempotency_key}", args=args)


def withdrawal_return(*, op: ChainOp) -> Transaction:
    """A withdrawal the vault refused goes back to the user's available balance, once."""
    amount = int(op.args["amount"])
    bridge_account, available = accounts_for((None, Kind.BRIDGE), (op.user, Kind.USER_AVAILABLE))
    return post_lines(
        kind=TxKind.WITHDRAWAL_RETURN,
        key=f"withdraw-return:{op.key}",
        lines={bridge_account.pk: -amount, available.pk: amount},
        memo=f"withdrawal refused by the chain: {op.last_error[:200]}",
    )
