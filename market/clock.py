"""The embedded profile's beat: on the ASGI server's loop, an auction round every AUCTION_EVERY_SECONDS (sooner
after a nudge, debounced by AUCTION_NUDGE_SECONDS) and the release of providers' earnings whose challenge window
closed. Rounds and releases are database work, so they run in a thread; runners start on the loop itself
(`market.launch.launch_in_server`)."""

from __future__ import annotations

import asyncio
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

log = logging.getLogger(__name__)
_LOOP: asyncio.AbstractEventLoop | None = None
_WAKE: asyncio.Event | None = None
_TASK: asyncio.Task[None] | None = None


def start() -> None:
    """Start the clock on the running loop, once per loop (called when the server handles its first request)."""
    global _LOOP, _WAKE, _TASK
    if not settings.MARKET_CLOCK:
        return
    loop = asyncio.get_running_loop()
    if _LOOP is loop and _TASK is not None and not _TASK.done():
        return
    _LOOP, _WAKE = loop, asyncio.Event()
    _TASK = loop.create_task(_run(_WAKE))


def nudge() -> None:
    """From any thread: clear soon. Without a running clock (no server in this process) the book simply waits
    for the server's next round."""
    loop, wake = _LOOP, _WAKE
    if loop is None or wake is None or loop.is_closed():
        log.debug("no market clock in this process; the server's next round will see the book")
        return
    loop.call_soon_threadsafe(wake.set)


async def _run(wake: asyncio.Event) -> None:
    from ledger import services as ledger_services
    from market import services

    clear = sync_to_async(services.clear_market, thread_sensitive=False)
    release = sync_to_async(ledger_services.release_due_earnings, thread_sensitive=False)
    released_at = 0.0
    while True:
        try:
            await asyncio.wait_for(wake.wait(), settings.AUCTION_EVERY_SECONDS)
            await asyncio.sleep(settings.AUCTION_NUDGE_SECONDS)  # bids arriving meanwhile join this round
        except TimeoutError:
            pass
        wake.clear()
        try:
            await clear()
            if time.monotonic() - released_at > 60:
                released_at = time.monotonic()
                await release(now=timezone.now())
        except Exception:  # the clock must outlive one bad round
            log.exception("auction round failed")
