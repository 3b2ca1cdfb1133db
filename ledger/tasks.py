"""Celery tasks of the ledger: thin wrappers that call one service and are safe to run twice."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError
from django.utils import timezone

from config.celery import app
from ledger import services
from ledger.services import anchoring
from ledger.services import chain as chain_services


@app.task(  # type: ignore[untyped-decorator]  # celery ships no type hints
    name="ledger.release_due_earnings",
    # A dropped connection or a lock timeout: try again later. Each row is claimed once, so a retry (or a second
    # worker running the same schedule) releases nothing twice.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)
def release_due_earnings(limit: int = 1000) -> int:
    """Release providers' earnings whose challenge window has closed. Returns how many were released."""
    return services.release_due_earnings(now=timezone.now(), limit=limit)


@app.task(name="ledger.chain_sync", autoretry_for=(OperationalError, InterfaceError), retry_backoff=True, max_retries=3)  # type: ignore[untyped-decorator]
def chain_sync() -> dict[str, object]:
    """Send the outbox's queued transactions, credit new deposits, refresh stakes (nothing without a chain). A
    chain that is down is reported in the result, not raised: the next beat tries again."""
    return chain_services.chain_sync()


@app.task(
    name="ledger.chain_anchor", autoretry_for=(OperationalError, InterfaceError), retry_backoff=True, max_retries=3
)  # type: ignore[untyped-decorator]
def chain_anchor() -> int | None:
    """Put settlements not anchored yet into the next batch and queue its anchor; the batch id or None."""
    batch = anchoring.anchor_pending()
    return batch.batch_id if batch else None
