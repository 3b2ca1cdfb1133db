"""Reads of the ledger: balances, what a job holds, totals, and the invariant check (drift)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth.models import User
from django.db.models import Count, F, Q, Sum, Value
from django.db.models.functions import Coalesce

from ledger.models import Account, Entry, Transaction

Kind = Account.Kind


@dataclass(frozen=True)
class Balances:
    """One user's balances, in base units."""

    available: int = 0  # spendable, from grants and refunds
    escrow: int = 0  # held for the user's open jobs
    pending: int = 0  # earned as a provider, inside the challenge window
    earnings: int = 0  # earned as a provider, released (also spendable: escrow draws on it after `available`)
    stake: int = 0

    @property
    def spendable(self) -> int:
        return self.available + self.earnings


def balances_of(*, user: User) -> Balances:
    """The user's cached balances (zero for accounts not opened yet)."""
    names = {
        Kind.USER_AVAILABLE: "available",
        Kind.USER_ESCROW: "escrow",
        Kind.PROVIDER_PENDING: "pending",
        Kind.PROVIDER_AVAILABLE: "earnings",
        Kind.STAKE: "stake",
    }
    rows = Account.objects.filter(owner=user).values_list("kind", "balance")
    return Balances(**{names[Kind(kind)]: balance for kind, balance in rows})


def platform_balance(*, kind: str) -> int:
    """Balance of a platform account (platform_fees, challenge_bonds, mint); 0 if never used."""
    return Account.objects.filter(owner__isnull=True, kind=kind).values_list("balance", flat=True).first() or 0


def total_minted() -> int:
    """Everything ever issued, in base units: minus the mint account's balance."""
    return -platform_balance(kind=Kind.MINT)


def ledger_held() -> int:
    """Every base unit the ledger holds: all balances outside the mint and the bridge (what the vault must back)."""
    held = Account.objects.exclude(kind__in=[Kind.MINT, Kind.BRIDGE]).aggregate(total=Sum("balance"))["total"]
    return int(held or 0)


def _job_sum(*, owner: User, kind: str, job_ref: str) -> int:
    entries = Entry.objects.filter(account__owner=owner, account__kind=kind, transaction__job_ref=job_ref)
    return int(entries.aggregate(total=Coalesce(Sum("amount"), Value(0)))["total"])


def escrow_held(*, user: User, job_ref: str) -> int:
    """What a job still holds in its buyer's escrow: escrowed minus refunded minus settled (entries with its ref).

    Stable only while the caller holds the lock on the buyer's escrow account (services do).
    """
    return _job_sum(owner=user, kind=Kind.USER_ESCROW, job_ref=job_ref)


def pending_for_job(*, provider: User, job_ref: str) -> int:
    """A provider's earnings from a job that are still pending (settled minus released or reversed)."""
    return _job_sum(owner=provider, kind=Kind.PROVIDER_PENDING, job_ref=job_ref)


@dataclass(frozen=True)
class AccountMismatch:
    """An account whose cached balance is not the sum of its entries."""

    account_id: int
    label: str
    cached: int
    from_entries: int


@dataclass(frozen=True)
class Drift:
    """Result of checking the ledger's invariants, in base units. `ok` when all hold."""

    held: int  # sum of every cached balance outside the mint
    minted: int  # everything issued, from the mint account's entries (not its cached balance)
    mismatches: list[AccountMismatch] = field(default_factory=list)  # cached balance != sum of entries
    unbalanced: list[int] = field(default_factory=list)  # transactions whose entries don't sum to 0, or < 2 entries

    @property
    def drift(self) -> int:
        """Sum of balances minus what was minted: 0 on a sound ledger."""
        return self.held - self.minted

    @property
    def ok(self) -> bool:
        return self.drift == 0 and not self.mismatches and not self.unbalanced


def ledger_drift() -> Drift:
    """Check the invariants: the balances outside the mint sum to what was minted, each cached balance equals the
    sum of its account's entries, and each transaction is two or more entries summing to zero."""
    held = Account.objects.exclude(kind=Kind.MINT).aggregate(total=Coalesce(Sum("balance"), Value(0)))["total"]
    mint_entries = Entry.objects.filter(account__kind=Kind.MINT, account__owner__isnull=True)
    minted = -mint_entries.aggregate(total=Coalesce(Sum("amount"), Value(0)))["total"]
    accounts = Account.objects.annotate(from_entries=Coalesce(Sum("entries__amount"), Value(0)))
    mismatches = [
        AccountMismatch(account_id=a.pk, label=str(a), cached=a.balance, from_entries=a.from_entries)
        for a in accounts.filter(~Q(balance=F("from_entries"))).order_by("pk")
    ]
    sums = Transaction.objects.annotate(total=Coalesce(Sum("entries__amount"), Value(0)), n=Count("entries"))
    unbalanced = list(sums.filter(~Q(total=0) | Q(n__lt=2)).order_by("pk").values_list("pk", flat=True))
    return Drift(held=held, minted=minted, mismatches=mismatches, unbalanced=unbalanced)
