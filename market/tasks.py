"""Celery tasks of the market (the full profile's workers and beat; market/scheduling.py decides what runs where
and sends these by name)."""

from __future__ import annotations

import asyncio

import redis
from channels.layers import channel_layers
from django.conf import settings

from config.celery import app
from market import scheduling, services
from market.orchestrator import run_job as drive


@app.task(name="market.run_job", ignore_result=True)  # type: ignore[untyped-decorator]  # celery has no hints
def run_job(job_id: int, resume_epoch: int | None = None) -> None:
    """Drive a job to its end in this worker (safe to run twice: only one run claims the allocated job), or resume
    one taken over from a lost runner (`resume_epoch`: market/services/runners.py).

    The runner mostly waits on the channel layer, so workers run these in a thread pool
    (`celery worker -P threads`), many jobs at once."""
    # Each job gets its own layer instance: a worker runs many jobs at once, each on its own event loop in its own
    # thread, and one layer instance may only receive on one loop.
    asyncio.run(drive(job_id, layer=channel_layers.make_backend("default"), resume_epoch=resume_epoch))


@app.task(name="market.clear_market", ignore_result=True)  # type: ignore[untyped-decorator]  # celery has no hints
def clear_market() -> None:
    """One auction round (skipped when another is in progress). A bid that nudges once this round has begun needs
    a round after it: the key that debounces nudges goes first, so that nudge schedules one."""
    if settings.ORCHESTRATOR == "celery":
        redis.Redis.from_url(settings.REDIS_URL).delete(scheduling.NUDGE_KEY)
    services.clear_market()
