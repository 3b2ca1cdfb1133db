"""The money of a dispute: a challenger's bond, and what a verdict moves. Each posting happens once (its key).

- `bond_post`: the challenger's available balance -> the platform's challenge-bond account (402 when short).
- `bond_return`: the bond back to the challenger (fraud proven).
- `bond_award`: the bond to the providers of the job (no fraud), split as given.
- `fraud_refund`: the cheater's pending pay for the job back to the buyer, the platform's fee for it back to the
  buyer, and what the honest providers of the job earned (their pay stands: their work was honest) paid to the buyer
  by a mint, which the slash of the cheater's stake on chain backs. The buyer gets everything the job cost back.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import User
from django.db import transaction

from config.errors import InvalidInput
from ledger import selectors
from ledger.errors import InsufficientFunds
from ledger.models import Transaction
from ledger.services.issuance import mint_as_system
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


def bond_post(*, user: User, amount: int, job_ref: str, key: str) -> Transaction:
    """Hold a challenger's bond; not enough available: InsufficientFunds (402) and nothing moves."""
    user, amount = user_arg("user", user), amount_arg("amount", amount)
    job_ref = text_arg("job_ref", job_ref, max_length=64)
    available, bonds = accounts_for((user, Kind.USER_AVAILABLE), (None, Kind.CHALLENGE_BONDS))
    with transaction.atomic():
        locked = lock_accounts([available.pk, bonds.pk])
        lines = {available.pk: -amount, bonds.pk: amount}
        if (found := replay(key=key, kind=TxKind.CHALLENGE_BOND, job_ref=job_ref, lines=lines)) is not None:
            return found  # posted already: today's balance does not matter
        if locked[available.pk].balance < amount:
            raise InsufficientFunds(
                f"a challenge needs a bond of {amount} base units; you have {locked[available.pk].balance} available"
            )
        return post_lines(kind=TxKind.CHALLENGE_BOND, key=key, lines=lines, job_ref=job_ref, locked=locked)


def bond_return(*, user: User, amount: int, job_ref: str, key: str) -> Transaction:
    user, amount = user_arg("user", user), amount_arg("amount", amount)
    available, bonds = accounts_for((user, Kind.USER_AVAILABLE), (None, Kind.CHALLENGE_BONDS))
    with transaction.atomic():
        locked = lock_accounts([available.pk, bonds.pk])
        lines = {bonds.pk: -amount, available.pk: amount}
        if (found := replay(key=key, kind=TxKind.CHALLENGE_BOND, job_ref=job_ref, lines=lines)) is not None:
            return found
        return post_lines(kind=TxKind.CHALLENGE_BOND, key=key, lines=lines, job_ref=job_ref, locked=locked)


def bond_award(*, shares: Sequence[tuple[User, int]], job_ref: str, key: str) -> Transaction:
    """Pay a forfeited bond to the providers' available earnings, `shares` (each positive) summing to the bond."""
    if not shares:
        raise InvalidInput("a bond goes to at least one provider")
    shares = [(user_arg("provider", user), amount_arg("share", amount)) for user, amount in shares]
    accounts = accounts_for((None, Kind.CHALLENGE_BONDS), *((user, Kind.PROVIDER_AVAILABLE) for user, _ in shares))
    bonds, earners = accounts[0], accounts[1:]
    with transaction.atomic():
        locked = lock_accounts([a.pk for a in accounts])
        lines: dict[int, int] = {bonds.pk: -sum(amount for _, amount in shares)}
        for account, (_, amount) in zip(earners, shares, strict=True):
            lines[account.pk] = lines.get(account.pk, 0) + amount
        if (found := replay(key=key, kind=TxKind.CHALLENGE_BOND, job_ref=job_ref, lines=lines)) is not None:
            return found
        return post_lines(kind=TxKind.CHALLENGE_BOND, key=key, lines=lines, job_ref=job_ref, locked=locked)


def fraud_refund(
    *, job_ref: str, buyer: User, cheater: User, cheater_pay: int, fee: int, honest_pay: int, key: str
) -> None:
    """Give the buyer back what a job proven fraudulent cost it (see the module's docstring). `cheater_pay` is what
    the cheating provider's own lines earned (a user may run several providers: only the cheater's lines are
    reversed, never more than is still pending for the job). Safe to call again: each part is posted under its own
    key derived from `key`, and a part already posted is not posted again."""
    buyer, cheater = user_arg("buyer", buyer), user_arg("cheater", cheater)
    pending, available, fees = accounts_for(
        (cheater, Kind.PROVIDER_PENDING), (buyer, Kind.USER_AVAILABLE), (None, Kind.PLATFORM_FEES)
    )
    with transaction.atomic():
        locked = lock_accounts([pending.pk, available.pk, fees.pk])
        done = set(
            Transaction.objects.filter(idempotency_key__startswith=f"{key}:").values_list("idempotency_key", flat=True)
        )
        parts = {
            f"{key}:reversal": (
                pending.pk,
                min(
                    amount_arg("cheater_pay", cheater_pay, allow_zero=True),
                    selectors.pending_for_job(provider=cheater, job_ref=job_ref),
                ),
            ),
            f"{key}:fee": (fees.pk, min(fee, locked[fees.pk].balance)),
        }
        for part, (source, amount) in parts.items():
            if part not in done and amount > 0:
                lines = {source: -amount, available.pk: amount}
                post_lines(kind=TxKind.REVERSAL, key=part, lines=lines, job_ref=job_ref, locked=locked)
    if honest_pay > 0:
        mint_as_system(
            to_user=buyer, amount=honest_pay, key=f"{key}:honest", memo=f"job {job_ref}: honest providers' pay"
        )
