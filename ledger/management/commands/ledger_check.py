"""Verify the ledger's invariants; exit non-zero with a report of every drift found."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ledger.chain import bridge
from ledger.chain.reconcile import Reconciliation, reconcile
from ledger.models import Account, Transaction
from ledger.selectors import Drift, ledger_drift


class Command(BaseCommand):
    help = (
        "Check that the balances outside the mint sum to what was minted, that each cached balance equals the sum "
        "of its account's entries, and that every transaction is two or more entries summing to zero. "
        "Exits 1 with a report when one of them does not hold."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-chain", action="store_true", help="Check the ledger alone even when a chain is configured."
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
        chain = None if options["no_chain"] else bridge.connect()
        if chain is not None:
            self._chain(reconcile(chain))

    def _chain(self, r: Reconciliation) -> None:
        if not r.ok:
            raise CommandError("ledger and chain disagree:\n" + "\n".join(f"  {p}" for p in r.problems))
        self.stdout.write(
            self.style.SUCCESS(
                f"chain ok: the vault holds {r.vault_balance} base units = ledger {r.ledger_held} "
                f"+ withdrawals in flight {r.withdrawals_in_flight} - backing in flight {r.backing_in_flight} "
                f"+ deposits not credited {r.deposits_uncredited}; issued {r.issued_on_chain}, "
                f"paid out {r.withdrawn_on_chain}, deposited {r.deposited_on_chain}; {r.wallets_checked} stake(s) match"
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
