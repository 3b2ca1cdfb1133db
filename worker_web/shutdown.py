"""A server that stops takes its providers offline as it stops.

Daphne cancels its applications when it shuts down, so the consumers' `disconnect` never runs and the providers
connected to this process would look online for three more heartbeats (and could be placed: a job then waits out
its deadlines). The consumers register their providers here; a Twisted 'before shutdown' trigger (Daphne runs on
Twisted) marks them offline in a thread, and shutdown waits for it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.db import close_old_connections

from market.services import provider_disconnect

log = logging.getLogger(__name__)
_live: dict[str, int] = {}  # channel name -> provider id, for the providers connected to this process
_installed = False


def track(*, channel_name: str, provider_id: int) -> None:
    _live[channel_name] = provider_id
    _install()


def untrack(*, channel_name: str) -> None:
    _live.pop(channel_name, None)


def _install() -> None:
    global _installed
    # Only under a server that runs Twisted (Daphne installed its reactor): importing the reactor elsewhere would
    # install one, and tests that talk to the application in-process have none to stop.
    if _installed or "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    reactor.addSystemEventTrigger("before", "shutdown", _on_shutdown)  # type: ignore[arg-type]  # the interface stub disagrees with the runtime signature
    _installed = True


def _on_shutdown() -> Any:
    from twisted.internet.threads import deferToThread

    live = dict(_live)
    if not live:
        return None
    return deferToThread(mark_offline, live)  # the reactor waits for the returned Deferred before it stops


def mark_offline(live: dict[str, int]) -> None:
    try:
        for channel_name, provider_id in live.items():
            provider_disconnect(provider_id=provider_id, channel_name=channel_name)
        log.info("server stopping: %d provider(s) marked offline", len(live))
    finally:
        close_old_connections()
