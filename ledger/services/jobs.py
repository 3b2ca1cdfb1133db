"""A job's money: escrow when the bid is made, refund when it fails or expires, settlement when it completes.

What a job holds in escrow is the sum of the entries on its buyer's escrow account that carry its `job_ref`
(escrowed minus refunded minus settled). Refund and settlement read it under the lock of that account, so the
check and the posting see the same state and two of them cannot both take the same escrow.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from config.errors import Conflict, InvalidInput
from ledger import selectors
from ledger.errors import InsufficientFunds
from ledger.models import Account, PendingRelease, Transaction
from ledger.services.posting import (
    Kind,
    TxKind,
    accounts_for,
    amount_arg,
    lock_accounts,
    post_lines,
    replay,
    text_arg,
    user_arg,
)
from ledger.services.vault import issue_backing


def challenge_window() -> timedelta:
    """How long a provider's earnings stay pending after settlement (settings.CHALLENGE_WINDOW_SECONDS)."""
    return timedelta(seconds=settings.CHALLENGE_WINDOW_SECONDS)


def escrow_for_job(*, user: User, amount: int, job_ref: str, key: str | None = None) -> Transaction:
    """Move a job's maximum price into the buyer's escrow: from the available balance first, then from released
    earnings (so that with CONTRIBUTE_TO_USE what a user earned by providing pays for what it buys).

    Not enough: InsufficientFunds (402) and no money moves. Idempotent per job (key `escrow:<job_ref>`).
    """
    user = user_arg("user", user)
    amount = amount_arg("amount", amount)
    job_ref = text_arg("job_ref", job_ref, max_length=64)
    key = key or f"escrow:{job_ref}"
    available, earnings, escrow = accounts_for(
        (user, Kind.USER_AVAILABLE), (user, Kind.PROVIDER_AVAILABLE), (user, Kind.USER_ESCROW)
    )
    # The split depends on the balances at the time, so the fingerprint covers what was asked, not the lines.
    intent = {"kind": TxKind.ESCROW, "user": user.pk, "amount": amount, "job_ref": job_ref}
    with transaction.atomic():
        locked = lock_accounts([available.pk, earnings.pk, escrow.pk])
        if (found := replay(key=key, kind=TxKind.ESCROW, job_ref=job_ref, lines={}, intent=intent)) is not None:
            return found
        from_available = min(locked[available.pk].balance, amount)
        from_earnings = amount - from_available
        if from_earnings > locked[earnings.pk].balance:
            spendable = locked[available.pk].balance + locked[earnings.pk].balance
            raise InsufficientFunds(f"job {job_ref} needs {amount} base units in escrow; you have {spendable}")
        lines = {available.pk: -from_available, earnings.pk: -from_earnings, escrow.pk: amount}
        lines = {pk: value for pk, value in lines.items() if value}
        return post_lines(kind=TxKind.ESCROW, key=key, lines=lines, job_ref=job_ref, intent=intent, locked=locked)


def refund_escrow(*, user: User, job_ref: str, amount: int | None = None, key: str | None = None) -> Transaction:
    """Return a job's escrow to the buyer's available balance (the job failed, was cancelled, or its bid expired).

    `amount` None returns everything the job still holds; an amount returns that much, at most what it holds.
    Nothing held, or too much asked: Conflict, nothing changes. Idempotent per job with the default key
    `refund:<job_ref>`; pass distinct keys for several partial refunds of one job.
    """
    user = user_arg("user", user)
    amount = None if amount is None else amount_arg("amount", amount)
    job_ref = text_arg("job_ref", job_ref, max_length=64)
    key = key or f"refund:{job_ref}"
    escrow, available = accounts_for((user, Kind.USER_ESCROW), (user, Kind.USER_AVAILABLE))
    intent = {"kind": TxKind.REFUND, "user": user.pk, "amount": amount, "job_ref": job_ref}
    with transaction.atomic():
        locked = lock_accounts([escrow.pk, available.pk])
        if (found := replay(key=key, kind=TxKind.REFUND, job_ref=job_ref, lines={}, intent=intent)) is not None:
            return found
        held = selectors.escrow_held(user=user, job_ref=job_ref)
        refund = held if amount is None else amount
        if held == 0 or refund > held:
            raise Conflict(f"cannot refund {refund} base units: job {job_ref} holds {held} in escrow")
        lines = {escrow.pk: -refund, available.pk: refund}
        return post_lines(kind=TxKind.REFUND, key=key, lines=lines, job_ref=job_ref, intent=intent, locked=locked)


def settle_job(
    *,
    job_ref: str,
    buyer: User,
    payouts: Sequence[tuple[User, int]],
    fee: int,
    key: str | None = None,
    platform_payouts: Sequence[tuple[User, int]] = (),
) -> Transaction:
    """Settle a completed job in one transaction: from the escrow it holds, pay each provider its amount into its
    pending earnings (`payouts`; a provider may appear more than once), the fee to the platform, and return the
    rest to the buyer's available balance. The market computes the amounts; the ledger only moves them.

    `platform_payouts`: work on the job that the platform pays for, not the buyer (a replay its own failure made
    necessary), posted beside the settlement as its own transaction (`platform_pays`).

    Payouts plus fee above what the job holds: Conflict and nothing changes. Each provider's earnings stay pending
    until the challenge window closes (a PendingRelease row). Settling twice is settling once (`settle:<job_ref>`);
    the same key with other amounts is a Conflict.
    """
    job_ref = text_arg("job_ref", job_ref, max_length=64)
    buyer = user_arg("buyer", buyer)
    fee = amount_arg("fee", fee, allow_zero=True)
    earned = _net_payouts(payouts)
    extra = _net_payouts(platform_payouts)
    key = key or f"settle:{job_ref}"
    payees = list(dict.fromkeys([*earned, *extra]))
    escrow, available, fees, *providers = accounts_for(
        (buyer, Kind.USER_ESCROW),
        (buyer, Kind.USER_AVAILABLE),
        (None, Kind.PLATFORM_FEES),
        *((user, Kind.PROVIDER_PENDING) for user in payees),
    )
    pending = {user.pk: account.pk for user, account in zip(payees, providers, strict=True)}
    # The refund depends on what the job holds, so the fingerprint covers what was asked, not the lines.
    intent = {"kind": TxKind.SETTLEMENT, "buyer": buyer.pk, "job_ref": job_ref, "fee": fee}
    intent["payouts"] = sorted((user.pk, amount) for user, amount in earned.items())
    with transaction.atomic():
        # The fee account is left out: post_lines credits it last, so it is locked only around the commit. Every
        # payee's row is locked here, first, so the platform's payment below takes only platform rows after it.
        locked = lock_accounts([escrow.pk, available.pk, *pending.values()])
        if (found := replay(key=key, kind=TxKind.SETTLEMENT, job_ref=job_ref, lines={}, intent=intent)) is not None:
            return found
        held = selectors.escrow_held(user=buyer, job_ref=job_ref)
        paid = sum(earned.values()) + fee
        if held == 0 or paid > held:
            raise Conflict(
                f"settlement of job {job_ref} pays {paid} base units (fee {fee} included) but the job holds {held}"
            )
        credits = [(pending[user.pk], amount) for user, amount in earned.items()]
        credits += [(fees.pk, fee), (available.pk, held - paid)]
        lines = {escrow.pk: -held, **{pk: amount for pk, amount in credits if amount}}
        tx = post_lines(kind=TxKind.SETTLEMENT, key=key, lines=lines, job_ref=job_ref, intent=intent, locked=locked)
        if extra:  # after the settlement, whose fee it may then use
            platform_pays(job_ref=job_ref, payouts=extra, pending=pending, locked=locked)
        release_after = timezone.now() + challenge_window()
        PendingRelease.objects.bulk_create(
            PendingRelease(settlement=tx, provider=user, job_ref=job_ref, amount=amount, release_after=release_after)
            for user, amount in earned.items()
        )
    return tx


def platform_pays(
    *, job_ref: str, payouts: dict[User, int], pending: dict[int, int], locked: dict[int, Account]
) -> Transaction:
    """Pay providers for work on a job that the platform's own failure made necessary: from the fees it has
    collected, and what they cannot cover issued new (as the honest pay of a fraud refund is). Into their pending
    earnings, released after the challenge window like any pay. Once per job (`platform-pays:<job_ref>`). The caller
    holds the payees' pending rows (`locked`, `pending`: user pk -> account pk); the platform's rows are locked here,
    after them, in the global order."""
    key = f"platform-pays:{job_ref}"
    intent = {
        "kind": TxKind.PLATFORM_PAY,
        "job_ref": job_ref,
        "payouts": sorted((user.pk, amount) for user, amount in payouts.items()),
    }
    fees, issuer = accounts_for((None, Kind.PLATFORM_FEES), (None, Kind.MINT))
    platform = lock_accounts([fees.pk, issuer.pk])
    if (found := replay(key=key, kind=TxKind.PLATFORM_PAY, job_ref=job_ref, lines={}, intent=intent)) is not None:
        return found
    total = sum(payouts.values())
    from_fees = min(total, platform[fees.pk].balance)
    lines = {fees.pk: -from_fees, issuer.pk: -(total - from_fees)}
    lines = {pk: amount for pk, amount in lines.items() if amount}
    lines |= {pending[user.pk]: amount for user, amount in payouts.items()}
    memo = f"job {job_ref}: work the platform pays for ({total - from_fees} issued)"
    tx = post_lines(
        kind=TxKind.PLATFORM_PAY,
        key=key,
        lines=lines,
        memo=memo,
        job_ref=job_ref,
        intent=intent,
        locked={**locked, **platform},
    )
    if total > from_fees:
        issue_backing(mint_tx=tx, amount=total - from_fees)
    release_after = timezone.now() + challenge_window()
    PendingRelease.objects.bulk_create(
        PendingRelease(settlement=tx, provider=user, job_ref=job_ref, amount=amount, release_after=release_after)
        for user, amount in payouts.items()
    )
    return tx


def _net_payouts(payouts: Sequence[tuple[User, int]]) -> dict[User, int]:
    """{provider: total amount} from (provider, amount) pairs; providers paid nothing are left out."""
    if isinstance(payouts, str | bytes) or not isinstance(payouts, Sequence):
        raise InvalidInput("payouts must be a list of (provider, amount) pairs")
    earned: dict[User, int] = {}
    for pair in payouts:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise InvalidInput("each payout must be a (provider, amount) pair")
        provider = user_arg("provider", pair[0])
        earned[provider] = earned.get(provider, 0) + amount_arg("payout", pair[1], allow_zero=True)
    return {provider: amount for provider, amount in earned.items() if amount}
