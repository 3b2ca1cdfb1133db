"""Verify the ledger's invariants; exit non-zero with a report of every drift found."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ledger.models import Account, Transaction
from ledger.selectors import Drift, ledger_drift


class Command(BaseCommand):
    help = (
        "Check that the balances outside the mint sum to what was minted, that each cached balance equals the sum "
        "of its account's entries, and that every transaction is two or more entries summing to zero. "
        "Exits 1 with a report when one of them does not hold."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        drift = ledger_drift()
        if not drift.ok:
            raise CommandError(report(drift))
        self.stdout.write(
            self.style.SUCCESS(
                f"ledger ok: {Account.objects.count()} accounts, {Transaction.objects.count()} transactions; "
                f"balances sum to {drift.held} base units = minted {drift.minted}"
            )
        )


def report(drift: Drift) -> str:
    """A readable account of what is wrong, one problem a line."""
    lines = [
        f"ledger drift: balances sum to {drift.held} base units but {drift.minted} were minted "
        f"(drift {drift.drift:+d}); {len(drift.mismatches)} account(s) disagree with their entries, "
        f"{len(drift.unbalanced)} transaction(s) unbalanced"
    ]
    lines += [
        f"  account {m.account_id} ({m.label}): cached balance {m.cached}, entries sum to {m.from_entries} "
        f"(off by {m.cached - m.from_entries:+d})"
        for m in drift.mismatches
    ]
    lines += [f"  transaction {pk}: entries do not sum to zero, or fewer than two" for pk in drift.unbalanced]
    return "\n".join(lines)
