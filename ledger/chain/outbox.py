"""The operator's outbox: ChainOps queued with the ledger changes that need them, sent in order, exactly once.

- Order: ops go out in id order; one that cannot be sent or is not mined yet holds back the ones after it (their
  nonces follow its nonce anyway).
- Nonces: allocated under the row lock of the sender's nonce cursor, as the larger of the cursor and the node's
  pending count, so two flushers, or a node that saw transactions we lost track of, never produce a collision.
- Exactly once: an op is signed once and its signed bytes stored before they are sent; a retry resends the same
  bytes, which the chain can include at most once (one nonce). Only a transaction proven unmineable (its nonce
  taken by another, no receipt for its hash) is signed again. The contracts refuse a repeated issue id,
  withdrawal id, evidence hash or batch id, which the outbox reads as "already done".
- One flusher at a time: a lease (a conditional UPDATE on a cursor row) that expires if its holder dies.
- Chain down: the flush stops at the first op it cannot send and records why; the next flush goes on from there.

Ops are queued as rows by ops.py (`enqueue`, also reachable here), below the outbox; what the ledger does when one
ends (`on_finished`) is written by ledger/services/vault.py and stakes.py, below it too. The services that drive the
flush (ledger/services/chain.py) sit above.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from eth_utils import to_checksum_address

from ledger.chain import bridge
from ledger.chain.client import Chain
from ledger.chain.errors import AlreadyKnown, ChainError, ChainReverted, ChainUnavailable, NonceTooLow
from ledger.chain.models import ChainCursor, ChainOp
from ledger.chain.ops import enqueue as enqueue  # ops are queued as rows below the outbox (ops.py); here for callers
from ledger.chain.ops import op_id
from ledger.services.stakes import stakes_refresh_quietly
from ledger.services.vault import withdrawal_return

log = logging.getLogger(__name__)
Kind, State = ChainOp.Kind, ChainOp.State
LEASE_SECONDS = 60
# Errors by which a contract says the op's effect is already on chain (a retry after the database lost track).
ALREADY_DONE = {
    Kind.ISSUE: {"AlreadyIssued"},
    Kind.WITHDRAW: {"WithdrawalAlreadyPaid"},
    Kind.SLASH: {"EvidenceAlreadyUsed"},
    Kind.ANCHOR: {"BatchOutOfOrder"},
    Kind.ADMIN: set(),
}
# The Staking setters an admin op may call, and how its value is passed.
STAKING_SETTERS: dict[str, Callable[[str], Any]] = {
    "setMinStake": int,
    "setUnbondingPeriod": int,
    "setChallengerShareBps": int,
    "setTreasury": to_checksum_address,
}


@dataclass
class FlushReport:
    mined: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    waiting: int | None = None  # the op the flush stopped at
    error: str = ""


def flush(*, limit: int = 200, wait: float = 2.0) -> FlushReport:
    """Send what is queued, in order, until done or blocked. Returns what happened (nothing without a chain)."""
    report = FlushReport()
    if not bridge.enabled():
        return report
    try:
        chain = bridge.connect()  # the first connection may deploy, and queue the backing of an older ledger
    except ChainError as exc:
        report.error = str(exc)
        return report
    assert chain is not None
    if not ChainOp.objects.filter(state__in=[State.QUEUED, State.SENT]).exists():
        return report
    holder = _lease()
    if holder is None:
        report.error = "another flush holds the lease"
        return report
    try:
        for op in ChainOp.objects.filter(state__in=[State.QUEUED, State.SENT]).order_by("pk")[:limit]:
            renewed = _renew(holder)
            if renewed is None:  # it expired and another flush took it: that one goes on from here
                report.error = "the lease was lost"
                break
            holder = renewed
            if not _advance(chain, op, report, wait=wait):
                report.waiting = op.pk
                break
    except ChainError as exc:
        report.error = str(exc)
        log.warning("chain outbox: %s", exc)
    finally:
        ChainCursor.objects.filter(name="outbox:lease", value=holder).update(value=0)
    return report


def _lease_value(seconds_from_now: float) -> int:
    """A lease's value: when it ends (microseconds) with random low digits, so that each holder's value is its own
    even within one clock tick and a holder whose lease was taken over can tell."""
    return int((time.time() + seconds_from_now) * 1_000_000) * 1000 + secrets.randbelow(1000)


def _lease() -> int | None:
    ChainCursor.objects.get_or_create(name="outbox:lease")
    until = _lease_value(LEASE_SECONDS)
    claimed = ChainCursor.objects.filter(name="outbox:lease", value__lt=_lease_value(0) - 1000).update(value=until)
    return until if claimed else None


def _renew(holder: int) -> int | None:
    """Extend the lease before each op, so a long flush never outlives it while it still works; None if it is no
    longer ours (it expired and another flush took it)."""
    until = _lease_value(LEASE_SECONDS)
    return until if ChainCursor.objects.filter(name="outbox:lease", value=holder).update(value=until) else None


def _advance(chain: Chain, op: ChainOp, report: FlushReport, *, wait: float) -> bool:
    """Move one op forward. True: it is mined or failed (go on to the next); False: it must wait."""
    try:
        if op.state == State.QUEUED:
            _sign(chain, op)
        try:
            chain.send_raw(bytes.fromhex(op.raw_tx[2:]))
        except AlreadyKnown:
            pass
        except NonceTooLow:
            if chain.receipt(bytes.fromhex(op.tx_hash[2:])) is None:
                # Its nonce went to another transaction, so these bytes can never be mined: sign it anew.
                ChainOp.objects.filter(pk=op.pk).update(state=State.QUEUED, raw_tx="", tx_hash="", nonce=None)
                op.refresh_from_db()
                return _advance(chain, op, report, wait=wait)
        receipt = chain.receipt(bytes.fromhex(op.tx_hash[2:]), wait=wait)
    except ChainReverted as exc:
        if exc.error_name in ALREADY_DONE[Kind(op.kind)] and _done_on_chain(chain, op):
            _finish(op, state=State.MINED, error=f"already on chain ({exc.error_name})")
            report.mined.append(op.pk)
        else:
            _finish(op, state=State.FAILED, error=str(exc))
            report.failed.append(op.pk)
        return True
    except ChainUnavailable as exc:
        ChainOp.objects.filter(pk=op.pk).update(attempts=F("attempts") + 1, last_error=str(exc)[:500])
        raise
    except (ValueError, KeyError, TypeError) as exc:
        # Arguments no call can be made of: fail this op rather than block every op behind it.
        _finish(op, state=State.FAILED, error=f"malformed op: {exc!r}")
        report.failed.append(op.pk)
        return True
    if receipt is None:
        ChainOp.objects.filter(pk=op.pk).update(attempts=F("attempts") + 1, last_error="not mined yet")
        return False
    ok = receipt["status"] == 1
    _finish(
        op,
        state=State.MINED if ok else State.FAILED,
        error="" if ok else "reverted on chain",
        block=int(receipt["blockNumber"]),
        gas=int(receipt["gasUsed"]),
    )
    (report.mined if ok else report.failed).append(op.pk)
    return True


def _sign(chain: Chain, op: ChainOp) -> None:
    """Sign the op with the next nonce and store it as SENT before anything is sent. ChainReverted when the call
    would revert (estimated first): then no nonce is spent."""
    fn = call_for(chain, op)
    sender = chain.operator.address
    with transaction.atomic():
        cursor, _ = ChainCursor.objects.select_for_update().get_or_create(name=bridge.cursor_name(chain, sender))
        nonce = max(cursor.value, chain.nonce_of(sender))
        signed = chain.sign(fn, nonce=nonce)
        fields = {"raw_tx": "0x" + bytes(signed.raw_transaction).hex(), "tx_hash": "0x" + bytes(signed.hash).hex()}
        # Only if no other flush signed it meanwhile does this nonce get used (and the cursor move past it).
        if ChainOp.objects.filter(pk=op.pk, state=State.QUEUED).update(
            state=State.SENT, nonce=nonce, sent_at=timezone.now(), **fields
        ):
            ChainCursor.objects.filter(pk=cursor.pk).update(value=nonce + 1)
    op.refresh_from_db()


def call_for(chain: Chain, op: ChainOp) -> Any:
    """The contract call an op makes."""
    a = op.args
    if op.kind == Kind.ISSUE:
        return chain.vault.functions.issue(op_id(op.key), int(a["amount"]))
    if op.kind == Kind.WITHDRAW:
        return chain.vault.functions.withdraw(op_id(op.key), to_checksum_address(a["to"]), int(a["amount"]))
    if op.kind == Kind.SLASH:
        challenger = to_checksum_address(a["challenger"] or "0x" + "00" * 20)
        evidence = bytes.fromhex(a["evidence_hash"][2:])
        return chain.staking.functions.slash(to_checksum_address(a["provider"]), int(a["amount"]), evidence, challenger)
    if op.kind == Kind.ANCHOR:
        root = bytes.fromhex(a["root"][2:])
        return chain.anchor.functions.anchor(int(a["batch_id"]), root, int(a["count"]), int(a["total"]))
    if op.kind == Kind.ADMIN and a["function"] in STAKING_SETTERS:
        value = STAKING_SETTERS[a["function"]](a["value"])
        return getattr(chain.staking.functions, a["function"])(value)
    raise ValueError(f"unknown chain op {op.kind!r} {a!r}")


def _done_on_chain(chain: Chain, op: ChainOp) -> bool:
    """Whether the chain already holds exactly this op's effect (so the refusal means it was done before)."""
    if op.kind == Kind.ANCHOR:
        root, *_ = chain.call(chain.anchor.functions.batch(int(op.args["batch_id"])))
        return bool("0x" + bytes(root).hex() == op.args["root"])
    return True  # the issue id, withdrawal id and evidence hash are derived from this op's own key


def _finish(op: ChainOp, *, state: str, error: str = "", block: int | None = None, gas: int | None = None) -> None:
    with transaction.atomic():
        changed = ChainOp.objects.filter(pk=op.pk, state__in=[State.QUEUED, State.SENT]).update(
            state=state,
            last_error=error[:500],
            block_number=block,
            gas_used=gas,
            mined_at=timezone.now(),
            epoch=bridge.epoch(),
        )
        if changed:
            op.state, op.last_error = state, error[:500]
            on_finished(op)


def on_finished(op: ChainOp) -> None:
    """What the ledger does when an op ends: a refused withdrawal returns its tokens to the user; a mined slash is
    read back into the provider's stake mirror once the transaction commits."""
    if op.kind == Kind.WITHDRAW and op.state == State.FAILED:
        withdrawal_return(op=op)
    if op.kind == Kind.SLASH and op.state == State.MINED:
        transaction.on_commit(lambda: stakes_refresh_quietly(addresses=[op.args["provider"]]))
