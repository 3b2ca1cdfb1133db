"""Relaying step inputs between provider consumers of the same server process without the channel layer.

A hop's output goes on to the next hop's consumer as a `provider.step` event. When that consumer lives in this
process (on this event loop), the event is put straight into its inbox: with the Redis layer that saves a round
trip through Redis on every hop of every token, and with either layer the copy and the scheduling of a layer
receive. A consumer in another process, or a sender on another loop (a Celery worker's runner), goes through the
channel layer as before. Events for one consumer keep their order either way: everything a consumer handles,
its socket's messages included, comes out of one queue (`RelayInboxMixin`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels.layers import BaseChannelLayer

_INBOXES: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = {}


async def deliver(layer: BaseChannelLayer, channel: str, event: dict[str, Any]) -> None:
    """Send `event` to `channel`: into its consumer's inbox when that is here, else through the layer."""
    local = _INBOXES.get(channel)
    if local is not None and local[0] is asyncio.get_running_loop():
        local[1].put_nowait(event)
        return
    await layer.send(channel, event)


class RelayInboxMixin:
    """A consumer whose messages (from its socket, from the channel layer, and relayed in this process) all arrive
    through one inbox, registered under its channel name while it runs."""

    channel_name: str

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def pump() -> None:  # the socket's messages, in order, into the same inbox
            while True:
                message = await receive()
                inbox.put_nowait(message)
                if message["type"] == "websocket.disconnect":
                    return

        self._relay_inbox = inbox
        pumping = asyncio.ensure_future(pump())
        try:
            await super().__call__(scope, inbox.get, send)  # type: ignore[misc]  # the consumer after this mixin
        finally:
            pumping.cancel()
            self.relay_unregister()

    def relay_register(self) -> None:
        """Called once the consumer has its channel name (in connect)."""
        _INBOXES[self.channel_name] = (asyncio.get_running_loop(), self._relay_inbox)

    def relay_unregister(self) -> None:
        name = getattr(self, "channel_name", None)
        if name is not None:
            _INBOXES.pop(name, None)
