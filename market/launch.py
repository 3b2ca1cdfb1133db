"""Starting a job's runner on the running loop: the embedded profile's server loop (market/scheduling.py hands it
this function), the full profile's server process whose provider consumer received `runner.launch`, or the clock
taking a job over from a lost runner."""

from __future__ import annotations

import asyncio

from market.orchestrator import run_job

_RUNNING: set[asyncio.Task[None]] = set()  # strong references, so running jobs are not garbage-collected


def launch_here(job_id: int, *, resume_epoch: int | None = None) -> None:
    """Start a runner on the running loop."""
    task = asyncio.get_running_loop().create_task(run_job(job_id, resume_epoch=resume_epoch))
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
