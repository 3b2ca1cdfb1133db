"""manage.py verify_anchors: recompute every anchored settlement batch from the ledger and compare with the chain."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ledger.chain import bridge
from ledger.chain.models import ChainOp, SettlementBatch
from ledger.chain.reconcile import anchor_problems


class Command(BaseCommand):
    help = (
        "Recompute each settlement batch's leaves and Merkle root from the ledger's settlement transactions and "
        "compare them with the recorded batch and with the root, count and total anchored on chain. Exits 1 on any "
        "difference."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        chain = bridge.connect()
        checked, problems = anchor_problems(chain)
        if problems:
            raise CommandError("anchors disagree:\n" + "\n".join(f"  {p}" for p in problems))
        pending = SettlementBatch.objects.exclude(op__state=ChainOp.State.MINED).count()
        where = "the chain" if chain is not None else "the records (no chain configured)"
        self.stdout.write(
            self.style.SUCCESS(
                f"anchors ok: {checked} batch(es) recomputed from the ledger match {where}; {pending} not mined yet"
            )
        )
