"""What the project's WebSocket consumers share."""

from __future__ import annotations

from typing import Any

from channels.consumer import get_handler_name


class DirectDispatchMixin:
    """Dispatch each message straight to its handler.

    Channels' own dispatch first runs `close_old_connections` through `sync_to_async`, that is in the one shared
    sync thread, for every message a consumer receives. On the provider relay that is two thread round trips per
    hop, queued behind whatever database work that thread is doing (a job's token stores), measured at about half
    a millisecond per hop. The consumers that use this mixin touch the database only through
    `database_sync_to_async`, which closes stale connections around each call itself, so nothing is lost.
    """

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)
