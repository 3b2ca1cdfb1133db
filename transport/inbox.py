"""What the project's WebSocket consumers share: one inbox per connection, read by a plain loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer

from transport import accelerator


class InboxConsumerMixin:
    """Run a consumer from one queue: its socket's messages, its channel layer messages and whatever this process
    puts there directly (`inbox_put`, see transport/relay.py) are handled one at a time, in arrival order.

    Channels' own loop waits on the socket and the layer with `asyncio.wait` and makes a new task for every message,
    and its dispatch runs `close_old_connections` through `sync_to_async` first, that is in the one shared sync
    thread, queued behind whatever database work that thread is doing: on the provider relay, three times per token.
    Here the ASGI server's own input queue is the inbox when the server
    hands one over (Daphne and the test communicator do: `receive` is the queue's `get`), so a socket message costs
    one wake-up; the channel layer is read by one task that feeds the same queue. The consumers touch the database
    only through `database_sync_to_async`, which closes stale connections around each call itself.

    Taking the server's queue is part of the relay's fast path (`transport/accelerator.py`): with it off, the
    consumer pumps `receive` into a queue of its own, as it does under any other server.
    """

    channel_layer_alias = "default"
    channel_name: str

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.base_send = send
        queue = getattr(receive, "__self__", None) if accelerator.enabled("server") else None
        pumps: list[asyncio.Future[None]] = []
        if not isinstance(queue, asyncio.Queue) or getattr(receive, "__name__", "") != "get":
            queue = asyncio.Queue()
            pumps.append(asyncio.ensure_future(pump(receive, queue)))
        self.inbox: asyncio.Queue[dict[str, Any]] = queue
        self._handling = False
        if not pumps:  # the server's own queue: offer it binary messages before they are queued (daphne_fast.py)
            queue.take_now = self._take_now  # type: ignore[attr-defined]
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            pumps.append(asyncio.ensure_future(pump(self.channel_receive, queue)))
        try:
            while True:
                message = await queue.get()
                if message["type"] == PUMP_FAILED:
                    raise message["error"]
                self._handling = True
                try:
                    await self.dispatch(message)
                finally:
                    self._handling = False
        except StopConsumer:
            pass
        finally:
            for task in pumps:
                task.cancel()
            for task in pumps:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.inbox_closed()

    def inbox_closed(self) -> None:
        """Called once the consumer has stopped reading its inbox."""

    def idle(self) -> bool:
        """Nothing is being handled and nothing waits: a message handled now keeps the order of the inbox."""
        return not self._handling and self.inbox.empty()

    def receive_now(self, data: bytes) -> bool:
        """Handle a binary socket message at once, in the server's read callback, or refuse it (False) to have it
        queued as usual. Called only while idle; synchronous, so nothing else runs meanwhile."""
        return False

    def send_now(self, data: bytes) -> bool:
        """Send a binary message on this connection at once from synchronous code; False where the server cannot
        (not Daphne, or the connection is not open): then send it the usual way."""
        sender = getattr(self.inbox, "send_now", None)
        return sender is not None and bool(sender(data))

    def _take_now(self, data: bytes) -> bool:
        return self.idle() and self.receive_now(data)

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


PUMP_FAILED = "inbox.pump_failed"


async def pump(receive: Any, queue: asyncio.Queue[dict[str, Any]]) -> None:
    """Feed the inbox from `receive`; an error there ends the consumer, as it would in Channels' own loop."""
    try:
        while True:
            queue.put_nowait(await receive())
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        queue.put_nowait({"type": PUMP_FAILED, "error": exc})
