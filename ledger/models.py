"""Ledger models: accounts with cached balances, append-only double-entry transactions, pending earnings.

All amounts are integers in base units. The invariant the whole app keeps: every transaction's entries sum to
zero, so the sum of all account balances is zero, and since the mint account holds minus everything issued,
the sum of all other balances equals what was minted. Balances change only in `ledger.services.post`.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.conf import settings
from django.db import models
from django.db.models import Q


class Account(models.Model):
    """One balance of one owner (a user) or of the platform (owner null), in base units.

    `balance` is a cache of the sum of the account's entries, changed only by a posting that holds the row lock
    (select_for_update, rows locked in pk order). It never goes below zero, except for the mint account, whose
    balance is minus everything ever minted.
    """

    class Kind(models.TextChoices):
        USER_AVAILABLE = "user_available", "user: available to spend"
        USER_ESCROW = "user_escrow", "user: held in escrow for jobs"
        PROVIDER_PENDING = "provider_pending", "provider: earnings inside the challenge window"
        PROVIDER_AVAILABLE = "provider_available", "provider: released earnings"
        STAKE = "stake", "provider: stake"
        PLATFORM_FEES = "platform_fees", "platform: fees collected"
        CHALLENGE_BONDS = "challenge_bonds", "platform: challenge bonds held"
        MINT = "mint", "platform: the issuer (minus everything minted)"
        BRIDGE = "bridge", "platform: the chain bridge (minus deposits credited, plus withdrawals debited)"

    # Kinds that belong to the platform (owner null), one account each.
    PLATFORM_KINDS = frozenset({Kind.PLATFORM_FEES, Kind.CHALLENGE_BONDS, Kind.MINT, Kind.BRIDGE})
    # Kinds whose balance may be negative: the issuer, and the bridge, through which tokens enter and leave.
    SIGNED_KINDS = frozenset({Kind.MINT, Kind.BRIDGE})

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,  # money history outlives nobody: a user with accounts cannot be deleted
        related_name="ledger_accounts",
    )
    kind = models.CharField(max_length=32, choices=Kind.choices)
    balance = models.BigIntegerField(default=0, help_text="Cached sum of this account's entries, in base units.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]
        constraints = [
            # NULL owners are distinct in a plain unique constraint, hence two partial ones.
            models.UniqueConstraint(
                fields=["owner", "kind"], condition=Q(owner__isnull=False), name="ledger_account_owner_kind_uniq"
            ),
            models.UniqueConstraint(
                fields=["kind"], condition=Q(owner__isnull=True), name="ledger_account_platform_kind_uniq"
            ),
            models.CheckConstraint(
                condition=Q(owner__isnull=True, kind__in=["platform_fees", "challenge_bonds", "mint", "bridge"])
                | Q(
                    owner__isnull=False,
                    kind__in=["user_available", "user_escrow", "provider_pending", "provider_available", "stake"],
                ),
                name="ledger_account_owner_matches_kind",
            ),
            # A backstop for the service's own check: only the issuer (never positive) and the bridge may be negative.
            models.CheckConstraint(
                condition=Q(kind="mint", balance__lte=0)
                | Q(kind="bridge")
                | (~Q(kind__in=["mint", "bridge"]) & Q(balance__gte=0)),
                name="ledger_account_balance_sign",
            ),
        ]

    def __str__(self) -> str:
        who = self.owner_id if self.owner_id is not None else "platform"
        return f"{self.kind}:{who}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The cached balance changes only inside a posting (bulk_update under the row lock). Saving a whole
        # existing row from a possibly stale object would overwrite it, so that is refused.
        update_fields = kwargs.get("update_fields")
        if not self._state.adding and (update_fields is None or "balance" in update_fields):
            raise TypeError("Account.balance changes only through ledger.services.post")
        super().save(*args, **kwargs)


class AppendOnlyQuerySet(models.QuerySet[Any]):
    """Ledger rows are written once: bulk update and delete are refused (an integrity rule, not business logic)."""

    def update(self, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{self.model.__name__} rows are append-only and cannot be updated")

    def delete(self) -> NoReturn:
        raise TypeError(f"{self.model.__name__} rows are append-only and cannot be deleted")


class AppendOnlyModel(models.Model):
    """Refuses to save an existing row again or to delete one."""

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise TypeError(f"{type(self).__name__} rows are append-only and cannot be edited")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{type(self).__name__} rows are append-only and cannot be deleted")


class Transaction(AppendOnlyModel):
    """A balanced set of entries (two or more, summing to zero), written once and never edited.

    `idempotency_key` is unique, so a retried request or task cannot post twice; `fingerprint` is the SHA-256 of
    what was asked for, so the same key with a different payload is recognised as a conflict. `job_ref` is the
    market's job id as text (no foreign key: the ledger does not depend on the market's models).
    """

    class Kind(models.TextChoices):
        MINT = "mint", "mint"
        ESCROW = "escrow", "escrow for a job"
        REFUND = "refund", "escrow refund"
        SETTLEMENT = "settlement", "job settlement"
        PLATFORM_PAY = "platform_pay", "work the platform pays for (its own failure made it necessary)"
        RELEASE = "release", "release of pending earnings"
        STAKE = "stake", "stake"
        UNSTAKE = "unstake", "unstake"
        CHALLENGE_BOND = "challenge_bond", "challenge bond"
        SLASH = "slash", "slash"
        REVERSAL = "reversal", "reversal after fraud"
        DEPOSIT = "deposit", "deposit from the chain"
        WITHDRAWAL = "withdrawal", "withdrawal to the chain"
        WITHDRAWAL_RETURN = "withdrawal_return", "a withdrawal the chain refused, returned"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    idempotency_key = models.CharField(max_length=200, unique=True)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 (hex) of the requested payload.")
    job_ref = models.CharField(max_length=64, blank=True, default="", db_index=True)
    memo = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.kind} {self.idempotency_key}"


class Entry(AppendOnlyModel):
    """One leg of a transaction: a signed amount (base units) added to one account's balance."""

    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="entries")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    amount = models.BigIntegerField(help_text="Signed, in base units; never zero.")

    class Meta:
        ordering = ["pk"]
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="ledger_entry_amount_nonzero"),
            models.UniqueConstraint(fields=["transaction", "account"], name="ledger_entry_one_leg_per_account"),
        ]
        indexes = [models.Index(fields=["account", "transaction"], name="ledger_entry_account_tx_idx")]

    def __str__(self) -> str:
        return f"{self.amount:+d} -> {self.account}"


class PendingRelease(models.Model):
    """A provider's earnings from one settlement, pending until `release_after` (the end of the challenge window).

    The periodic release claims due rows (released_at null, not on hold) one by one under row locks, moves what
    is still pending for the job from provider_pending to provider_available, and stamps `released_at`.
    `on_hold` keeps a row back past its window while a challenge of the job is open.
    """

    settlement = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="pending_releases")
    provider = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="pending_releases")
    job_ref = models.CharField(max_length=64, db_index=True)
    amount = models.BigIntegerField(help_text="Earned in the settlement, in base units.")
    release_after = models.DateTimeField()
    on_hold = models.BooleanField(default=False)
    released_at = models.DateTimeField(null=True, blank=True)
    release = models.ForeignKey(
        Transaction, null=True, blank=True, on_delete=models.PROTECT, related_name="released_pending"
    )

    class Meta:
        ordering = ["pk"]
        constraints = [
            models.UniqueConstraint(fields=["settlement", "provider"], name="ledger_pendingrelease_once"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="ledger_pendingrelease_amount_positive"),
        ]
        indexes = [
            models.Index(
                fields=["release_after"], condition=Q(released_at__isnull=True), name="ledger_pending_due_idx"
            ),
        ]

    def __str__(self) -> str:
        state = "released" if self.released_at else ("held" if self.on_hold else "pending")
        return f"{self.amount} to {self.provider_id} for {self.job_ref} ({state})"


# The chain bridge's models live beside its code; importing them here registers them with the ledger app.
from ledger.chain.models import (  # noqa: E402
    ChainCursor,
    ChainDeployment,
    ChainDeposit,
    ChainOp,
    SettlementBatch,
    SettlementLeaf,
    Wallet,
)

__all__ = [
    "Account",
    "ChainCursor",
    "ChainDeployment",
    "ChainDeposit",
    "ChainOp",
    "Entry",
    "PendingRelease",
    "SettlementBatch",
    "SettlementLeaf",
    "Transaction",
    "Wallet",
]
