"""Providers' earnings: pending through the challenge window, then released to their available earnings.

Lock order, as everywhere: the provider's account rows first (lock_accounts, pk order), then the PendingRelease
row. Settlement writes PendingRelease rows under the same account locks, so the two never wait on each other in
opposite orders.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from ledger import selectors
from ledger.models import PendingRelease
from ledger.services.posting import Kind, TxKind, accounts_for, lock_accounts, post_lines, text_arg


def release_due_earnings(*, now: datetime, limit: int = 1000) -> int:
    """Release every pending earning whose challenge window closed by `now` and is not on hold (the periodic task).

    Each row is claimed in its own short transaction, so a long backlog never holds many locks at once and two
    workers running this together release each row once. Returns how many rows this call released.
    """
    due = PendingRelease.objects.filter(released_at__isnull=True, on_hold=False, release_after__lte=now)
    pks = list(due.order_by("pk").values_list("pk", flat=True)[:limit])
    return sum(_release_row(pk=pk, now=now) for pk in pks)


def _release_row(*, pk: int, now: datetime) -> bool:
    row = PendingRelease.objects.filter(pk=pk).select_related("provider").first()
    if row is None:
        return False
    pending, available = accounts_for((row.provider, Kind.PROVIDER_PENDING), (row.provider, Kind.PROVIDER_AVAILABLE))
    with transaction.atomic():
        locked = lock_accounts([pending.pk, available.pk])
        # The claim: only a row still unreleased, not on hold and due. Another worker that got here first has
        # stamped it, and this one finds nothing (the account locks above make the second wait for the first).
        claimed = (
            PendingRelease.objects.select_for_update()
            .filter(pk=pk, released_at__isnull=True, on_hold=False, release_after__lte=now)
            .first()
        )
        if claimed is None:
            return False
        # Never more than the job still has pending for this provider (a reversal after fraud takes from it).
        amount = min(claimed.amount, selectors.pending_for_job(provider=row.provider, job_ref=row.job_ref))
        tx = None
        if amount > 0:
            lines = {pending.pk: -amount, available.pk: amount}
            key = f"release:{claimed.settlement_id}:{claimed.provider_id}"
            tx = post_lines(kind=TxKind.RELEASE, key=key, lines=lines, job_ref=claimed.job_ref, locked=locked)
        PendingRelease.objects.filter(pk=pk).update(released_at=now, release=tx)
    return True


def set_earnings_hold(*, job_ref: str, on_hold: bool) -> int:
    """Keep a job's unreleased earnings pending past the window (a challenge is open), or let them go again.

    Returns how many rows changed; 0 means there was nothing unreleased to hold (e.g. already released).
    """
    job_ref = text_arg("job_ref", job_ref, max_length=64)
    return PendingRelease.objects.filter(job_ref=job_ref, released_at__isnull=True).update(on_hold=on_hold)
