"""Celery tasks of verification, and where disputes advance: a beat task every VERIFY_EVERY_SECONDS on the full
profile, the embedded clock's loop otherwise (market.clock), plus a nudge when a challenge or a reveal arrives."""

from __future__ import annotations

import logging

from django.conf import settings

from config.celery import app

log = logging.getLogger(__name__)


@app.task(name="verification.advance", ignore_result=True)  # type: ignore[untyped-decorator]  # celery has no hints
def advance(dispute_id: int | None = None) -> None:
    """One turn of one dispute, or of every open one (and old transcripts dropped). Safe to run twice: a turn is
    leased."""
    from verification.services import disputes, transcripts

    if dispute_id is not None:
        disputes.dispute_advance(dispute_id=dispute_id)
        return
    disputes.disputes_advance()
    transcripts.transcripts_expire()


def advance_soon(dispute_id: int) -> None:
    """Turn a dispute now rather than at the next tick: a worker on the full profile, the clock's loop otherwise."""
    if settings.ORCHESTRATOR == "celery":
        advance.delay(dispute_id)
    else:
        from market import clock

        clock.verify_soon()
