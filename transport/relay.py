"""Relaying step inputs between provider consumers of the same server process without the channel layer.

A hop's output goes on to the next hop's consumer as a `provider.step` event. When that consumer lives in this
process (on this event loop), the event is put straight into its inbox: with the Redis layer that saves a round
trip through Redis on every hop of every token, and with either layer the copy and the scheduling of a layer
receive. A consumer in another process, or a sender on another loop (a Celery worker's runner), goes through the
channel layer as before. Events for one consumer keep their order either way: everything a consumer handles,
its socket's messages included, comes out of one queue (`transport.inbox.InboxConsumerMixin`).

Everything a runner sends a provider's consumer, and everything a consumer sends a runner, goes through `deliver`:
whether a channel is here never changes while it exists, so a session's control messages (open, route, close)
and its steps take the same way and never overtake each other. An inbox holds at most the channel layer's
capacity of relayed events, like a channel of the layer.

A consumer that is idle (nothing handled, nothing queued) may take a relayed event at once instead: a provider
consumer then writes the step input to its socket in the same callback that received the previous hop's output
(`transport/daphne_fast.py`), with no turn of the event loop in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from transport.inbox import PUMP_FAILED, pump
from transport.messages import Message

Delivered = Literal["now", "queued", "layer"]


@dataclasses.dataclass
class _Inbox:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any]]
    capacity: int  # the channel layer's: a full inbox refuses events as a full channel does (ChannelFull)
    take_now: Callable[[dict[str, Any]], bool] | None = None  # handles an event at once, or refuses it (False)


_INBOXES: dict[str, _Inbox] = {}


def is_here(channel: str) -> bool:
    """The channel's consumer (or runner) reads its inbox on this event loop."""
    local = _INBOXES.get(channel)
    return local is not None and local.loop is asyncio.get_running_loop()


def has_room(channel: str) -> bool:
    """The inbox of a channel that `is_here` holds fewer events than the channel layer's capacity."""
    local = _INBOXES[channel]
    return local.queue.qsize() < local.capacity


def deliver_here(channel: str, event: dict[str, Any]) -> Delivered:
    """Hand `event` to a channel that `is_here`: handled at once when its consumer takes it ("now": a step input
    is then on the provider's socket already), else into its inbox ("queued"). ChannelFull when the inbox holds
    the layer's capacity already, as the layer would raise."""
    local = _INBOXES[channel]
    if local.take_now is not None and local.take_now(event):
        return "now"
    if local.queue.qsize() >= local.capacity:
        raise ChannelFull(channel)
    local.queue.put_nowait(event)
    return "queued"


async def deliver(layer: BaseChannelLayer, channel: str, message: Message) -> Delivered:
    """Send `message` to `channel`: to its consumer directly when that is here, else through the layer."""
    event = message.event()
    if is_here(channel):
        return deliver_here(channel, event)
    await layer.send(channel, event)
    return "layer"


class RelayMixin:
    """A consumer (an InboxConsumerMixin) whose inbox other consumers of this process may put events into."""

    channel_name: str
    channel_layer: BaseChannelLayer
    inbox: asyncio.Queue[dict[str, Any]]

    def relay_register(self) -> None:
        """Called once the consumer has its channel name (in connect)."""
        capacity = _capacity(self.channel_layer)
        _INBOXES[self.channel_name] = _Inbox(asyncio.get_running_loop(), self.inbox, capacity, self.take_event_now)

    def take_event_now(self, event: dict[str, Any]) -> bool:
        """Handle a relayed event at once instead of queueing it (False: queue it)."""
        return False

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
        _INBOXES[self.channel] = _Inbox(asyncio.get_running_loop(), self.queue, _capacity(self.layer))
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


def _capacity(layer: BaseChannelLayer) -> int:
    """How many messages the layer holds per channel before it raises ChannelFull (Channels' default, 100)."""
    return int(getattr(layer, "capacity", 100))
