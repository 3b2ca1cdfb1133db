"""Celery tasks of the ledger: thin wrappers that call one service and are safe to run twice."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError
from django.utils import timezone

from config.celery import app
from ledger import services


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
