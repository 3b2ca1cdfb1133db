"""Where a placed job's runner starts (settings.JOB_RUNNERS; `market.tasks.job_launch` picks the way).

Embedded profile: on the ASGI server's own loop, remembered on its first request. Full profile: in the server
process that holds the connection of the job's first provider, which a `runner.launch` message reaches through the
channel layer; there the provider consumer starts it on its loop (`launch_here`).
"""

from __future__ import annotations

import asyncio
import functools
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from market import selectors
from market.orchestrator import run_job

log = logging.getLogger(__name__)
_SERVER_LOOP: asyncio.AbstractEventLoop | None = None
_RUNNING: set[asyncio.Task[None]] = set()  # strong references, so running jobs are not garbage-collected


def remember_server_loop() -> None:
    """Called from the consumers: the ASGI server's event loop, where embedded-profile runners live."""
    global _SERVER_LOOP
    _SERVER_LOOP = asyncio.get_running_loop()


def launch_in_server(job_id: int, *, resume_epoch: int | None = None) -> None:
    """Start a runner on the server's loop from any thread (a sync view, an on_commit hook)."""
    loop = _SERVER_LOOP
    if loop is None or loop.is_closed():
        raise RuntimeError(
            "the embedded profile runs jobs inside the ASGI server, and no server loop is known in this process; "
            "submit jobs through the server (or set ORCHESTRATOR=celery with a worker)"
        )
    loop.call_soon_threadsafe(functools.partial(launch_here, job_id, resume_epoch=resume_epoch))


def launch_here(job_id: int, *, resume_epoch: int | None = None) -> None:
    """Start a runner on the running loop (a provider consumer received `runner.launch`, or the clock took a job
    over from a lost runner)."""
    task = asyncio.get_running_loop().create_task(run_job(job_id, resume_epoch=resume_epoch))
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)


def launch_next_to_first_hop(job_id: int) -> None:
    """Full profile: ask the server process that holds the connection of the job's first provider to run the job
    (`runner.launch` to that connection's consumer), so the hops relayed there stay in the process. Should that
    connection be gone, the message expires unread and the round's reclaim puts the job back into the book."""
    channel = selectors.first_hop_channel(job_id)
    if channel is None:
        log.warning("job %s has no first hop to launch next to; the reclaim puts it back into the book", job_id)
        return
    async_to_sync(get_channel_layer().send)(channel, {"type": "runner.launch", "job": job_id})
