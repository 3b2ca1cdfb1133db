"""Celery tasks of the market, and the one place that decides where runners and auction rounds live.

Full profile (ORCHESTRATOR=celery): beat runs `clear_market` every AUCTION_EVERY_SECONDS, a new bid schedules one
more AUCTION_NUDGE_SECONDS later (one per window: a Redis key set with NX and that expiry debounces the nudges),
and a placed job's runner starts in the server process of its first provider (or a worker: JOB_RUNNERS). Embedded
profile: the ASGI server's loop does all of it (`market.clock`).
"""

from __future__ import annotations

import asyncio
import logging

import redis
from django.conf import settings

from config.celery import app

log = logging.getLogger(__name__)
NUDGE_KEY = "market:auction-nudge"


@app.task(name="market.run_job", ignore_result=True)  # type: ignore[untyped-decorator]  # celery has no hints
def run_job(job_id: int, resume_epoch: int | None = None) -> None:
    """Drive a job to its end in this worker (safe to run twice: only one run claims the allocated job), or resume
    one taken over from a lost runner (`resume_epoch`: market/services/runners.py).

    The runner mostly waits on the channel layer, so workers run these in a thread pool
    (`celery worker -P threads`), many jobs at once."""
    from channels.layers import channel_layers

    from market.orchestrator import run_job as drive

    # Each job gets its own layer instance: a worker runs many jobs at once, each on its own event loop in its own
    # thread, and one layer instance may only receive on one loop.
    asyncio.run(drive(job_id, layer=channel_layers.make_backend("default"), resume_epoch=resume_epoch))


@app.task(name="market.clear_market", ignore_result=True)  # type: ignore[untyped-decorator]  # celery has no hints
def clear_market() -> None:
    """One auction round (skipped when another is in progress). A bid that nudges once this round has begun needs
    a round after it: the key that debounces nudges goes first, so that nudge schedules one."""
    from market import services

    if settings.ORCHESTRATOR == "celery":
        redis.Redis.from_url(settings.REDIS_URL).delete(NUDGE_KEY)
    services.clear_market()


def job_launch(job_id: int) -> None:
    """Hand a job that a round placed to a runner (settings.JOB_RUNNERS): the ASGI server's loop on the embedded
    profile; on the full profile the server process holding its first provider's connection, or a Celery worker."""
    from market import launch

    if settings.JOB_RUNNERS == "worker":
        run_job.delay(job_id)
    elif settings.ORCHESTRATOR == "server":  # this process is the server, and the in-memory layer reaches no other
        launch.launch_in_server(job_id)
    else:
        launch.launch_next_to_first_hop(job_id)


def job_resume(job_id: int, epoch: int) -> None:
    """Hand a job taken over from a lost runner to a new one: the ASGI server's loop on the embedded profile, a
    Celery worker on the full profile (the job has no placement yet to run next to; its new runner places one)."""
    from market import launch

    if settings.ORCHESTRATOR == "server":
        launch.launch_in_server(job_id, resume_epoch=epoch)
    else:
        run_job.delay(job_id, epoch)


def auction_nudge() -> None:
    """Ask for a round soon, because the book changed; nudges within AUCTION_NUDGE_SECONDS make one round."""
    delay = settings.AUCTION_NUDGE_SECONDS
    if settings.ORCHESTRATOR == "celery":
        client = redis.Redis.from_url(settings.REDIS_URL)
        if client.set(NUDGE_KEY, 1, nx=True, px=max(1, int(delay * 1000))):
            clear_market.apply_async(countdown=delay)
    else:
        from market import clock

        clock.nudge()
