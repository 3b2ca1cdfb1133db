"""The embedded profile's beat: on the ASGI server's loop, an auction round every AUCTION_EVERY_SECONDS while bids
wait in the book (sooner after a nudge, debounced by AUCTION_NUDGE_SECONDS), every AUCTION_IDLE_SECONDS while the
book is empty after a round, and the release of providers' earnings whose challenge window closed. Rounds and
releases are database work, so they run in a thread; runners start on the loop itself (market/scheduling.py holds
the loop, how to start a runner on it, and the events that wake the clock).

An empty book has nothing to match, and everything that fills it nudges a round (a new bid, a job requeued); the
idle rounds only expire, reclaim and settle, which can wait. Rounds every two seconds in the server that relays
the providers' frames cost the relay: bench/pipeline.py's in-memory profile, run with AUCTION_IDLE_SECONDS=2 and
then 30, shows the decode ratio fall with the shorter interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from ledger import services as ledger_services
from ledger.services import anchoring
from ledger.services import chain as chain_services
from market import launch, scheduling, selectors, services
from verification import tasks as verification_tasks

log = logging.getLogger(__name__)
_LOOP: asyncio.AbstractEventLoop | None = None
_TASK: asyncio.Task[None] | None = None


def start() -> None:
    """Start the clock on the running loop, once per loop (called when the server handles its first request)."""
    global _LOOP, _TASK
    if not settings.MARKET_CLOCK:
        return
    loop = asyncio.get_running_loop()
    if _LOOP is loop and _TASK is not None and not _TASK.done():
        return
    server = scheduling.serve_here(launch.launch_here)
    _LOOP = loop
    _TASK = loop.create_task(_run(server.auction))
    loop.create_task(_orphans())
    loop.create_task(_verify(server.disputes))
    if settings.CHAIN_RPC_URL:
        loop.create_task(_chain())


async def _verify(wake: asyncio.Event) -> None:
    """Disputes: every VERIFY_EVERY_SECONDS, or at once when woken, one turn of each open one (the referee's work
    runs in a thread), and transcripts past their time dropped."""
    advance = sync_to_async(verification_tasks.advance, thread_sensitive=False)
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), settings.VERIFY_EVERY_SECONDS)
        wake.clear()
        try:
            await advance()
        except Exception:  # the clock must outlive one bad pass
            log.exception("advancing disputes failed")


async def _orphans() -> None:
    """Take over or end jobs whose runner's lease ran out (a server that died) within a third of the lease after it
    did, without waking a whole round: an idle book waits AUCTION_IDLE_SECONDS between rounds, and rounds every few
    seconds cost the relay in this process (see above). One small query on running jobs; resumed jobs' runners
    start on this loop."""
    take = sync_to_async(services.jobs_orphaned, thread_sensitive=False)
    while True:
        await asyncio.sleep(max(1.0, settings.RUNNER_LEASE_SECONDS / 3))
        try:
            for job_id, epoch in await take(now=timezone.now()):
                launch.launch_here(job_id, resume_epoch=epoch)
        except Exception:  # the clock must outlive one bad pass
            log.exception("taking over jobs whose runner was lost failed")


async def _chain() -> None:
    """The bridge's beat: every CHAIN_SYNC_SECONDS send queued operator transactions, credit deposits and refresh
    stakes; every CHAIN_ANCHOR_EVERY_SECONDS anchor a batch of settlements. In a thread: it is I/O and database work."""
    sync = sync_to_async(chain_services.chain_sync, thread_sensitive=False)
    anchor = sync_to_async(anchoring.anchor_pending, thread_sensitive=False)
    anchored_at = time.monotonic()
    while True:
        await asyncio.sleep(settings.CHAIN_SYNC_SECONDS)
        try:
            if time.monotonic() - anchored_at > settings.CHAIN_ANCHOR_EVERY_SECONDS:
                anchored_at = time.monotonic()
                await anchor()
            await sync()
        except Exception:  # the clock must outlive one bad pass (a chain that is down is reported, not raised)
            log.exception("chain sync failed")


async def _run(wake: asyncio.Event) -> None:
    clear = sync_to_async(services.clear_market, thread_sensitive=False)
    book_empty = sync_to_async(selectors.book_empty, thread_sensitive=False)
    release = sync_to_async(ledger_services.release_due_earnings, thread_sensitive=False)
    released_at = 0.0
    idle = False  # the book was empty after the last round
    while True:
        try:
            every = settings.AUCTION_IDLE_SECONDS if idle else settings.AUCTION_EVERY_SECONDS
            await asyncio.wait_for(wake.wait(), every)
            await asyncio.sleep(settings.AUCTION_NUDGE_SECONDS)  # bids arriving meanwhile join this round
        except TimeoutError:
            pass
        wake.clear()
        idle = False
        try:
            await clear()
            idle = await book_empty()  # every bid placed (or none came): nothing to match until a nudge
            if time.monotonic() - released_at > 60:
                released_at = time.monotonic()
                await release(now=timezone.now())
        except Exception:  # the clock must outlive one bad round
            log.exception("auction round failed")
