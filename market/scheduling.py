"""Where the market's work runs, and the wake-ups that make it run soon: the one place that reads
settings.ORCHESTRATOR and settings.JOB_RUNNERS.

Full profile (ORCHESTRATOR=celery): Celery runs auction rounds, runners and disputes (market/tasks.py,
verification/tasks.py; named here by their task names, so that this module stays below the code they run). A new
bid schedules one round AUCTION_NUDGE_SECONDS later (one per window: a Redis key set with NX and that expiry
debounces the nudges), and a placed job's runner starts in the server process holding its first provider's
connection (a `runner.launch` event to that provider's consumer) or in a worker (JOB_RUNNERS=worker).

Embedded profile: the ASGI server's loop does all of it. `serve_here` notes that loop and how to start a runner on
it (config/asgi.py, on the server's first request); market/clock.py waits on the wake-ups it holds.

Services call down into this module; it imports neither the orchestrator, nor the clock, nor the tasks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from config.celery import app
from market import selectors
from transport.messages import RunnerLaunch

log = logging.getLogger(__name__)
NUDGE_KEY = "market:auction-nudge"

StartRunner = Callable[..., None]  # (job_id, *, resume_epoch=None): starts a runner on the running loop


@dataclasses.dataclass
class ServerLoop:
    """The ASGI server's loop on the embedded profile, and what runs there."""

    loop: asyncio.AbstractEventLoop
    start_runner: StartRunner
    auction: asyncio.Event  # set: clear the market soon
    disputes: asyncio.Event  # set: advance the open disputes now

    def wake(self, event: asyncio.Event) -> None:
        """Set one of the events from any thread (a no-op once the loop has closed)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(event.set)


_SERVER: ServerLoop | None = None


def serve_here(start_runner: StartRunner) -> ServerLoop:
    """Called on the ASGI server's loop: runners and the clock of the embedded profile live on it."""
    global _SERVER
    loop = asyncio.get_running_loop()
    if _SERVER is None or _SERVER.loop is not loop:
        _SERVER = ServerLoop(loop, start_runner, asyncio.Event(), asyncio.Event())
    return _SERVER


def server_loop() -> ServerLoop | None:
    """The server loop noted in this process, if it still runs."""
    return _SERVER if _SERVER is not None and not _SERVER.loop.is_closed() else None


def job_launch(job_id: int) -> None:
    """Hand a job that a round placed to a runner (settings.JOB_RUNNERS): the ASGI server's loop on the embedded
    profile; on the full profile the server process holding its first provider's connection, or a Celery worker."""
    if settings.JOB_RUNNERS == "worker":
        app.send_task("market.run_job", args=[job_id])
    elif settings.ORCHESTRATOR == "server":  # this process is the server, and the in-memory layer reaches no other
        _in_server(job_id)
    else:
        _next_to_first_hop(job_id)


def job_resume(job_id: int, epoch: int) -> None:
    """Hand a job taken over from a lost runner to a new one: the ASGI server's loop on the embedded profile, a
    Celery worker on the full profile (the job has no placement yet to run next to; its new runner places one)."""
    if settings.ORCHESTRATOR == "server":
        _in_server(job_id, resume_epoch=epoch)
    else:
        app.send_task("market.run_job", args=[job_id, epoch])


def auction_nudge() -> None:
    """Ask for a round soon, because the book changed; nudges within AUCTION_NUDGE_SECONDS make one round. Without
    a server loop in this process (a command, a test without a server) the book waits for the server's next round."""
    if settings.ORCHESTRATOR == "celery":
        delay = settings.AUCTION_NUDGE_SECONDS
        client = redis.Redis.from_url(settings.REDIS_URL)
        if client.set(NUDGE_KEY, 1, nx=True, px=max(1, int(delay * 1000))):
            app.send_task("market.clear_market", countdown=delay)
    elif (server := server_loop()) is not None:
        server.wake(server.auction)
    else:
        log.debug("no market clock in this process; the server's next round will see the book")


def disputes_soon(dispute_id: int) -> None:
    """Turn a dispute now rather than at the next tick (a challenge or a reveal arrived): a worker on the full
    profile, the server loop's clock otherwise."""
    if settings.ORCHESTRATOR == "celery":
        app.send_task("verification.advance", args=[dispute_id])
    elif (server := server_loop()) is not None:
        server.wake(server.disputes)


def _in_server(job_id: int, *, resume_epoch: int | None = None) -> None:
    """Start a runner on the server's loop from any thread (a sync view, an on_commit hook)."""
    server = server_loop()
    if server is None:
        raise RuntimeError(
            "the embedded profile runs jobs inside the ASGI server, and no server loop is known in this process; "
            "submit jobs through the server (or set ORCHESTRATOR=celery with a worker)"
        )
    server.loop.call_soon_threadsafe(functools.partial(server.start_runner, job_id, resume_epoch=resume_epoch))


def _next_to_first_hop(job_id: int) -> None:
    """Full profile: ask the server process that holds the connection of the job's first provider to run the job
    (`runner.launch` to that connection's consumer), so the hops relayed there stay in the process. Should that
    connection be gone, the message expires unread and the round's reclaim puts the job back into the book."""
    channel = selectors.first_hop_channel(job_id)
    if channel is None:
        log.warning("job %s has no first hop to launch next to; the reclaim puts it back into the book", job_id)
        return
    async_to_sync(get_channel_layer().send)(channel, RunnerLaunch(job=job_id).event())
