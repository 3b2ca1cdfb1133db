"""Celery tasks of verification: a beat task every VERIFY_EVERY_SECONDS on the full profile (the embedded clock's
loop runs the same function: market/clock.py), plus a nudge when a challenge or a reveal arrives
(market/scheduling.py's `disputes_soon`)."""

from __future__ import annotations

from config.celery import app
from verification.services import disputes, transcripts


@app.task(name="verification.advance", ignore_result=True)  # type: ignore[untyped-decorator]  # celery has no hints
def advance(dispute_id: int | None = None) -> None:
    """One turn of one dispute, or of every open one (and old transcripts dropped). Safe to run twice: a turn is
    leased."""
    if dispute_id is not None:
        disputes.dispute_advance(dispute_id=dispute_id)
        return
    disputes.disputes_advance()
    transcripts.transcripts_expire()
