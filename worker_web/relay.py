"""Relaying step inputs between provider consumers of the same server process without the channel layer.

A hop's output goes on to the next hop's consumer as a `provider.step` event. When that consumer lives in this
process (on this event loop), the event is put straight into its inbox: with the Redis layer that saves a round
trip through Redis on every hop of every token, and with either layer the copy and the scheduling of a layer
receive. A consumer in another process, or a sender on another loop (a Celery worker's runner), goes through the
channel layer as before. Events for one consumer keep their order either way: everything a consumer handles,
its socket's messages included, comes out of one queue (`config.consumers.InboxConsumerMixin`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from channels.layers import BaseChannelLayer

from config.consumers import PUMP_FAILED, pump

_INBOXES: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = {}


async def deliver(layer: BaseChannelLayer, channel: str, event: dict[str, Any]) -> None:
    """Send `event` to `channel`: into its consumer's inbox when that is here, else through the layer."""
    local = _INBOXES.get(channel)
    if local is not None and local[0] is asyncio.get_running_loop():
        local[1].put_nowait(event)
        return
    await layer.send(channel, event)


class RelayMixin:
    """A consumer (an InboxConsumerMixin) whose inbox other consumers of this process may put events into."""

    channel_name: str
    inbox: asyncio.Queue[dict[str, Any]]

    def relay_register(self) -> None:
        """Called once the consumer has its channel name (in connect)."""
        _INBOXES[self.channel_name] = (asyncio.get_running_loop(), self.inbox)

    def inbox_closed(self) -> None:
        name = getattr(self, "channel_name", None)
        if name is not None:
            _INBOXES.pop(name, None)


class ChannelInbox:
    """A job runner's channel, read from one queue: the channel layer feeds it, and consumers on this loop put
    their answers straight into it (`deliver`), so a runner in the server process hears each hop without the
    layer."""

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self.channel = ""
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pump: asyncio.Future[None] | None = None

    async def open(self) -> str:
        self.channel = await self.layer.new_channel()
        _INBOXES[self.channel] = (asyncio.get_running_loop(), self.queue)
        self._pump = asyncio.ensure_future(pump(lambda: self.layer.receive(self.channel), self.queue))
        return self.channel

    async def get(self) -> dict[str, Any]:
        message = await self.queue.get()
        if message["type"] == PUMP_FAILED:
            raise message["error"]
        return message

    async def close(self) -> None:
        _INBOXES.pop(self.channel, None)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
