"""Celery tasks of the market, and the one place that decides where a job's runner lives."""

from __future__ import annotations

import asyncio

from django.conf import settings

from config.celery import app


@app.task(name="market.run_job", ignore_result=True)  # type: ignore[untyped-decorator]  # celery has no hints
def run_job(job_id: int) -> None:
    """Drive a job to its end in this worker (safe to run twice: only one run claims the queued job).

    The runner mostly waits on the channel layer, so workers run these in a thread pool
    (`celery worker -P threads`), many jobs at once."""
    from channels.layers import channel_layers

    from market.orchestrator import run_job as drive

    # Each job gets its own layer instance: a worker runs many jobs at once, each on its own event loop in its own
    # thread, and one layer instance may only receive on one loop.
    asyncio.run(drive(job_id, layer=channel_layers.make_backend("default")))


def job_launch(job_id: int) -> None:
    """Hand a committed, queued job to a runner: a Celery worker (full profile) or the ASGI server's loop."""
    if settings.ORCHESTRATOR == "celery":
        run_job.delay(job_id)
    else:
        from market.orchestrator import launch_in_server

        launch_in_server(job_id)
